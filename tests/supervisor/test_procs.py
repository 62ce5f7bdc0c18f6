"""Process layer with real child processes: runmon + procs (no network)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.supervisor import procs
from wgs.common import procfs

PY = sys.executable


@pytest.fixture(params=["one-shot", "warm"])
def warm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[procs.WarmMonitor | None]:
    """Runs the test with a fresh monitor per spawn and with the supervisor's pre-started one."""
    if request.param == "one-shot":
        yield None
        return
    w = procs.WarmMonitor(tmp_path)
    w.prime()
    try:
        yield w
    finally:
        w.close()


def _spawn_argv(tmp_path: Path, argv: list[str], warm: procs.WarmMonitor | None = None, number: int = 1,
                **kw: object) -> procs.Run:
    idle = warm.idle_pid() if warm is not None else None
    run = procs.spawn(tmp_path, ".chat-1", number, argv, dict(os.environ), str(tmp_path), warm=warm,
                      **kw)  # type: ignore[arg-type]
    if warm is not None:  # the pre-started monitor ran it, not a fallback
        assert idle is not None and run.monitor_pid == idle
    return run


def _spawn(tmp_path: Path, code: str, number: int = 1, warm: procs.WarmMonitor | None = None,
           **kw: object) -> procs.Run:
    return _spawn_argv(tmp_path, [PY, "-c", textwrap.dedent(code)], warm, number, **kw)


async def _wait_exit(run: procs.Run, limit: float = 10.0) -> procs.ExitInfo:
    fut: asyncio.Future[procs.ExitInfo] = asyncio.get_running_loop().create_future()
    assert procs.watch(run, lambda r, info: fut.set_result(info))
    return await asyncio.wait_for(fut, limit)


async def test_exit_code_and_stderr_recorded(tmp_path: Path, warm: procs.WarmMonitor | None) -> None:
    run = _spawn(tmp_path, "import sys; sys.stderr.write('boom: endpoint refused\\n'); sys.exit(3)", warm=warm)
    assert run.pid > 0 and run.monitor_pid > 0 and run.pid != run.monitor_pid
    assert run.start_ticks > 0 and run.monitor_start_ticks > 0
    info = await _wait_exit(run)
    assert info.exit_code == 3 and info.signal is None
    assert "boom: endpoint refused" in procs.tail_text(run.log_path)
    st = os.stat(run.log_path)
    assert st.st_mode & 0o777 == 0o600
    assert os.stat(run.log_path.parent).st_mode & 0o777 == 0o700
    assert json.loads(run.exit_path.read_text())["pid"] == run.pid


async def test_signal_death_recorded(tmp_path: Path, warm: procs.WarmMonitor | None) -> None:
    run = _spawn(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", warm=warm)
    info = await _wait_exit(run)
    assert info.exit_code is None and info.signal == signal.SIGKILL
    assert info.signal_name == "SIGKILL"
    assert "SIGKILL" in info.describe()


def test_exit_file_written_after_parent_death(tmp_path: Path) -> None:
    """The monitor survives the death of whoever started it and still records the exit."""
    marker = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from services.supervisor import procs
        run = procs.spawn(Path({str(tmp_path)!r}), ".chat-1", 1,
            [sys.executable, "-c", "import os,time\\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.02)\\nraise SystemExit(7)"],
            dict(os.environ), {str(tmp_path)!r})
        print(run.pid, run.monitor_pid, flush=True)
        os._exit(0)  # the "supervisor" dies without reaping anything
    """)
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    _agent_pid, monitor_pid = map(int, out.stdout.split())
    exit_file = tmp_path / "chats" / ".chat-1" / "run-1.exit"
    assert not exit_file.exists()
    ticks = procfs.start_ticks(monitor_pid)
    assert ticks is not None
    marker.write_text("x")
    assert procfs.wait_exited(monitor_pid, ticks, 10), "monitor did not exit"
    info = procs.read_exit_file(exit_file)
    assert info is not None and info.exit_code == 7


async def test_log_cap_keeps_tail(tmp_path: Path, warm: procs.WarmMonitor | None) -> None:
    code = """
        import sys, time
        for i in range(4000):
            sys.stdout.write('line %06d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\n' % i)
        sys.stdout.write('LAST LINE\\n'); sys.stdout.flush()
        time.sleep(2.5)
    """
    run = _spawn(tmp_path, code, warm=warm, max_log_bytes=20000)
    info = await _wait_exit(run)
    assert info.exit_code == 0
    size = run.log_path.stat().st_size
    assert size <= 20000
    text = run.log_path.read_text()
    assert "LAST LINE" in text and "log truncated" in text and "line 000000" not in text


def test_missing_executable_is_spawn_error_without_process(tmp_path: Path) -> None:
    with pytest.raises(procs.SpawnError, match="executable not found: 'no-such-agent-xyz'") as exc:
        procs.spawn(tmp_path, ".chat-1", 1, ["no-such-agent-xyz"], dict(os.environ), str(tmp_path))
    assert exc.value.permanent
    assert (tmp_path / "chats" / ".chat-1" / "run-1.log").exists()  # the log existed before the spawn
    with pytest.raises(procs.SpawnError, match="not executable"):
        f = tmp_path / "plain.txt"
        f.write_text("x")
        procs.spawn(tmp_path, ".chat-1", 2, [str(f)], dict(os.environ), str(tmp_path))


def test_bad_cwd_is_spawn_error(tmp_path: Path) -> None:
    with pytest.raises(procs.SpawnError, match="working directory does not exist"):
        procs.spawn(tmp_path, ".chat-1", 1, [PY, "-c", "pass"], dict(os.environ), str(tmp_path / "nope"))


def test_chat_id_cannot_escape_state_dir(tmp_path: Path) -> None:
    from wgs.common.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        procs.spawn(tmp_path, "../../etc", 1, [PY, "-c", "pass"], dict(os.environ), str(tmp_path))


def test_bare_name_resolved_next_to_interpreter_first(tmp_path: Path) -> None:
    name = os.path.basename(PY)
    assert procs.resolve_executable(name, str(tmp_path), "/usr/bin:/bin") == os.path.join(
        os.path.dirname(PY), name)


async def test_exec_failure_recorded(tmp_path: Path, warm: procs.WarmMonitor | None) -> None:
    # Passes the supervisor's checks (executable file) but the kernel refuses it: bad interpreter.
    script = tmp_path / "bad.sh"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    run = _spawn_argv(tmp_path, [str(script)], warm)
    info = await _wait_exit(run)
    assert info.exit_code == 127 and info.error.startswith("exec failed:")
    assert info.exec_errno == errno.ENOENT and info.permanent  # retrying cannot help
    assert "exec failed" in procs.tail_text(run.log_path)


async def test_stop_kills_whole_group_including_grandchild(tmp_path: Path, warm: procs.WarmMonitor | None) -> None:
    code = """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a stubborn agent
        child = subprocess.Popen([sys.executable, '-c',
            'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])
        print('grandchild', child.pid, flush=True)
        time.sleep(600)
    """
    run = _spawn(tmp_path, code, warm=warm)
    fut: asyncio.Future[procs.ExitInfo] = asyncio.get_running_loop().create_future()
    assert procs.watch(run, lambda r, info: fut.set_result(info))
    line = None
    for _ in range(2000):  # the whole line: a read can catch the word before the pid is written
        line = re.search(r"^grandchild (\d+)$", procs.tail_text(run.log_path), re.M)
        if line:
            break
        await asyncio.sleep(0.01)
    assert line, procs.tail_text(run.log_path)
    grandchild = int(line.group(1))
    members = procs.group_members(run.monitor_pid)
    assert {run.monitor_pid, run.pid, grandchild} <= set(members)
    left = await procs.stop_group(run, grace=0.3)
    assert left == []
    info = await asyncio.wait_for(fut, 10)
    assert info.signal == signal.SIGKILL
    assert procs.group_members(run.monitor_pid, include_zombies=False) == []
    for pid in (run.pid, grandchild):
        assert not procs.is_alive(pid, procs.start_ticks(pid) or -1)


async def test_interrupt_reports_truthfully(tmp_path: Path, warm: procs.WarmMonitor | None) -> None:
    run = _spawn(tmp_path, "import time\nprint('ready', flush=True)\ntry:\n    time.sleep(60)\n"
                           "except KeyboardInterrupt:\n    raise SystemExit(130)", warm=warm)
    for _ in range(1000):  # the agent says when its SIGINT handler is in place
        if "ready" in procs.tail_text(run.log_path):
            break
        await asyncio.sleep(0.01)
    fut: asyncio.Future[procs.ExitInfo] = asyncio.get_running_loop().create_future()
    assert procs.watch(run, lambda r, info: fut.set_result(info))
    assert procs.interrupt(run) is True
    info = await asyncio.wait_for(fut, 10)
    assert info.exit_code == 130
    assert procs.interrupt(run) is False


def test_prune_keeps_last_five(tmp_path: Path) -> None:
    for n in range(1, 9):
        (tmp_path / f"run-{n}.log").write_text("x")
        (tmp_path / f"run-{n}.exit").write_text("{}")
    procs.prune_runs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"run-{n}.{e}" for n in range(4, 9) for e in ("log", "exit")])


def test_tail_limits(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_text("".join(f"l{i}\n" for i in range(500)))
    t = procs.tail_text(p)
    assert t.splitlines()[-1] == "l499" and len(t.splitlines()) == 80
    p.write_text("y" * 10000)
    assert len(procs.tail_text(p)) <= 4096


def _run_file(state: Path, chat: str = ".chat-1", name: str = "run-1.log", text: str = "line\n") -> Path:
    d = state / "chats" / chat
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return d / name


def test_run_files_read_the_tails_of_this_state_dirs_run_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    one = _run_file(state, text="".join(f"l{i}\n" for i in range(500)))
    two = _run_file(state, ".chat-22", "run-3.log", "boom\n")
    files = procs.RunFiles(state)
    tails = files.tails([one, two, str(two), state / "chats" / ".chat-9" / "run-1.log"])
    assert tails[0] == procs.tail_text(one) and tails[0].splitlines()[-1] == "l499"
    assert tails[1:] == ["boom", "boom", ""]  # the missing file: ""
    # The state dir named through a link (as a relative or linked WGS_STATE_DIR would): the same files.
    (tmp_path / "alias").symlink_to(state)
    assert procs.RunFiles(tmp_path / "alias").tails([tmp_path / "alias" / "chats" / ".chat-22" / "run-3.log",
                                                     two]) == ["boom", "boom"]


def test_run_files_refuse_a_symlinked_run_file_or_chat_dir_and_anything_else(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret = tmp_path / "secret"
    secret.write_text("not yours\n")
    real = _run_file(state, ".chat-1", "run-1.log", "mine\n")
    linked = state / "chats" / ".chat-1" / "run-2.log"
    linked.symlink_to(secret)
    inner = state / "chats" / ".chat-1" / "run-3.log"
    inner.symlink_to(real)  # even a link to a run file of the same state dir
    elsewhere = tmp_path / "elsewhere"
    _run_file(elsewhere, ".chat-5", "run-1.log", "other\n")
    (state / "chats" / ".chat-5").symlink_to(elsewhere / "chats" / ".chat-5")  # a linked chat directory
    fifo = state / "chats" / ".chat-1" / "run-4.log"
    os.mkfifo(fifo)  # would block a plain open() for ever
    files = procs.RunFiles(state)
    assert files.tails([real, linked, inner, state / "chats" / ".chat-5" / "run-1.log", fifo]) == [
        "mine", "", "", "", ""]
    # Paths that are not a chat's run file of this state dir are not read at all.
    assert files.tails([secret, state / "chats" / ".chat-1" / ".." / ".chat-1" / "run-1.log",
                        state / "chats" / "x" / "run-1.log", state / "chats" / ".chat-1" / "notes.txt",
                        elsewhere / "chats" / ".chat-5" / "run-1.log", "chats/.chat-1/run-1.log"]) == [""] * 6


async def test_stop_also_kills_descendant_that_left_the_group(tmp_path: Path,
                                                              warm: procs.WarmMonitor | None) -> None:
    code = """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)
        print('escaped', child.pid, flush=True)
        time.sleep(600)
    """
    run = _spawn(tmp_path, code, warm=warm)
    fut: asyncio.Future[procs.ExitInfo] = asyncio.get_running_loop().create_future()
    assert procs.watch(run, lambda r, info: fut.set_result(info))
    for _ in range(500):
        if "escaped" in procs.tail_text(run.log_path):
            break
        await asyncio.sleep(0.01)
    escaped = int(procs.tail_text(run.log_path).split()[-1])
    ticks = procs.start_ticks(escaped)
    assert ticks and escaped not in procs.group_members(run.monitor_pid)
    assert await procs.stop_group(run, grace=2.0) == []
    await asyncio.wait_for(fut, 10)
    assert not procs.is_alive(escaped, ticks)
