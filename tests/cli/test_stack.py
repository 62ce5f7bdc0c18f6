"""`wgs up/status/down` against the real services, run as the real CLI in subprocesses.

Each test uses its own state dir and binds every service to 127.0.0.1:0 (the actual addresses come
back through WGS_ADDRESS_FILE), so tests never collide on ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import REPO, base_env, token
from tests.procscan import processes_of
from wgs.cli.procs import is_alive

SERVICES = ("graph", "dispatch", "supervisor")


def cli_env(state: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = base_env(state, extra)
    for s in SERVICES:
        env[f"WGS_{s.upper()}_LISTEN"] = "127.0.0.1:0"
    env["WGS_SHUTDOWN_GRACE_SECONDS"] = "3"
    return env


def wgs(state: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgs.cli.main", *args], env=env or cli_env(state), cwd=str(REPO),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def service_processes(state: Path) -> list[str]:
    """Every live process of this state dir (services, keeper, run monitors, agents), via /proc."""
    return [str(f) for f in processes_of(state)]


def recorded(state: Path) -> dict:
    return json.loads((state / "run" / "stack.json").read_text())


def assert_all_gone(record: dict) -> None:
    for name, svc in record["services"].items():
        assert not is_alive(svc["pid"], svc["start_ticks"]), f"{name} (pid {svc['pid']}) is still running"
    keeper = record["keeper"]
    assert not is_alive(keeper["pid"], keeper["start_ticks"]), f"the keeper (pid {keeper['pid']}) is still running"


def wait_gone(pid: int, timeout: float = 60) -> None:
    """Block until `pid` exits (its pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(timeout * 1000), f"pid {pid} still runs after {timeout}s"
    finally:
        os.close(fd)


_IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x8, 0x80, 0x100


def wait_record(state: Path, done: Callable[[dict], bool], what: str, timeout: float = 90) -> dict:
    """Block until <state>/run/stack.json satisfies `done` (inotify on run/: the keeper replaces the file)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        run = state / "run"
        assert libc.inotify_add_watch(fd, str(run).encode(), _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE) >= 0
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        last: dict = {}
        while True:
            try:
                last = recorded(state)
                if done(last):
                    return last
            except (FileNotFoundError, ValueError):
                pass  # between runs of the keeper, or a record written by another helper
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"stack.json never showed {what}; last: {json.dumps(last)[:2000]}"
            if poller.poll(remaining * 1000):
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, 65536)
    finally:
        os.close(fd)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_detach_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = wgs(state, "up", "--detach", "--state-dir", str(state))
    assert up.returncode == 0, up.stderr
    record = recorded(state)
    assert set(record["services"]) == set(SERVICES)
    for name, svc in record["services"].items():
        assert is_alive(svc["pid"], svc["start_ticks"]), name
        assert svc["address"] in up.stdout
        assert Path(svc["log"]) == state / "logs" / f"{name}.log"
        assert svc["state"] == "serving" and svc["restarts"] == 0 and svc["last_exit"] is None
    keeper = record["keeper"]
    assert keeper["detached"] is True and is_alive(keeper["pid"], keeper["start_ticks"])
    assert f"pid {keeper['pid']}" in up.stdout
    # The keeper runs in its own session, with no terminal and its output in stack.log.
    assert os.getsid(keeper["pid"]) == keeper["pid"]
    assert os.readlink(f"/proc/{keeper['pid']}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{keeper['pid']}/fd/2") == str(state / "logs" / "stack.log")

    # Stack files are private: state dir 0700; logs, the record and the address files 0600.
    assert mode(state) == 0o700
    for path in [*state.glob("logs/*.log"), state / "run" / "stack.json", *state.glob("run/*.addr")]:
        assert mode(path) == 0o600, path
    assert len(list(state.glob("run/*.addr"))) == 3 and (state / "logs" / "stack.log").exists()

    status = wgs(state, "status", "--state-dir", str(state))
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("SERVING") == 3
    assert "keeper     -" in status.stdout and "running" in status.stdout and status.stderr == ""
    assert "REPLICA" in status.stdout and " live " in status.stdout  # its supervisor, as the graph knows it

    as_json = json.loads(wgs(state, "status", "--json", "--state-dir", str(state)).stdout)
    assert as_json["serving"] is True
    assert {r["service"]: r["health"] for r in as_json["services"]} == dict.fromkeys(SERVICES, "SERVING")
    assert {r["service"]: r["pid"] for r in as_json["services"]} == {n: s["pid"] for n, s in record["services"].items()}
    assert {r["service"]: r["restarts"] for r in as_json["services"]} == dict.fromkeys(SERVICES, 0)
    assert as_json["keeper"] == {"pid": keeper["pid"], "alive": True, "detached": True, "log": keeper["log"]}
    [replica] = as_json["replicas"]
    assert replica["live"] and replica["answered"] and replica["owned_chats"] == 0 and replica["free_capacity"] > 0

    # WGS_STATE_DIR is honoured as well as --state-dir; a second stack over a live one is refused.
    again = wgs(state, "up", "--detach")
    assert again.returncode != 0
    assert "already running" in again.stderr and "wgs down" in again.stderr
    assert again.stderr.count("\n") == 1
    assert recorded(state) == record  # the live stack's record is untouched

    down = wgs(state, "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines()[0].split()[:4] == ["keeper", "pid", str(keeper["pid"]), "released"]
    assert_all_gone(record)
    assert service_processes(state) == []
    assert not (state / "run" / "stack.json").exists()

    after = wgs(state, "status", "--state-dir", str(state), env=cli_env(state, {
        "WGS_GRAPH_ADDR": "127.0.0.1:1", "WGS_DISPATCH_ADDR": "127.0.0.1:1", "WGS_SUPERVISOR_ADDR": "127.0.0.1:1"}))
    assert after.returncode != 0
    assert "unreachable" in after.stdout


@contextmanager
def foreground_up(state: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """`wgs up` in the foreground, returned once it says it serves; stopped (and the stack down) afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wgs.cli.main", "up", "--state-dir", str(state)], env=env or cli_env(state),
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        proc.ready_output = read_until(proc, "press Ctrl-C", 90)  # type: ignore[attr-defined]
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        if (state / "run" / "stack.json").exists():  # a failed test must not leave the services running
            wgs(state, "down", "--state-dir", str(state))


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float, stream: str = "stdout") -> str:
    pipe = getattr(proc, stream)
    assert pipe is not None
    sel = selectors.DefaultSelector()
    sel.register(pipe, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise AssertionError(f"{marker!r} not printed; got: {seen!r}")
        if sel.select(remaining):
            chunk = os.read(pipe.fileno(), 4096)  # not readline: it would buffer ahead of select
            seen += chunk.decode(errors="replace")
    return seen


def test_foreground_up_stops_everything_on_sigint(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with foreground_up(state) as proc:
        record = recorded(state)
        assert record["keeper"]["pid"] == proc.pid and record["keeper"]["detached"] is False
        assert wgs(state, "status", "--state-dir", str(state)).returncode == 0
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "all services stopped" in out
        assert_all_gone(record)
        assert service_processes(state) == []
        assert not (state / "run" / "stack.json").exists()


def test_down_stops_a_foreground_stack(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with foreground_up(state) as proc:
        record = recorded(state)
        down = wgs(state, "down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        assert "released" in down.stdout  # the keeper let go first, so nothing was restarted
        proc.wait(30)
        assert proc.returncode == 0
        assert_all_gone(record)
        assert service_processes(state) == []


def test_a_service_dying_at_start_is_named_with_its_stderr(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = wgs(state, "up", "--detach", "--state-dir", str(state), env=cli_env(state, {"WGS_DATABASE_URL": "bogus://x"}))
    assert up.returncode != 0
    assert "graph service" in up.stderr and "exited" in up.stderr
    assert "bogus" in up.stderr  # its own stderr lines, not just "it failed"
    assert str(state / "logs" / "graph.log") in up.stderr
    assert "Traceback" not in up.stderr.split("last lines of")[0]
    assert "nothing is left running" in up.stderr
    assert service_processes(state) == []  # dispatch, started alongside, was stopped too; the keeper exited
    assert not (state / "run" / "stack.json").exists()


def test_foreground_up_restarts_a_killed_service_on_the_same_address(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with foreground_up(state) as proc:
        record = recorded(state)
        before = record["services"]["dispatch"]
        os.kill(before["pid"], signal.SIGKILL)
        out = read_until(proc, "dispatch serving again", 90)
        assert f"on {before['address']}" in out
        after = recorded(state)["services"]["dispatch"]
        assert after["pid"] != before["pid"] and after["address"] == before["address"]
        assert after["restarts"] == 1 and after["last_exit"]["how"] == "killed by SIGKILL"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert f"dispatch service (pid {before['pid']}) exited after" in err and "killed by SIGKILL" in err
        assert "restarting dispatch in 1s (restart 1)" in err
        assert "all services stopped" in rest
        assert_all_gone(record)
        assert not is_alive(after["pid"], after["start_ticks"])
        assert service_processes(state) == []


def test_down_also_stops_chat_agents(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert wgs(state, "up", "--detach", "--state-dir", str(state)).returncode == 0
    created = wgs(state, "chat", "create", "--settle", "0", "--json", "--state-dir", str(state), "--", "sleep", "300")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    agent = doc["pid"]
    monitor = doc["current_run"]["monitor_pid"]
    assert is_alive(agent, None)
    # A user whose CLI presents a client token: StopAgents is the stack owner's, and `wgs down` (which
    # can read the stack secret) presents a supervisor token for it, so the supervisor stops the agent.
    down = wgs(state, "down", "--state-dir", str(state), env=cli_env(state, {"WGS_TOKEN": token()}))
    assert down.returncode == 0, down.stderr
    assert "could not stop its agents" not in down.stderr, down.stderr
    assert f"({doc['id']} run #1)" in down.stdout
    assert not is_alive(agent, None) and not is_alive(monitor, None)
    assert service_processes(state) == []


def test_trace_shows_the_create_chat_trace_across_services(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = cli_env(state)
    env.pop("OTEL_SDK_DISABLED")  # the embedded default: spans to <state>/traces/*.jsonl
    assert wgs(state, "up", "--detach", "--state-dir", str(state), env=env).returncode == 0
    created = wgs(state, "chat", "create", "--settle", "0", "--json", "--state-dir", str(state),
                  "--", "sleep", "300", env=env)
    down = wgs(state, "down", "--state-dir", str(state), env=env)  # flushes every service's spans
    assert created.returncode == 0, created.stderr
    assert down.returncode == 0, down.stderr
    doc = json.loads(created.stdout)
    listed = wgs(state, "trace", doc["id"], "--state-dir", str(state), env=env)
    assert listed.returncode == 0, listed.stderr
    create_line = next(line for line in listed.stdout.splitlines() if doc["trace_id"] in line)
    assert "ChatService/CreateChat [supervisor]" in create_line and create_line.endswith(" ok")
    shown = wgs(state, "trace", doc["id"], "--tree", "--state-dir", str(state), env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"trace {doc['trace_id']}" in shown.stdout
    for service in ("wgs-supervisor", "wgs-graph", "wgs-dispatch"):
        assert f"[{service}]" in shown.stdout
    assert "CreateChat" in shown.stdout and "sleep" in shown.stdout
    missing = wgs(state, "trace", "424242", "--state-dir", str(state), env=env)
    assert missing.returncode == 1 and missing.stderr.startswith("wgs: no trace found for .chat-424242")
