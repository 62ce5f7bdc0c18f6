"""The stack record, address resolution, file modes and the keeper's backoff, without a network."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from wgs.cli.keeper import Policy
from wgs.cli.output import CliError
from wgs.cli.procs import wait_gone
from wgs.cli.stackfile import (
    FAILED,
    ExitRecord,
    ServiceRecord,
    StackRecord,
    read_stack,
    secure_state_dir,
    service_address,
    stack_path,
    stack_problem,
    write_stack,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_version_1_record_is_read_with_its_owner_as_the_keeper(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    stack_path(tmp_path).write_text(
        '{"state_dir": "/s", "started_at": "t", "detached": false, "owner_pid": 12, "owner_start_ticks": 34,'
        ' "services": {"graph": {"name": "graph", "pid": 5, "start_ticks": 6, "address": "127.0.0.1:7",'
        ' "log": "/s/logs/graph.log", "log_offset": 0}}}')
    rec = read_stack(tmp_path)
    assert rec is not None and rec.version == 1
    assert rec.keeper is not None and (rec.keeper.pid, rec.keeper.start_ticks) == (12, 34)
    assert rec.services["graph"].address == "127.0.0.1:7" and rec.services["graph"].restarts == 0


def test_the_record_is_written_private_and_whole(tmp_path: Path) -> None:
    rec = StackRecord(state_dir=str(tmp_path), started_at="t", keeper=None)
    write_stack(tmp_path, rec)
    assert _mode(stack_path(tmp_path)) == 0o600 and _mode(tmp_path / "run") == 0o700
    assert read_stack(tmp_path) == rec
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["stack.json"]  # no temporary file left


def test_address_variables_apply_only_without_a_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WGS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("WGS_SUPERVISOR_ADDR", "10.0.0.1:9")
    assert service_address("supervisor") == "10.0.0.1:9"
    monkeypatch.delenv("WGS_SUPERVISOR_ADDR")
    assert service_address("supervisor") == "127.0.0.1:50153"
    # An explicit --state-dir without a record never falls back to the default address.
    with pytest.raises(CliError) as err:
        service_address("supervisor", str(tmp_path))
    assert f"no stack is recorded in {tmp_path}" in err.value.message
    assert f"`wgs up --state-dir {tmp_path}`" in err.value.message and "WGS_SUPERVISOR_ADDR" in err.value.message
    monkeypatch.setenv("WGS_SUPERVISOR_ADDR", "10.0.0.1:9")
    assert service_address("supervisor", str(tmp_path)) == "10.0.0.1:9"
    # With a record in play, the variable is ignored: the record's dead supervisor is the answer.
    dead = ServiceRecord("supervisor", 2**22 + 1, 1, "127.0.0.1:4", "/l")
    write_stack(tmp_path, StackRecord(state_dir=str(tmp_path), started_at="t", keeper=None,
                                      services={"supervisor": dead}))
    with pytest.raises(CliError) as err:
        service_address("supervisor", str(tmp_path))
    assert err.value.message.startswith(f"the stack in {tmp_path} is not running")


def test_problem_lines_name_the_dead_service_and_the_command_that_recovers(tmp_path: Path) -> None:
    me = os.getpid()  # alive, but not a `wgs serve`: a reused pid counts as dead
    services = {
        "graph": ServiceRecord("graph", me, None, "127.0.0.1:1", "/l"),
        "supervisor": ServiceRecord("supervisor", 2**22 + 1, 7, "127.0.0.1:3", "/l",
                                    last_exit=ExitRecord(at="t", pid=2**22 + 1, returncode=-9, how="killed by SIGKILL")),
    }
    rec = StackRecord(state_dir=str(tmp_path), started_at="t", keeper=None, services=services)
    assert stack_problem(rec, tmp_path, None) == (
        f"the stack in {tmp_path} is not running (its processes are gone); start it with `wgs up`")
    rec.state, rec.failure = FAILED, "dispatch failed 5 times in a row"
    line = stack_problem(rec, tmp_path, "S")
    assert line is not None and line.startswith(f"the stack in {tmp_path} stopped: dispatch failed 5 times in a row")
    assert line.endswith("then start it with `wgs up --state-dir S`")


def test_state_dir_is_created_0700_and_older_files_are_tightened(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert secure_state_dir(fresh) == []
    assert _mode(fresh) == 0o700 and _mode(fresh / "logs") == 0o700 and _mode(fresh / "run") == 0o700

    old = tmp_path / "old"
    (old / "logs").mkdir(parents=True)
    (old / "run").mkdir()
    files = [old / "logs" / "graph.log", old / "run" / "stack.json", old / "run" / "graph.addr"]
    for f in files:
        f.write_text("x")
        os.chmod(f, 0o644)
    os.chmod(old, 0o755)
    (old / "logs" / "notes.txt").write_text("not ours")
    os.chmod(old / "logs" / "notes.txt", 0o644)
    notes = secure_state_dir(old)
    assert f"{old} 0755→0700" in notes and "logs/graph.log 0644→0600" in notes and "run/stack.json 0644→0600" in notes
    assert all(_mode(f) == 0o600 for f in files) and _mode(old) == 0o700
    assert _mode(old / "logs" / "notes.txt") == 0o644  # only the stack's own files
    assert secure_state_dir(old) == []  # nothing to say the second time


def test_a_directory_that_is_not_a_state_dir_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "something-else").write_text("x")
    os.chmod(shared, 0o755)
    secure_state_dir(shared)
    assert _mode(shared) == 0o755
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    secure_state_dir(sticky)
    assert stat.S_IMODE(sticky.stat().st_mode) == 0o1777


def test_backoff_doubles_from_the_first_delay_up_to_30s() -> None:
    p = Policy(initial_backoff=1.0)
    assert [p.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_waiting_for_a_process_works_with_descriptors_above_1024() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    fds: list[int] = []
    try:
        while not fds or fds[-1] < 1030:  # what select() refuses: "filedescriptor out of range"
            fds.append(os.open("/dev/null", os.O_RDONLY))
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        assert not wait_gone(child.pid, None, 0.05)  # still running: a bounded wait says so
        assert child.stdin is not None
        child.stdin.close()
        assert wait_gone(child.pid, None, 30)
        child.wait()
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
