"""Real graph + dispatch + supervisor processes for the supervisor's integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.harness import (
    ServiceProcess,
    authed_channel,
    fresh_database,
    kill_agents,
    start_service,
    test_database_urls,
)
from wgs.common import procfs
from wgs.common.auth import SUPERVISOR
from wgs.v1 import chat_pb2, chat_pb2_grpc, graph_pb2_grpc, runtime_pb2

# Short policy timings so crash loops finish in seconds (the numbers are env-configurable).
FAST_POLICY = {
    "WGS_RESTART_START_SECONDS": "1",
    "WGS_RESTART_INITIAL_BACKOFF_SECONDS": "0.1",
    "WGS_RESTART_MAX_BACKOFF_SECONDS": "0.8",
    "WGS_RESTART_RESET_AFTER_SECONDS": "60",
    "WGS_RESTART_MAX_FAILURES": "3",
    "WGS_RESTART_FAILURE_WINDOW_SECONDS": "60",
    "WGS_STOP_GRACE_SECONDS": "1",
}


@dataclass
class Stack:
    state_dir: Path
    graph: ServiceProcess
    dispatch: ServiceProcess
    supervisor: ServiceProcess
    sup_env: dict[str, str]
    channels: list[grpc.Channel]
    db_url: str = ""

    def chat(self) -> chat_pb2_grpc.ChatServiceStub:
        ch = authed_channel(self.supervisor.address)
        self.channels.append(ch)
        return chat_pb2_grpc.ChatServiceStub(ch)

    def graph_stub(self) -> graph_pb2_grpc.GraphServiceStub:
        ch = authed_channel(self.graph.address, SUPERVISOR)  # the runtime records too
        self.channels.append(ch)
        return graph_pb2_grpc.GraphServiceStub(ch)

    def restart_supervisor(self, kill9: bool = True) -> None:
        if kill9:
            self.supervisor.kill9()
        else:
            self.supervisor.terminate()
        self.supervisor = start_service("supervisor", self.state_dir, self.sup_env)


CONFIG = """
[[endpoints]]
name = "local"
url = "http://127.0.0.1:9/v1"
"""


@pytest.fixture(params=test_database_urls())
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The real three services; the graph on SQLite and, when configured, on PostgreSQL."""
    with fresh_database(request.param, tmp_path) as db_url:
        yield from _stack(tmp_path, db_url)


def _stack(tmp_path: Path, db_url: str, sup_env: dict[str, str] | None = None) -> Iterator[Stack]:
    state = tmp_path / "state"
    state.mkdir()
    graph = start_service("graph", state, env={"WGS_DATABASE_URL": db_url})
    dispatch = start_service("dispatch", state)
    env = {"WGS_GRAPH_ADDR": graph.address, "WGS_DISPATCH_ADDR": dispatch.address,
           "WGS_SUPERVISOR_ID": "sup-test", "WGS_LEASE_SECONDS": "30", **FAST_POLICY, **(sup_env or {})}
    sup = start_service("supervisor", state, env)
    s = Stack(state, graph, dispatch, sup, env, [], db_url)
    try:
        yield s
    finally:
        for ch in s.channels:
            ch.close()
        for p in (s.supervisor, s.dispatch, s.graph):
            p.terminate()
        kill_agents(state)  # the supervisor leaves agents for adoption; no test may leak them


def wait_chat(stub: chat_pb2_grpc.ChatServiceStub, chat_id: str, pred: Callable[[chat_pb2.Chat], bool],
              timeout: float = 20.0) -> tuple[chat_pb2.Chat, list[chat_pb2.Chat]]:
    """Follow WatchChat until pred holds; return the matching chat and every version seen."""
    seen: list[chat_pb2.Chat] = []
    stream = stub.WatchChat(chat_pb2.WatchChatRequest(chat_id=chat_id), timeout=timeout)
    try:
        for resp in stream:
            seen.append(resp.chat)
            if pred(resp.chat):
                return resp.chat, seen
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    states = [runtime_pb2.RuntimeState.Name(c.runtime.state) for c in seen]
    raise AssertionError(f"condition not reached within {timeout}s; states seen: {states}")


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait (poll on a pidfd) until `pid` has exited; a zombie awaiting its reaper counts as gone."""
    return procfs.wait_exited(pid, None, timeout)


def wait_output(path: str | Path, text: str, timeout: float = 20.0) -> None:
    """Bounded wait until the agent has written `text` to its run file (the agent's readiness signal;
    file contents have no change event here, so this re-reads every 20 ms)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if text in Path(path).read_text(errors="replace"):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not written to {path} within {timeout}s")


def start_without_health_wait(name: str, state_dir: Path, env: dict[str, str],
                              timeout: float = 30.0) -> ServiceProcess:
    """Like harness.start_service, but ready = the address file (written once SERVING).

    Needed with OTEL enabled: the OTel aio server interceptor breaks health Watch (reported to the
    lead), so harness.wait_serving cannot be used there.
    """
    import subprocess
    import sys

    from tests.harness import REPO, base_env

    run_dir = state_dir / "test-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    addr_file = run_dir / f"{name}.addr"
    addr_file.unlink(missing_ok=True)
    stderr_path = run_dir / f"{name}.stderr"
    full_env = base_env(state_dir, env)
    full_env[f"WGS_{name.upper()}_LISTEN"] = "127.0.0.1:0"
    full_env["WGS_ADDRESS_FILE"] = str(addr_file)
    with open(stderr_path, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "wgs.cli.main", "serve", name], env=full_env,
                                stdout=err, stderr=err, cwd=str(REPO))
    end = time.monotonic() + timeout
    while not addr_file.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise RuntimeError(f"{name} did not start:\n{stderr_path.read_text()}")
        time.sleep(0.02)
    return ServiceProcess(name, proc, addr_file.read_text().strip(), stderr_path, full_env)
