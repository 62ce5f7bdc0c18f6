"""`wgs up/status/down` against the real services, run as the real CLI in subprocesses.

Each test uses its own state dir and binds every service to 127.0.0.1:0 (the actual addresses come
back through WGS_ADDRESS_FILE), so tests never collide on ports.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import REPO, base_env
from wgs.cli.procs import is_alive

SERVICES = ("graph", "dispatch", "supervisor")
pytestmark = pytest.mark.skipif(
    not all((REPO / "services" / s / "server.py").exists() for s in SERVICES),
    reason="needs services/{graph,dispatch,supervisor}/server.py, not all present in this tree yet",
)


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


def service_processes(state: Path) -> list[int]:
    """Pids of any `wgs serve` process started for this state dir (found through /proc)."""
    found = []
    needle = f"WGS_STATE_DIR={state}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"serve" in cmdline and b"wgs.cli.main" in cmdline and needle in environ.split(b"\0"):
            if is_alive(int(entry.name), None):
                found.append(int(entry.name))
    return found


def recorded(state: Path) -> dict:
    return json.loads((state / "run" / "stack.json").read_text())


def assert_all_gone(record: dict) -> None:
    for name, svc in record["services"].items():
        assert not is_alive(svc["pid"], svc["start_ticks"]), f"{name} (pid {svc['pid']}) is still running"


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

    status = wgs(state, "status", "--state-dir", str(state))
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("SERVING") == 3

    as_json = json.loads(wgs(state, "status", "--json", "--state-dir", str(state)).stdout)
    assert as_json["serving"] is True
    assert {r["service"]: r["health"] for r in as_json["services"]} == dict.fromkeys(SERVICES, "SERVING")
    assert {r["service"]: r["pid"] for r in as_json["services"]} == {n: s["pid"] for n, s in record["services"].items()}

    # WGS_STATE_DIR is honoured as well as --state-dir; a second stack over a live one is refused.
    again = wgs(state, "up", "--detach")
    assert again.returncode != 0
    assert "already running" in again.stderr and "wgs down" in again.stderr
    assert again.stderr.count("\n") == 1
    assert recorded(state) == record  # the live stack's record is untouched

    down = wgs(state, "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert_all_gone(record)
    assert service_processes(state) == []
    assert not (state / "run" / "stack.json").exists()

    after = wgs(state, "status", "--state-dir", str(state), env=cli_env(state, {
        "WGS_GRAPH_ADDR": "127.0.0.1:1", "WGS_DISPATCH_ADDR": "127.0.0.1:1", "WGS_SUPERVISOR_ADDR": "127.0.0.1:1"}))
    assert after.returncode != 0
    assert "unreachable" in after.stdout


@contextmanager
def foreground_up(state: Path) -> Iterator[subprocess.Popen[str]]:
    """`wgs up` in the foreground, returned once it says it serves; killed afterwards if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wgs.cli.main", "up", "--state-dir", str(state)], env=cli_env(state), cwd=str(REPO),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        _read_until(proc, "press Ctrl-C", 90)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise AssertionError(f"{marker!r} not printed; got: {seen!r}")
        if sel.select(remaining):
            chunk = os.read(proc.stdout.fileno(), 4096)  # not readline: it would buffer ahead of select
            seen += chunk.decode(errors="replace")
    return seen


def test_foreground_up_stops_everything_on_sigint(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with foreground_up(state) as proc:
        record = recorded(state)
        assert record["owner_pid"] == proc.pid
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
    assert service_processes(state) == []  # dispatch, started alongside, was stopped too
    assert not (state / "run" / "stack.json").exists()


def test_foreground_up_reports_a_service_killed_later(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with foreground_up(state) as proc:
        record = recorded(state)
        os.kill(record["services"]["dispatch"]["pid"], signal.SIGKILL)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "dispatch service" in err and "killed by SIGKILL" in err
        assert_all_gone(record)
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
    down = wgs(state, "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
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
    shown = wgs(state, "trace", doc["id"], "--state-dir", str(state), env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"trace {doc['trace_id']}" in shown.stdout
    for service in ("wgs-supervisor", "wgs-graph", "wgs-dispatch"):
        assert f"[{service}]" in shown.stdout
    assert "CreateChat" in shown.stdout and "sleep" in shown.stdout
    missing = wgs(state, "trace", "424242", "--state-dir", str(state), env=env)
    assert missing.returncode == 1 and missing.stderr.startswith("wgs: no trace found for .chat-424242")
