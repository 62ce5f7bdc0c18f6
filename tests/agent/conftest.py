"""Fixtures for agent integration tests: a real graph service process, chats in it, and
`wgs-agent` run as a real process (the console script in the venv)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.harness import REPO, ServiceProcess, authed_channel, base_env, start_service, token, wait_serving
from wgs.common.auth import AGENT, SUPERVISOR
from wgs.v1 import graph_pb2, graph_pb2_grpc, runtime_pb2, runtime_service_pb2, runtime_service_pb2_grpc, task_pb2

USER = task_pb2.MESSAGE_ROLE_USER
ASSISTANT = task_pb2.MESSAGE_ROLE_ASSISTANT
SYSTEM_ERROR = task_pb2.MESSAGE_ROLE_SYSTEM_ERROR
AGENT_BIN = str(Path(sys.executable).parent / "wgs-agent")
FAKE_BIN = str(REPO / "tests" / "fakes" / "bin")


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service("graph", tmp_path_factory.mktemp("graph-state"))
    try:
        yield svc
    finally:
        svc.terminate()


@dataclass
class Chat:
    stub: graph_pb2_grpc.GraphServiceStub
    id: str
    rt: runtime_service_pb2_grpc.RuntimeServiceStub | None = None  # to record runs, as a supervisor

    def send(self, content: str, request_id: str | None = None) -> str:
        rid = request_id or f"req-{uuid.uuid4().hex[:12]}"
        self.stub.AppendMessage(graph_pb2.AppendMessageRequest(
            chat_id=self.id, role=USER, content=content, request_id=rid), timeout=10)
        return rid

    def messages(self) -> list[task_pb2.ChatMessage]:
        return list(self.stub.ListMessages(graph_pb2.ListMessagesRequest(chat_id=self.id), timeout=10).messages)

    def answers(self) -> dict[str, list[task_pb2.ChatMessage]]:
        out: dict[str, list[task_pb2.ChatMessage]] = {}
        for m in self.messages():
            if m.role in (ASSISTANT, SYSTEM_ERROR):
                out.setdefault(m.request_id, []).append(m)
        return out

    def wait_answer(self, request_id: str, timeout: float = 20.0) -> task_pb2.ChatMessage:
        """Block on WatchMessages until the ASSISTANT/SYSTEM_ERROR answer of request_id arrives."""
        call = self.stub.WatchMessages(graph_pb2.WatchMessagesRequest(chat_id=self.id), timeout=timeout)
        try:
            for resp in call:
                m = resp.message
                if m.role in (ASSISTANT, SYSTEM_ERROR) and m.request_id == request_id:
                    return m
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"no answer to {request_id} within {timeout}s: {self.messages()}") from None
            raise
        finally:
            call.cancel()
        raise AssertionError("message stream ended")

    def wait_error_without_request(self, timeout: float = 20.0) -> task_pb2.ChatMessage:
        call = self.stub.WatchMessages(graph_pb2.WatchMessagesRequest(chat_id=self.id), timeout=timeout)
        try:
            for resp in call:
                if resp.message.role == SYSTEM_ERROR:
                    return resp.message
        finally:
            call.cancel()
        raise AssertionError("message stream ended")


@pytest.fixture
def channel(graph: ServiceProcess) -> Iterator[grpc.Channel]:
    with authed_channel(graph.address, SUPERVISOR) as ch:  # the tests play the supervisor: they create chats
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> graph_pb2_grpc.GraphServiceStub:
    return graph_pb2_grpc.GraphServiceStub(channel)


def new_chat(channel: grpc.Channel, name: str = "agent-test") -> Chat:
    """A chat record in the graph, as a supervisor would create it (the tests play the supervisor)."""
    resp = runtime_service_pb2_grpc.RuntimeServiceStub(channel).CreateChatTask(
        runtime_service_pb2.CreateChatTaskRequest(name=name, supervisor_id="agent-tests", lease_seconds=600),
        timeout=10)
    return Chat(graph_pb2_grpc.GraphServiceStub(channel), resp.task.id,
                runtime_service_pb2_grpc.RuntimeServiceStub(channel))


@pytest.fixture
def chat(channel: grpc.Channel) -> Chat:
    return new_chat(channel)


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if line.startswith("wgs-agent:")]

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"agent did not exit within {timeout}s; stderr:\n{self.stderr()}") from None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class AgentRunner:
    """Starts agents as the supervisor would: each run of a chat gets the next run number and its
    own agent token (WGS_TOKEN), the previous run is recorded as exited before and the new one as
    started after the process exists (so the graph honours the token only while the run lives)."""

    def __init__(self, graph: ServiceProcess, tmp_path: Path) -> None:
        self.graph = graph
        self.tmp_path = tmp_path
        self.agents: list[Agent] = []
        self.runs: dict[str, int] = {}

    def _record(self, chat: Chat, number: int, pid: int, started: bool) -> None:
        rs = runtime_service_pb2
        assert chat.rt is not None
        owner = chat.rt.GetChatRecord(rs.GetChatRecordRequest(chat_id=chat.id), timeout=10).runtime
        run = runtime_pb2.Run(number=number, pid=pid)
        if started:
            if owner.state != runtime_pb2.RUNTIME_STATE_STARTING:
                chat.rt.TransitionChat(rs.TransitionChatRequest(
                    chat_id=chat.id, supervisor_id=owner.supervisor_id, to_state=runtime_pb2.RUNTIME_STATE_STARTING),
                    timeout=10)
            chat.rt.RecordRunStarted(rs.RecordRunStartedRequest(
                chat_id=chat.id, run=run, supervisor_id=owner.supervisor_id), timeout=10)
        else:
            run.exit_code = 0
            chat.rt.RecordRunExited(rs.RecordRunExitedRequest(supervisor_id=owner.supervisor_id, exits=[rs.RunExit(
                chat_id=chat.id, run=run, state=runtime_pb2.RUNTIME_STATE_EXITED)]), timeout=10)

    def start(self, args: list[str], chat: Chat, env: dict[str, str] | None = None,
              path_fakes: bool = True, gate: Path | None = None) -> Agent:
        """Start `wgs-agent ARGS` for the chat's next run. With `gate` (a FIFO), the process waits for
        a line on it before it execs the agent (same pid): its run is recorded, then the test chooses
        the moment the agent starts."""
        n = len(self.agents) + 1
        number = self.runs.get(chat.id, 0) + 1
        self.runs[chat.id] = number
        if number > 1:
            self._record(chat, number - 1, 0, started=False)
        full = base_env(self.tmp_path / "state", {
            "WGS_GRAPH_ADDR": self.graph.address,
            "WGS_CHAT_ID": chat.id,
            "WGS_RUN_NUMBER": str(number),
            "WGS_TOKEN": token(AGENT, chat.id, number),
            "WGS_AGENT_BACKOFF_SECONDS": "0.05",
            "WGS_AGENT_BACKOFF_CAP_SECONDS": "2",
            "WGS_AGENT_CONNECT_TIMEOUT_SECONDS": "3",
            "WGS_AGENT_READ_TIMEOUT_SECONDS": "10",
            "WGS_LOG_FORMAT": "text",
            "CLAUDE_CONFIG_DIR": str(self.tmp_path / "claude-config"),  # the fake claude keeps sessions here
        })
        path = os.environ.get("PATH", "")
        full["PATH"] = f"{FAKE_BIN}:{path}" if path_fakes else "/nonexistent-bin"
        full.update(env or {})
        stderr_path = self.tmp_path / f"agent-{n}.stderr"
        with open(stderr_path, "wb") as err:
            argv = [AGENT_BIN, *args]
            if gate is not None:
                argv = ["sh", "-c", 'read _ < "$0" && exec "$@"', str(gate), *argv]
            proc = subprocess.Popen(argv, env=full, stdout=err, stderr=err, cwd=str(self.tmp_path))
        self._record(chat, number, proc.pid, started=True)
        agent = Agent(proc, stderr_path)
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for a in self.agents:
            a.stop()


@pytest.fixture
def agents(graph: ServiceProcess, tmp_path: Path) -> Iterator[AgentRunner]:
    runner = AgentRunner(graph, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


class OwnGraph:
    """A graph service of the test's own, to stop and start again on the same port."""

    def __init__(self, state: Path) -> None:
        self.state = state
        state.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def serve(self, port: int = 0) -> str:
        addr_file = self.state / f"addr-{time.monotonic_ns()}"
        env = base_env(self.state, {"WGS_GRAPH_LISTEN": f"127.0.0.1:{port}", "WGS_ADDRESS_FILE": str(addr_file),
                                    "WGS_DATABASE_URL": f"sqlite:///{self.state / 'graph.db'}"})
        with open(self.state / "graph.stderr", "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "wgs.cli.main", "serve", "graph"], env=env,
                                         stdout=err, stderr=err)
        deadline = time.monotonic() + 30
        while not addr_file.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.state / "graph.stderr").read_text()
            time.sleep(0.02)
        self.address = addr_file.read_text().strip()
        wait_serving(self.address)
        return self.address

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
