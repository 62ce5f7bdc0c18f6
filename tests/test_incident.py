"""The 2026-04-30 incident (.chat-32), replayed against the real services and the real native agent.

CreateChat with model qwen3-coder, executor native and an inline https endpoint of the user's own
OpenAI-compatible server. Each of the four root causes (see shared docs: incident.md) has its own
regression test: A the sweep reset the chat, B nobody started the agent, C the endpoint was
dropped, D the agent's death left nothing to debug with.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.tls import self_signed
from tests.harness import (
    REPO,
    ServiceProcess,
    authed_channel,
    base_env,
    fresh_database,
    kill_agents,
    start_service,
    test_database_urls,
)
from wgs.common.auth import CLIENT, SUPERVISOR
from wgs.v1 import chat_pb2, chat_pb2_grpc, graph_pb2, graph_pb2_grpc, plan_pb2, runtime_pb2, task_pb2

MODEL = "qwen3-coder"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")


@dataclass
class Incident:
    state: Path
    procs: list[ServiceProcess]
    llm: FakeOpenAI  # the user's own server, reached by inline URL over https
    decoy: FakeOpenAI  # the configured default endpoint, which must not be used
    chat: chat_pb2_grpc.ChatServiceStub
    graph: graph_pb2_grpc.GraphServiceStub
    sup_env: dict[str, str]

    def create(self, endpoint: str | None = None) -> chat_pb2.Chat:
        req = chat_pb2.CreateChatRequest(model=MODEL, executor="native", endpoint=endpoint or self.llm.base_url)
        return self.chat.CreateChat(req, timeout=30).chat

    def get(self, chat_id: str) -> chat_pb2.Chat:
        return self.chat.GetChat(chat_pb2.GetChatRequest(chat_id=chat_id), timeout=10).chat


@pytest.fixture(params=test_database_urls())
def incident(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Incident]:
    cert, key = self_signed(tmp_path)
    with FakeOpenAI(models=[MODEL], tls=(cert, key)) as llm, FakeOpenAI(models=[MODEL]) as decoy, \
            fresh_database(request.param, tmp_path) as db_url:
        state = tmp_path / "state"
        state.mkdir()
        (state / "config.toml").write_text(
            f'[defaults]\nmodel = "{MODEL}"\n\n[[endpoints]]\nname = "default-ep"\nurl = "{decoy.base_url}"\n'
            "default = true\n"
        )
        telemetry = {"OTEL_SDK_DISABLED": "false"}  # the embedded default: traces in <state>/traces
        procs = [start_service("graph", state, env={**telemetry, "WGS_DATABASE_URL": db_url}),
                 start_service("dispatch", state, env=telemetry)]
        sup_env = {**telemetry, "WGS_GRAPH_ADDR": procs[0].address, "WGS_DISPATCH_ADDR": procs[1].address,
                   "WGS_CA_BUNDLE": cert, "WGS_RESTART_MAX_FAILURES": "1",
                   # An agent waits for an unreachable endpoint (a model server loading); bounded here so
                   # that test D sees an agent die of it.
                   "WGS_AGENT_ENDPOINT_WAIT_SECONDS": "1"}
        procs.append(start_service("supervisor", state, env=sup_env))
        channels = [authed_channel(procs[2].address), authed_channel(procs[0].address, SUPERVISOR)]
        try:
            yield Incident(state, procs, llm, decoy, chat_pb2_grpc.ChatServiceStub(channels[0]),
                           graph_pb2_grpc.GraphServiceStub(channels[1]), sup_env)
        finally:
            for ch in channels:
                ch.close()
            for p in reversed(procs):
                p.terminate()
            kill_agents(state)  # the supervisor leaves agents for adoption


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_ready(incident: Incident, chat_id: str) -> None:
    """The agent checked the endpoint (its GET /v1/models reached the server)."""
    incident.llm.wait_path("/v1/models", timeout=20)


def test_A_the_sweep_never_resets_a_live_chat(incident: Incident) -> None:
    chat = incident.create()
    assert chat.status == task_pb2.TASK_STATUS_IN_PROGRESS
    _wait_ready(incident, chat.id)
    task = incident.graph.GetTask(graph_pb2.GetTaskRequest(id=chat.id), timeout=10).task
    assert task.assigned == ""  # the field upstream's sweep read as "orphaned"
    for _ in range(2):
        rec = incident.graph.Reconcile(graph_pb2.ReconcileRequest(dry_run=False), timeout=10)
        assert chat.id not in [a.task_id for a in rec.actions]
        kept = {k.task_id: k.reason for k in rec.kept}
        assert "lease" in kept[chat.id]
    after = incident.get(chat.id)
    assert after.status == task_pb2.TASK_STATUS_IN_PROGRESS
    assert after.runtime.state == runtime_pb2.RUNTIME_STATE_RUNNING
    assert after.runtime.current_run.pid == chat.runtime.current_run.pid and _alive(after.runtime.current_run.pid)


def test_B_the_agent_runs_when_create_chat_returns(incident: Incident) -> None:
    chat = incident.create()
    run = chat.runtime.current_run
    assert chat.runtime.state == runtime_pb2.RUNTIME_STATE_RUNNING, chat.runtime.last_error
    assert run.pid > 0 and _alive(run.pid)
    # No message was sent, yet the agent is up and talking to its endpoint.
    _wait_ready(incident, chat.id)
    msgs = incident.chat.ListChatMessages(chat_pb2.ListChatMessagesRequest(chat_id=chat.id), timeout=10).messages
    assert list(msgs) == []
    assert incident.get(chat.id).runtime.state == runtime_pb2.RUNTIME_STATE_RUNNING


def test_C_the_inline_endpoint_is_used_not_the_default(incident: Incident) -> None:
    chat = incident.create()
    plan = chat.runtime.plan
    assert plan.endpoint.url == incident.llm.base_url and plan.endpoint.source == plan_pb2.CHOICE_SOURCE_REQUEST
    argv = list(chat.runtime.current_run.argv)
    assert argv[argv.index("--endpoint") + 1] == incident.llm.base_url
    sent = incident.chat.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hello"), timeout=10)
    stream = incident.chat.WatchChatMessages(
        chat_pb2.WatchChatMessagesRequest(chat_id=chat.id, after_seq=sent.message.seq), timeout=30)
    reply = next(r.message for r in stream if r.message.request_id == sent.message.request_id)
    stream.cancel()
    assert reply.role == task_pb2.MESSAGE_ROLE_ASSISTANT and reply.content == "echo: hello"
    assert [r.path for r in incident.llm.chat_requests()] == ["/v1/chat/completions"]
    assert incident.decoy.requests == []  # the configured default endpoint was never contacted


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_D_an_agent_that_cannot_reach_its_endpoint_says_so_in_chat_show_while_it_waits(
        incident: Incident, tmp_path: Path) -> None:
    """Unbounded waiting (the default): the agent stays up, and `wgs chat show` says it is waiting and why."""
    dead_url = f"https://127.0.0.1:{_closed_port()}"
    env = {**incident.sup_env, "WGS_AGENT_ENDPOINT_WAIT_SECONDS": "0"}
    incident.procs[2].terminate()
    incident.procs[2] = start_service("supervisor", incident.state, env=env)
    stub = chat_pb2_grpc.ChatServiceStub(authed_channel(incident.procs[2].address, CLIENT))
    chat = stub.CreateChat(chat_pb2.CreateChatRequest(model=MODEL, executor="native", endpoint=dead_url),
                           timeout=30).chat
    stream = stub.WatchChat(chat_pb2.WatchChatRequest(chat_id=chat.id), timeout=60)
    for event in stream:
        if event.chat.runtime.agent.HasField("waiting"):
            break
    stream.cancel()
    cli = base_env(incident.state, {"WGS_SUPERVISOR_ADDR": incident.procs[2].address})
    shown = subprocess.run([sys.executable, "-m", "wgs.cli.main", "chat", "show", chat.id], env=cli, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "state       RUNNING" in shown.stdout
    waiting = next(line for line in shown.stdout.splitlines() if line.startswith("waiting"))
    assert "for its endpoint since" in waiting and "connection refused" in waiting
    listed = subprocess.run([sys.executable, "-m", "wgs.cli.main", "chat", "list"], env=cli, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert "waiting for its endpoint" in listed.stdout
    stub.DeleteChat(chat_pb2.DeleteChatRequest(chat_id=chat.id), timeout=30)


def test_D_a_dying_agent_explains_itself_in_one_command(incident: Incident) -> None:
    dead_url = f"https://127.0.0.1:{_closed_port()}"
    chat = incident.create(endpoint=dead_url)
    env = base_env(incident.state, {"WGS_SUPERVISOR_ADDR": incident.procs[2].address,
                                    "WGS_GRAPH_ADDR": incident.procs[0].address})
    # Wait for the agent's death to be recorded, then one command explains it.
    stream = incident.chat.WatchChat(chat_pb2.WatchChatRequest(chat_id=chat.id), timeout=60)
    for event in stream:
        if event.chat.runtime.state == runtime_pb2.RUNTIME_STATE_FAILED:
            break
    stream.cancel()
    shown = subprocess.run([sys.executable, "-m", "wgs.cli.main", "chat", "show", chat.id, "--json"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["state"] == "FAILED"
    assert doc["exit_code"] == 3
    assert "unreachable" in doc["stderr_tail"] and dead_url in doc["stderr_tail"]
    # The plan shown is the last run's: a respawn plans from the stored chat, labelled so.
    source = "request" if doc["restart_count"] == 0 else "chat"
    assert doc["plan"]["endpoint"]["url"] == dead_url and doc["plan"]["endpoint"]["source"] == source
    assert Path(doc["stderr_path"]).is_file() and (os.stat(doc["stderr_path"]).st_mode & 0o777) == 0o600
    assert len(doc["trace_id"]) == 32

    # The supervisor said where errors would go before the spawn, the pid after, the exit at the end.
    lines = [json.loads(line) for line in incident.procs[2].stderr().splitlines() if line.startswith("{")]
    mine = [ln for ln in lines if ln.get("chat_id") == chat.id]
    # The last spawn is the run shown.
    pre = max(i for i, ln in enumerate(mine) if ln["msg"].startswith("spawning agent"))
    for key, want in (("executor", "native"), ("model", MODEL), ("endpoint", dead_url),
                      ("endpoint_source", source), ("stderr_path", doc["stderr_path"])):
        assert mine[pre][key] == want, key
    assert mine[pre]["trace_id"] == doc["trace_id"] and mine[pre]["argv"][0].endswith("wgs-agent")
    assert any("pid" in ln and ln.get("pid") for ln in mine[pre + 1:])
    assert any(ln.get("exit_code") == 3 for ln in mine[pre + 1:])

    # ...and the trace ties the argv, the endpoint resolution and the stderr file together.
    traced = subprocess.run([sys.executable, "-m", "wgs.cli.main", "trace", doc["trace_id"], "--json",
                             "--state-dir", str(incident.state)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert traced.returncode == 0, traced.stderr
    flat = json.dumps(json.loads(traced.stdout))
    assert doc["stderr_path"] in flat and dead_url in flat and '"wgs.plan.endpoint.source": "request"' in flat
