"""The graph service as a real process, through the generated client, on SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.harness import REPO, ServiceProcess, authed_channel, base_env, start_service
from wgs.common.auth import SUPERVISOR
from wgs.v1 import graph_pb2 as g
from wgs.v1 import graph_pb2_grpc, runtime_pb2, runtime_service_pb2_grpc, task_pb2
from wgs.v1 import runtime_service_pb2 as rs

S = task_pb2
R = runtime_pb2
T = 10  # deadline of every call, seconds


class Graph:
    def __init__(self, proc: ServiceProcess) -> None:
        self.proc = proc
        self.channel = authed_channel(proc.address, SUPERVISOR)  # public and runtime RPCs
        self.stub = graph_pb2_grpc.GraphServiceStub(self.channel)
        self.rt = runtime_service_pb2_grpc.RuntimeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def graph(db_url: str, tmp_path: Path) -> Iterator[Graph]:
    proc = start_service("graph", tmp_path / "state", env={"WGS_DATABASE_URL": db_url})
    client = Graph(proc)
    try:
        yield client
    finally:
        client.close()
        assert proc.terminate() == 0, proc.stderr()


def chat_req(**kw: Any) -> rs.CreateChatTaskRequest:
    base: dict[str, Any] = {"supervisor_id": "sup-a", "lease_seconds": 30}
    base.update(kw)
    return rs.CreateChatTaskRequest(**base)


def code_of(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_health_and_reflection(graph: Graph) -> None:
    health = health_pb2_grpc.HealthStub(graph.channel)
    for name in ("", "wgs.v1.GraphService", "wgs.v1.RuntimeService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=T)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(graph.channel).get_services())
    assert {"wgs.v1.GraphService", "wgs.v1.RuntimeService", "grpc.health.v1.Health"} <= services


def test_bad_input_on_every_rpc_is_rejected_and_writes_nothing(graph: Graph) -> None:
    s, rt = graph.stub, graph.rt
    chat = rt.CreateChatTask(chat_req(), timeout=T).task.id
    s.AppendMessage(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER, content="hi"), timeout=T)
    before_chat = rt.GetChatRecord(rs.GetChatRecordRequest(chat_id=chat), timeout=T)
    INV, NF, FP = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                   grpc.StatusCode.FAILED_PRECONDITION)
    run = runtime_pb2.Run(number=1, pid=10)
    long = "x" * 300_000
    cases: list[tuple[str, Callable[[], Any], grpc.StatusCode]] = [
        ("CreateTask empty title", lambda: s.CreateTask(g.CreateTaskRequest(), timeout=T), INV),
        ("CreateTask oversized", lambda: s.CreateTask(g.CreateTaskRequest(title="t", description=long), timeout=T), INV),
        ("CreateTask bad id", lambda: s.CreateTask(g.CreateTaskRequest(id="a b", title="t"), timeout=T), INV),
        ("GetTask empty", lambda: s.GetTask(g.GetTaskRequest(), timeout=T), INV),
        ("GetTask bad id", lambda: s.GetTask(g.GetTaskRequest(id="../etc"), timeout=T), INV),
        ("GetTask unknown", lambda: s.GetTask(g.GetTaskRequest(id="nope"), timeout=T), NF),
        ("ListTasks bad token", lambda: s.ListTasks(g.ListTasksRequest(page_token="%%%"), timeout=T), INV),
        ("ListTasks bad size", lambda: s.ListTasks(g.ListTasksRequest(page_size=5000), timeout=T), INV),
        ("UpdateTask empty id", lambda: s.UpdateTask(g.UpdateTaskRequest(), timeout=T), INV),
        ("UpdateTask unknown", lambda: s.UpdateTask(g.UpdateTaskRequest(
            id="nope", update=g.TaskUpdate(title="x")), timeout=T), NF),
        ("UpdateTask bad status", lambda: s.UpdateTask(g.UpdateTaskRequest(
            id=chat, update=g.TaskUpdate(status=S.TASK_STATUS_UNSPECIFIED)), timeout=T), INV),
        ("UpdateTask bad tag", lambda: s.UpdateTask(g.UpdateTaskRequest(
            id=chat, update=g.TaskUpdate(add_tags=["no spaces"])), timeout=T), INV),
        ("AppendTaskLog empty", lambda: s.AppendTaskLog(g.AppendTaskLogRequest(id=chat), timeout=T), INV),
        ("AppendTaskLog unknown", lambda: s.AppendTaskLog(g.AppendTaskLogRequest(id="nope", message="m"),
                                                          timeout=T), NF),
        ("CreateChatTask no supervisor", lambda: rt.CreateChatTask(rs.CreateChatTaskRequest(lease_seconds=5),
                                                                  timeout=T), INV),
        ("CreateChatTask bad lease", lambda: rt.CreateChatTask(chat_req(lease_seconds=0), timeout=T), INV),
        ("CreateChatTask oversized name", lambda: rt.CreateChatTask(chat_req(name="n" * 1000), timeout=T), INV),
        ("GetChatRecord empty", lambda: rt.GetChatRecord(rs.GetChatRecordRequest(), timeout=T), INV),
        ("GetChatRecord ill-formed", lambda: rt.GetChatRecord(rs.GetChatRecordRequest(chat_id="chat-1"), timeout=T),
         INV),
        ("GetChatRecord unknown", lambda: rt.GetChatRecord(rs.GetChatRecordRequest(chat_id=".chat-999"), timeout=T),
         NF),
        ("ListChatRecords bad state", lambda: rt.ListChatRecords(rs.ListChatRecordsRequest(states=[R.RUNTIME_STATE_UNSPECIFIED]), timeout=T),
         INV),
        ("ListChatRecords bad token", lambda: rt.ListChatRecords(rs.ListChatRecordsRequest(page_token="LmNoYXQ="),
                                                                timeout=T), INV),
        ("AppendMessage empty", lambda: s.AppendMessage(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER), timeout=T),
         INV),
        ("AppendMessage oversized", lambda: s.AppendMessage(g.AppendMessageRequest(
            chat_id=chat, role=S.MESSAGE_ROLE_USER, content=long), timeout=T), INV),
        ("AppendMessage ill-formed chat", lambda: s.AppendMessage(g.AppendMessageRequest(
            chat_id=".chat-x", role=S.MESSAGE_ROLE_USER, content="m"), timeout=T), INV),
        ("AppendMessage unknown chat", lambda: s.AppendMessage(g.AppendMessageRequest(
            chat_id=".chat-999", role=S.MESSAGE_ROLE_USER, content="m"), timeout=T), NF),
        ("ListMessages unknown", lambda: s.ListMessages(g.ListMessagesRequest(chat_id=".chat-999"), timeout=T), NF),
        ("ListMessages negative", lambda: s.ListMessages(g.ListMessagesRequest(chat_id=chat, after_seq=-1),
                                                         timeout=T), INV),
        ("WatchMessages ill-formed", lambda: list(s.WatchMessages(g.WatchMessagesRequest(chat_id="x"), timeout=T)),
         INV),
        ("WatchMessages unknown", lambda: list(s.WatchMessages(g.WatchMessagesRequest(chat_id=".chat-999"),
                                                               timeout=T)), NF),
        ("RecordRunStarted no run", lambda: rt.RecordRunStarted(rs.RecordRunStartedRequest(
            chat_id=chat, supervisor_id="sup-a"), timeout=T), INV),
        ("RecordRunStarted not owner", lambda: rt.RecordRunStarted(rs.RecordRunStartedRequest(
            chat_id=chat, run=run, supervisor_id="sup-b"), timeout=T), FP),
        ("RecordRunStarted unknown", lambda: rt.RecordRunStarted(rs.RecordRunStartedRequest(
            chat_id=".chat-999", run=run, supervisor_id="sup-a"), timeout=T), NF),
        ("RecordRunStarted without a pid", lambda: rt.RecordRunStarted(rs.RecordRunStartedRequest(
            chat_id=chat, run=runtime_pb2.Run(number=1), supervisor_id="sup-a"), timeout=T), INV),
        ("RecordRunExited bad state", lambda: rt.RecordRunExited(rs.RecordRunExitedRequest(exits=[rs.RunExit(
            chat_id=chat, run=run, state=R.RUNTIME_STATE_RUNNING)], supervisor_id="sup-a"), timeout=T), INV),
        ("RecordRunExited none", lambda: rt.RecordRunExited(rs.RecordRunExitedRequest(supervisor_id="sup-a"),
                                                            timeout=T), INV),
        ("TransitionChat no state", lambda: rt.TransitionChat(rs.TransitionChatRequest(
            chat_id=chat, supervisor_id="sup-a"), timeout=T), INV),
        ("TransitionChat illegal", lambda: rt.TransitionChat(rs.TransitionChatRequest(
            chat_id=chat, supervisor_id="sup-a", to_state=R.RUNTIME_STATE_EXITED), timeout=T), FP),
        ("TransitionChat unknown", lambda: rt.TransitionChat(rs.TransitionChatRequest(
            chat_id=".chat-999", to_state=R.RUNTIME_STATE_STOPPED, supervisor_id="sup-a"), timeout=T), NF),
        # run 2 was never started (run 1, being spawned while STARTING, counts as live)
        ("ReportAgentStatus no live run", lambda: s.ReportAgentStatus(g.ReportAgentStatusRequest(
            chat_id=chat, run_number=2, input_tokens=3), timeout=T), FP),
        ("ReportAgentStatus no run", lambda: s.ReportAgentStatus(g.ReportAgentStatusRequest(chat_id=chat),
                                                                 timeout=T), INV),
        ("PublishPartialMessage no request", lambda: s.PublishPartialMessage(g.PublishPartialMessageRequest(
            chat_id=chat, run_number=1, text="x"), timeout=T), INV),
        ("RenewLeases empty", lambda: rt.RenewLeases(rs.RenewLeasesRequest(), timeout=T), INV),
        ("RenewLeases oversized lease", lambda: rt.RenewLeases(rs.RenewLeasesRequest(
            supervisor_id="sup-a", lease_seconds=100_000), timeout=T), INV),
        ("ClaimChat empty", lambda: rt.ClaimChat(rs.ClaimChatRequest(), timeout=T), INV),
        ("ClaimChat unknown", lambda: rt.ClaimChat(rs.ClaimChatRequest(
            chat_id=".chat-999", supervisor_id="sup-b", lease_seconds=5), timeout=T), NF),
        ("ClaimChat held", lambda: rt.ClaimChat(rs.ClaimChatRequest(
            chat_id=chat, supervisor_id="sup-b", lease_seconds=5), timeout=T), FP),
    ]
    for name, call, expected in cases:
        code, details = code_of(call)
        assert code == expected, f"{name}: got {code} {details!r}"
        assert details and "Traceback" not in details, f"{name}: unhelpful message {details!r}"
    tasks = s.ListTasks(g.ListTasksRequest(), timeout=T).tasks
    assert [t.id for t in tasks] == [chat]
    after_chat = rt.GetChatRecord(rs.GetChatRecordRequest(chat_id=chat), timeout=T)
    assert after_chat == before_chat
    assert len(s.ListMessages(g.ListMessagesRequest(chat_id=chat), timeout=T).messages) == 1
    assert "Traceback" not in graph.proc.stderr()


def test_racing_updates_exactly_one_wins(graph: Graph) -> None:
    s = graph.stub
    task = s.CreateTask(g.CreateTaskRequest(id="race", title="R"), timeout=T).task
    for round_ in range(3):
        futures = [s.UpdateTask.future(g.UpdateTaskRequest(id="race", expected_version=task.version,
                                                           update=g.TaskUpdate(title=f"{round_}-{i}")), timeout=T)
                   for i in range(2)]
        codes = [code_of(f.result) for f in futures]
        assert sorted(c.name for c, _ in codes) == ["ABORTED", "OK"], codes
        aborted = next(d for c, d in codes if c == grpc.StatusCode.ABORTED)
        assert f"expected {task.version}" in aborted and f"current version is {task.version + 1}" in aborted
        task = s.GetTask(g.GetTaskRequest(id="race"), timeout=T).task
        assert task.version == 2 + round_


def test_fifty_concurrent_chat_creations_get_distinct_ids(graph: Graph) -> None:
    futures = [graph.rt.CreateChatTask.future(chat_req(name=f"c{i}"), timeout=30) for i in range(50)]
    ids = [f.result().task.id for f in futures]
    assert len(set(ids)) == 50
    assert sorted(int(i.rsplit("-", 1)[1]) for i in ids) == list(range(1, 51))


def test_ids_survive_restart_and_are_never_reused(db_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"WGS_DATABASE_URL": db_url}
    proc = start_service("graph", state, env=env)
    with authed_channel(proc.address, SUPERVISOR) as ch:
        stub = graph_pb2_grpc.GraphServiceStub(ch)
        rts = runtime_service_pb2_grpc.RuntimeServiceStub(ch)
        first = [rts.CreateChatTask(chat_req(), timeout=T).task.id for _ in range(2)]
        stub.AppendMessage(g.AppendMessageRequest(chat_id=first[0], role=S.MESSAGE_ROLE_USER, content="kept"), timeout=T)
    assert proc.terminate() == 0
    proc = start_service("graph", state, env=env)  # migrations run again: a no-op at head
    try:
        with authed_channel(proc.address, SUPERVISOR) as ch:
            stub = graph_pb2_grpc.GraphServiceStub(ch)
            rts = runtime_service_pb2_grpc.RuntimeServiceStub(ch)
            assert rts.CreateChatTask(chat_req(), timeout=T).task.id == ".chat-3"
            msgs = stub.ListMessages(g.ListMessagesRequest(chat_id=first[0]), timeout=T).messages
            assert [m.content for m in msgs] == ["kept"]
    finally:
        assert proc.terminate() == 0


def test_sigterm_ends_watch_streams_refuses_new_calls_and_exits_zero(db_url: str, tmp_path: Path) -> None:
    """SIGTERM ends the watch streams at once, telling the client where to resume, rather than
    holding them for the drain grace. The grace here is far longer than any wait below, so a stream
    that waited for it would fail the test (as would a process that did)."""
    grace = 600
    proc = start_service("graph", tmp_path / "state", env={"WGS_DATABASE_URL": db_url,
                                                           "WGS_SHUTDOWN_GRACE_SECONDS": str(grace)})
    graph = Graph(proc)
    try:
        _sigterm_ends_watch_streams(graph)
    finally:
        graph.close()
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def _sigterm_ends_watch_streams(graph: Graph) -> None:
    s, rt = graph.stub, graph.rt
    chat = rt.CreateChatTask(chat_req(), timeout=T).task.id
    s.AppendMessage(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER, content="one"), timeout=T)
    stream = s.WatchMessages(g.WatchMessagesRequest(chat_id=chat), timeout=30)
    received: list[str] = []
    ended: list[grpc.RpcError] = []
    got_two = threading.Event()

    def consume() -> None:
        try:
            for resp in stream:
                received.append(resp.message.content)
                if len(received) == 2:
                    got_two.set()
        except grpc.RpcError as exc:
            ended.append(exc)

    reader = threading.Thread(target=consume)
    reader.start()
    s.AppendMessage(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_ASSISTANT, content="two"), timeout=T)
    assert got_two.wait(10), received
    graph.proc.proc.send_signal(signal.SIGTERM)
    reader.join(60)  # a tenth of the grace
    assert not reader.is_alive(), "the watch stream was held for the drain grace"
    # Ended by the server itself (grpc would cancel it at the grace's end), saying where to resume.
    assert received == ["one", "two"]
    assert ended and ended[0].code() == grpc.StatusCode.UNAVAILABLE
    assert "after_seq=2" in (ended[0].details() or "")
    assert graph.proc.proc.wait(60) == 0  # nothing left in flight: the drain did not wait either
    code, _ = code_of(lambda: rt.GetChatRecord(rs.GetChatRecordRequest(chat_id=chat), timeout=2))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_reconcile_resets_only_chats_whose_lease_expired(graph: Graph) -> None:
    s, rt = graph.stub, graph.rt
    short = rt.CreateChatTask(chat_req(lease_seconds=1, supervisor_id="sup-dying"), timeout=T).task.id
    long = rt.CreateChatTask(chat_req(lease_seconds=600), timeout=T).task.id
    s.CreateTask(g.CreateTaskRequest(id="worker", title="W", status=S.TASK_STATUS_IN_PROGRESS), timeout=T)
    deadline = time.monotonic() + 10
    while True:  # wait for the 1 s lease to run out, observed through dry runs
        dry = s.Reconcile(g.ReconcileRequest(dry_run=True), timeout=T)
        if dry.actions or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(a.task_id, a.applied) for a in dry.actions] == [(short, False)]
    assert {k.task_id for k in dry.kept} == {long, "worker"}
    assert s.GetTask(g.GetTaskRequest(id=short), timeout=T).task.status == S.TASK_STATUS_IN_PROGRESS
    done = s.Reconcile(g.ReconcileRequest(), timeout=T)
    assert [(a.task_id, a.applied) for a in done.actions] == [(short, True)]
    rec = rt.GetChatRecord(rs.GetChatRecordRequest(chat_id=short, with_log=True), timeout=T)
    assert rec.task.status == S.TASK_STATUS_OPEN and rec.runtime.state == R.RUNTIME_STATE_STOPPED
    assert rec.task.log[-1].actor == "reconcile"
    assert s.GetTask(g.GetTaskRequest(id=long), timeout=T).task.status == S.TASK_STATUS_IN_PROGRESS
    assert s.GetTask(g.GetTaskRequest(id="worker"), timeout=T).task.status == S.TASK_STATUS_IN_PROGRESS


def test_unsupported_database_url_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = base_env(tmp_path, {"WGS_DATABASE_URL": "mysql://root@localhost/wgs", "WGS_GRAPH_LISTEN": "127.0.0.1:0"})
    done = subprocess.run([sys.executable, "-m", "wgs.cli.main", "serve", "graph"], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "WGS_DATABASE_URL" in done.stderr and "Traceback" not in done.stderr


def test_calls_in_flight_at_sigterm_complete_and_nothing_is_half_written(db_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"WGS_DATABASE_URL": db_url}
    proc = start_service("graph", state, env=env)
    with authed_channel(proc.address, SUPERVISOR) as ch:
        rts = runtime_service_pb2_grpc.RuntimeServiceStub(ch)
        futures = [rts.CreateChatTask.future(chat_req(request_id=f"req-{i}"), timeout=20) for i in range(30)]
        futures[0].result()  # the server is working through the batch: signal it now
        proc.proc.send_signal(signal.SIGTERM)
        outcomes = [code_of(f.result) for f in futures]
        ok_ids = [f.result().task.id for f in futures if f.exception() is None]
    assert proc.proc.wait(15) == 0
    # Calls that had not started when shutdown began are refused (grpc reports UNAVAILABLE or
    # CANCELLED); none fails any other way.
    refused = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert {c for c, _ in outcomes} <= {grpc.StatusCode.OK} | refused, outcomes
    proc = start_service("graph", state, env=env)
    try:
        with authed_channel(proc.address, SUPERVISOR) as ch:
            rts = runtime_service_pb2_grpc.RuntimeServiceStub(ch)
            chats = rts.ListChatRecords(rs.ListChatRecordsRequest(page_size=1000), timeout=T).chats
            stored = {c.task.id for c in chats}
            assert stored == set(ok_ids), "a refused call left a chat behind, or a confirmed one is missing"
            assert all(c.runtime.state == R.RUNTIME_STATE_STARTING and c.runtime.supervisor_id == "sup-a"
                       for c in chats)
            # A client retrying a refused call with its request_id gets exactly one chat per request.
            again = [rts.CreateChatTask(chat_req(request_id=f"req-{i}"), timeout=T) for i in range(30)]
            assert len({r.task.id for r in again}) == 30
            assert {r.task.id for r in again if not r.created} == stored
    finally:
        assert proc.terminate() == 0
