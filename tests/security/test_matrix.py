"""Role x RPC over real processes and the generated clients: every method of every service, called
without credentials, as client, as supervisor and as an agent (own chat, live run). What the role
table (wgs.common.auth.CALLS) allows gets past authentication and authorization (whatever the
service then answers); everything else is UNAUTHENTICATED or PERMISSION_DENIED naming role and call.
Then the agent rules in detail: own chat only, replies only, only while its run lives."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from tests.harness import ServiceProcess, authed_channel, kill_agents, start_service, token
from tests.supervisor.conftest import wait_output
from wgs.common import auth
from wgs.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    dispatch_pb2,
    dispatch_pb2_grpc,
    graph_pb2,
    graph_pb2_grpc,
    runtime_pb2,
    runtime_service_pb2,
    runtime_service_pb2_grpc,
    supervisor_pb2,
    supervisor_pb2_grpc,
    task_pb2,
)

OWNER = "matrix-sup"
PASSED = "passed"  # got past authentication and authorization

SERVICES: dict[str, tuple[Any, Any, str]] = {
    # service → (pb2 module, stub class, process)
    "wgs.v1.ChatService": (chat_pb2, chat_pb2_grpc.ChatServiceStub, "supervisor"),
    "wgs.v1.SupervisorService": (supervisor_pb2, supervisor_pb2_grpc.SupervisorServiceStub, "supervisor"),
    "wgs.v1.GraphService": (graph_pb2, graph_pb2_grpc.GraphServiceStub, "graph"),
    "wgs.v1.RuntimeService": (runtime_service_pb2, runtime_service_pb2_grpc.RuntimeServiceStub, "graph"),
    "wgs.v1.DispatchService": (dispatch_pb2, dispatch_pb2_grpc.DispatchServiceStub, "dispatch"),
}


@dataclass
class Stack:
    procs: dict[str, ServiceProcess]
    chat: str  # a chat in the graph owned by OWNER, run 1 recorded as started
    other: str  # another chat


def _runtime(address: str) -> runtime_service_pb2_grpc.RuntimeServiceStub:
    return runtime_service_pb2_grpc.RuntimeServiceStub(authed_channel(address, auth.SUPERVISOR))


def _create_chat(runtime: runtime_service_pb2_grpc.RuntimeServiceStub, name: str) -> str:
    """A chat recorded in the graph (STARTING, owned by OWNER), as CreateChat would make it."""
    return runtime.CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(
        name=name, supervisor_id=OWNER, lease_seconds=600), timeout=10).task.id


def _record_started(runtime: runtime_service_pb2_grpc.RuntimeServiceStub, chat: str, number: int) -> None:
    runtime.RecordRunStarted(runtime_service_pb2.RecordRunStartedRequest(
        chat_id=chat, run=runtime_pb2.Run(number=number, pid=1), supervisor_id=OWNER,
        expected_state=runtime_pb2.RUNTIME_STATE_STARTING), timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("matrix") / "state"
    procs: dict[str, ServiceProcess] = {}
    try:
        procs["graph"] = start_service("graph", state)
        procs["dispatch"] = start_service("dispatch", state)
        procs["supervisor"] = start_service("supervisor", state, {
            "WGS_GRAPH_ADDR": procs["graph"].address, "WGS_DISPATCH_ADDR": procs["dispatch"].address})
        runtime = _runtime(procs["graph"].address)
        ids = [_create_chat(runtime, n) for n in ("mine", "other")]
        for chat in ids:
            _record_started(runtime, chat, 1)
        yield Stack(procs, ids[0], ids[1])
    finally:
        for proc in reversed(list(procs.values())):
            proc.terminate()
        kill_agents(state)


def methods() -> list[tuple[str, str]]:
    return [(svc, m.name) for svc, (module, _, _) in SERVICES.items()
            for m in module.DESCRIPTOR.services_by_name[svc.rsplit(".", 1)[1]].methods]


def harmless_request(service: str, method: str, chat: str) -> Message:
    """A request that cannot start anything: empty (the service refuses it as invalid), except where
    an empty one would act, and chat-scoped ones name the agent's chat."""
    module, _, _ = SERVICES[service]
    desc = module.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[method]
    cls = getattr(module, desc.input_type.name)
    if method == "CreateChat":
        return chat_pb2.CreateChatRequest(executor="no-such-executor")
    if method == "AppendMessage":
        return graph_pb2.AppendMessageRequest(chat_id=chat, role=task_pb2.MESSAGE_ROLE_ASSISTANT, content="matrix")
    if method in ("ListMessages", "WatchMessages"):
        return cls(chat_id=chat)
    if method in ("ReportAgentStatus", "PublishPartialMessage"):  # a report that changes nothing
        return cls(chat_id=chat, run_number=1)
    # StopAgents acts even when empty, but the matrix's supervisor runs no agent at this point (its
    # chats are in the graph only), so it stops nothing.
    if method == "Reconcile":
        return graph_pb2.ReconcileRequest(dry_run=True)
    return cls()


def call(stack: Stack, service: str, method: str, token: str | None, request: Message) -> tuple[str, str]:
    """(PASSED or the status code name, details) of one call through the generated stub."""
    _, stub_cls, proc = SERVICES[service]
    address = stack.procs[proc].address
    channel = grpc.insecure_channel(address)
    try:
        fn = getattr(stub_cls(channel), method)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        result = fn(request, timeout=3, metadata=metadata)
        if not isinstance(result, Message):  # a stream: its first answer (or its end) is enough
            next(iter(result), None)
            result.cancel()
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return code.name, exc.details() or ""  # type: ignore[attr-defined]
        return PASSED, code.name
    finally:
        channel.close()
    return PASSED, "OK"


def identities(stack: Stack) -> dict[str, tuple[str | None, auth.Identity | None]]:
    return {
        "none": (None, None),
        "client": (token(auth.CLIENT), auth.Identity(auth.CLIENT)),
        "supervisor": (token(auth.SUPERVISOR), auth.Identity(auth.SUPERVISOR)),
        "agent": (token(auth.AGENT, stack.chat, 1), auth.Identity(auth.AGENT, stack.chat, 1)),
    }


def expected(method: str, who: auth.Identity | None) -> str:
    if who is None:
        return "UNAUTHENTICATED"
    rule = auth.CALLS[method]
    if who.role in rule.roles or (who.role == auth.AGENT and rule.agent is not None):
        return PASSED
    return "PERMISSION_DENIED"


def test_role_by_rpc_matrix(stack: Stack) -> None:
    wrong = []
    for service, method in methods():
        full = f"/{service}/{method}"
        for name, (tok, who) in identities(stack).items():
            got, details = call(stack, service, method, tok, harmless_request(service, method, stack.chat))
            want = expected(full, who)
            if got != want:
                wrong.append(f"{name} {full}: {got} ({details}), expected {want}")
            elif got == "PERMISSION_DENIED" and not (details.startswith(who.describe()) and full in details):  # type: ignore[union-attr]
                wrong.append(f"{name} {full}: the denial does not name the role and the call: {details!r}")
    assert not wrong, "\n".join(wrong)


def test_open_services_need_no_token(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for proc in stack.procs.values():
        with grpc.insecure_channel(proc.address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def _graph_as(stack: Stack, role: str, chat: str = "", run: int = 0) -> graph_pb2_grpc.GraphServiceStub:
    return graph_pb2_grpc.GraphServiceStub(authed_channel(stack.procs["graph"].address, role, chat_id=chat, run=run))


def _denied(fn: Any, *args: Any) -> str:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
    return str(err.value.details())


def test_an_agent_reads_and_answers_only_its_own_chat(stack: Stack) -> None:
    agent = _graph_as(stack, auth.AGENT, stack.chat, 1)
    agent.ListMessages(graph_pb2.ListMessagesRequest(chat_id=stack.chat), timeout=5)
    details = _denied(agent.ListMessages, graph_pb2.ListMessagesRequest(chat_id=stack.other))
    assert details == (f"agent of {stack.chat} run #1 may not call /wgs.v1.GraphService/ListMessages: agents may "
                       f"call it only for their own chat, not {stack.other!r}")
    _denied(agent.AppendMessage, graph_pb2.AppendMessageRequest(
        chat_id=stack.other, role=task_pb2.MESSAGE_ROLE_ASSISTANT, content="x"))
    details = _denied(agent.AppendMessage, graph_pb2.AppendMessageRequest(
        chat_id=stack.chat, role=task_pb2.MESSAGE_ROLE_USER, content="pretend the user said this"))
    assert "only ASSISTANT or SYSTEM_ERROR" in details
    runtime = runtime_service_pb2_grpc.RuntimeServiceStub(
        authed_channel(stack.procs["graph"].address, auth.AGENT, chat_id=stack.chat, run=1))
    _denied(runtime.GetChatRecord, runtime_service_pb2.GetChatRecordRequest(chat_id=stack.chat))
    _denied(runtime.RecordRunStarted, runtime_service_pb2.RecordRunStartedRequest(
        chat_id=stack.chat, run=runtime_pb2.Run(number=1, pid=1), supervisor_id=OWNER))
    _denied(runtime.TransitionChat, runtime_service_pb2.TransitionChatRequest(
        chat_id=stack.chat, supervisor_id=OWNER, to_state=runtime_pb2.RUNTIME_STATE_STOPPED))


def test_an_agent_reports_only_for_its_own_chat_and_run(stack: Stack) -> None:
    """What the agent reports reaches its chat's record; it cannot report for another chat, nor in
    the name of another run of its own chat."""
    agent = _graph_as(stack, auth.AGENT, stack.chat, 1)
    got = agent.ReportAgentStatus(graph_pb2.ReportAgentStatusRequest(
        chat_id=stack.chat, run_number=1, input_tokens=7, output_tokens=3), timeout=5).status
    assert (got.run_number, got.input_tokens, got.output_tokens) == (1, 7, 3)
    agent.PublishPartialMessage(graph_pb2.PublishPartialMessageRequest(
        chat_id=stack.chat, run_number=1, request_id="r-1", text="par"), timeout=5)
    details = _denied(agent.ReportAgentStatus, graph_pb2.ReportAgentStatusRequest(
        chat_id=stack.other, run_number=1, input_tokens=10**6))
    assert details.endswith(f"only for their own chat, not {stack.other!r}")
    details = _denied(agent.PublishPartialMessage, graph_pb2.PublishPartialMessageRequest(
        chat_id=stack.chat, run_number=2, text="as a run that does not exist yet"))
    assert details == (f"agent of {stack.chat} run #1 may not call /wgs.v1.GraphService/PublishPartialMessage: "
                       "agents may call it only for their own run, not run 2")
    runtime = _runtime(stack.procs["graph"].address)
    record = runtime.GetChatRecord(runtime_service_pb2.GetChatRecordRequest(chat_id=stack.other), timeout=5)
    assert record.runtime.agent.input_tokens == 0  # the denied report changed nothing


def test_an_agent_token_lives_only_as_long_as_its_run(tmp_path: Path, stack: Stack) -> None:
    runtime = _runtime(stack.procs["graph"].address)
    chat = _create_chat(runtime, "life")
    run1, run2 = _graph_as(stack, auth.AGENT, chat, 1), _graph_as(stack, auth.AGENT, chat, 2)
    listing = graph_pb2.ListMessagesRequest(chat_id=chat)
    run1.ListMessages(listing, timeout=5)  # being spawned (STARTING): not recorded yet, accepted
    _denied(run2.ListMessages, listing)  # not the next run
    _record_started(runtime, chat, 1)
    run1.ListMessages(listing, timeout=5)
    run1.ReportAgentStatus(graph_pb2.ReportAgentStatusRequest(chat_id=chat, run_number=1, answer_succeeded=True),
                           timeout=5)
    exited = runtime_pb2.Run(number=1, pid=1, exit_code=1)
    result = runtime.RecordRunExited(runtime_service_pb2.RecordRunExitedRequest(supervisor_id=OWNER, exits=[
        runtime_service_pb2.RunExit(chat_id=chat, run=exited, state=runtime_pb2.RUNTIME_STATE_BACKOFF)]),
        timeout=10).results[0]
    assert result.error_code == 0, result
    details = _denied(run1.ListMessages, listing)
    assert details.endswith(f"run #1 of {chat} is not live (it exited or a newer run replaced it)")
    _denied(run1.ReportAgentStatus, graph_pb2.ReportAgentStatusRequest(chat_id=chat, run_number=1,
                                                                       answer_succeeded=True))
    _denied(run2.ListMessages, listing)  # BACKOFF: no run is being spawned yet
    runtime.TransitionChat(runtime_service_pb2.TransitionChatRequest(
        chat_id=chat, supervisor_id=OWNER, from_state=runtime_pb2.RUNTIME_STATE_BACKOFF,
        to_state=runtime_pb2.RUNTIME_STATE_STARTING), timeout=10)
    run2.ListMessages(listing, timeout=5)  # the restart being spawned
    _denied(run1.ListMessages, listing)
    _record_started(runtime, chat, 2)
    run2.AppendMessage(graph_pb2.AppendMessageRequest(chat_id=chat, role=task_pb2.MESSAGE_ROLE_ASSISTANT,
                                                      content="answer"), timeout=5)
    _denied(run1.ListMessages, listing)
    runtime.TransitionChat(runtime_service_pb2.TransitionChatRequest(  # StopChat while run 2 lives
        chat_id=chat, supervisor_id=OWNER, from_state=runtime_pb2.RUNTIME_STATE_RUNNING,
        to_state=runtime_pb2.RUNTIME_STATE_STOPPED), timeout=10)
    _denied(run2.ListMessages, listing)


def test_the_supervisor_gives_each_run_its_own_working_token(stack: Stack) -> None:
    """A `command` agent spawned by the real supervisor finds WGS_TOKEN in its environment (never in
    its argv), can read its own chat with it and not another one."""
    code = (
        "import os, sys, grpc\n"
        "from wgs.common.clients import sync_channel\n"
        "from wgs.v1 import graph_pb2 as g, graph_pb2_grpc as s\n"
        "assert os.environ['WGS_TOKEN'] not in ' '.join(sys.argv)\n"
        "stub = s.GraphServiceStub(sync_channel(os.environ['WGS_GRAPH_ADDR']))\n"
        "stub.ListMessages(g.ListMessagesRequest(chat_id=os.environ['WGS_CHAT_ID']), timeout=10)\n"
        "print('OWN=OK', flush=True)\n"
        f"try:\n    stub.ListMessages(g.ListMessagesRequest(chat_id='{stack.other}'), timeout=10)\n"
        "except grpc.RpcError as e:\n    print('OTHER=' + e.code().name, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    with authed_channel(stack.procs["supervisor"].address) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        chat = stub.CreateChat(chat_pb2.CreateChatRequest(command=[sys.executable, "-c", code]), timeout=20).chat
        try:
            log = chat.runtime.current_run.stderr_path
            wait_output(log, "OTHER=")
            text = Path(log).read_text()
            assert "OWN=OK" in text and "OTHER=PERMISSION_DENIED" in text, text
            run_token = token(auth.AGENT, chat.id, chat.runtime.current_run.number)
            assert not any(run_token in a for a in chat.runtime.current_run.argv)
        finally:
            stub.StopChat(chat_pb2.StopChatRequest(chat_id=chat.id), timeout=20)
    assert run_token not in stack.procs["supervisor"].stderr()
