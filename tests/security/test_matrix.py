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
    task_pb2,
)

OWNER = "matrix-sup"
PASSED = "passed"  # got past authentication and authorization

SERVICES: dict[str, tuple[Any, Any, str]] = {
    # service → (pb2 module, stub class, process)
    "wgs.v1.ChatService": (chat_pb2, chat_pb2_grpc.ChatServiceStub, "supervisor"),
    "wgs.v1.GraphService": (graph_pb2, graph_pb2_grpc.GraphServiceStub, "graph"),
    "wgs.v1.DispatchService": (dispatch_pb2, dispatch_pb2_grpc.DispatchServiceStub, "dispatch"),
}


@dataclass
class Stack:
    procs: dict[str, ServiceProcess]
    chat: str  # a chat in the graph owned by OWNER, run 1 recorded as started
    other: str  # another chat


def _sup(address: str) -> graph_pb2_grpc.GraphServiceStub:
    return graph_pb2_grpc.GraphServiceStub(authed_channel(address, auth.SUPERVISOR))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("matrix") / "state"
    procs: dict[str, ServiceProcess] = {}
    try:
        procs["graph"] = start_service("graph", state)
        procs["dispatch"] = start_service("dispatch", state)
        procs["supervisor"] = start_service("supervisor", state, {
            "WGS_GRAPH_ADDR": procs["graph"].address, "WGS_DISPATCH_ADDR": procs["dispatch"].address})
        graph = _sup(procs["graph"].address)
        ids = [graph.CreateChatTask(graph_pb2.CreateChatTaskRequest(name=n, supervisor_id=OWNER, lease_seconds=600),
                                    timeout=10).task.id for n in ("mine", "other")]
        for chat in ids:
            graph.RecordRunStarted(graph_pb2.RecordRunStartedRequest(
                chat_id=chat, run=runtime_pb2.Run(number=1, pid=1), supervisor_id=OWNER), timeout=10)
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
    _denied(agent.GetChatRecord, graph_pb2.GetChatRecordRequest(chat_id=stack.chat))
    _denied(agent.RecordRunStarted, graph_pb2.RecordRunStartedRequest(
        chat_id=stack.chat, run=runtime_pb2.Run(number=1, pid=1), supervisor_id=OWNER))


def test_an_agent_token_lives_only_as_long_as_its_run(tmp_path: Path, stack: Stack) -> None:
    sup = _graph_as(stack, auth.SUPERVISOR)
    chat = sup.CreateChatTask(graph_pb2.CreateChatTaskRequest(name="life", supervisor_id=OWNER, lease_seconds=600),
                              timeout=10).task.id
    run1, run2 = _graph_as(stack, auth.AGENT, chat, 1), _graph_as(stack, auth.AGENT, chat, 2)
    listing = graph_pb2.ListMessagesRequest(chat_id=chat)
    run1.ListMessages(listing, timeout=5)  # being spawned: not recorded yet, accepted
    _denied(run2.ListMessages, listing)  # not the next run
    sup.RecordRunStarted(graph_pb2.RecordRunStartedRequest(
        chat_id=chat, run=runtime_pb2.Run(number=1, pid=1), supervisor_id=OWNER), timeout=10)
    run1.ListMessages(listing, timeout=5)
    exited = runtime_pb2.Run(number=1, pid=1, exit_code=1)
    sup.RecordRunExited(graph_pb2.RecordRunExitedRequest(chat_id=chat, run=exited, supervisor_id=OWNER,
                                                         state=runtime_pb2.RUNTIME_STATE_BACKOFF), timeout=10)
    details = _denied(run1.ListMessages, listing)
    assert details.endswith(f"run #1 of {chat} is not live (it exited or a newer run replaced it)")
    run2.ListMessages(listing, timeout=5)  # the restart being spawned
    sup.RecordRunStarted(graph_pb2.RecordRunStartedRequest(
        chat_id=chat, run=runtime_pb2.Run(number=2, pid=1), supervisor_id=OWNER), timeout=10)
    run2.AppendMessage(graph_pb2.AppendMessageRequest(chat_id=chat, role=task_pb2.MESSAGE_ROLE_ASSISTANT,
                                                      content="answer"), timeout=5)
    _denied(run1.ListMessages, listing)


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
