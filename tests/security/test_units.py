"""The security rules as plain functions: tokens, the role table, paths, ids, timestamps, env."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

from wgs.common import auth, paths, validation
from wgs.common.errors import ConfigError, InvalidArgument, PermissionDenied, Unauthenticated
from wgs.common.settings import service_env
from wgs.common.timeutil import check_timestamps, from_ts
from wgs.v1 import chat_pb2, dispatch_pb2, graph_pb2, runtime_service_pb2, supervisor_pb2, task_pb2

SECRET = b"0123456789abcdef0123456789abcdef-test"
SERVICE_FILES = (chat_pb2, supervisor_pb2, graph_pb2, runtime_service_pb2, dispatch_pb2)


def all_methods() -> list[str]:
    out = []
    for module in SERVICE_FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            out += [f"/{service.full_name}/{m.name}" for m in service.methods]
    return out


# -- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("identity", [
    auth.Identity(auth.CLIENT), auth.Identity(auth.SUPERVISOR), auth.Identity(auth.AGENT, ".chat-3", 2),
    auth.Identity(auth.CLIENT, expires_at=4_000_000_000),
])
def test_a_token_speaks_for_the_identity_it_was_minted_for(identity: auth.Identity) -> None:
    token = auth.mint_token(SECRET, identity)
    assert token.startswith("wgs1.") and auth.verify_token(SECRET, token) == identity


def test_tokens_of_another_secret_tampered_or_expired_are_unauthenticated() -> None:
    token = auth.mint_client_token(SECRET)
    with pytest.raises(Unauthenticated, match="not issued by this stack"):
        auth.verify_token(b"another secret of at least 32 bytes!!", token)
    prefix, _payload, mac = token.split(".")
    forged_payload = auth._b64(b"supervisor")  # promote the client to supervisor, keep the mac
    with pytest.raises(Unauthenticated, match="not issued by this stack"):
        auth.verify_token(SECRET, f"{prefix}.{forged_payload}.{mac}")
    expiring = auth.mint_client_token(SECRET, ttl_seconds=60)
    assert auth.verify_token(SECRET, expiring).role == auth.CLIENT
    with pytest.raises(Unauthenticated, match="expired"):
        auth.verify_token(SECRET, expiring, now=auth.verify_token(SECRET, expiring).expires_at)
    for garbage in ("", "Bearer x", "wgs1.x", "wgs2.a.b", "wgs1.\u00e9.abc", "a.b.c.d"):
        with pytest.raises(Unauthenticated):
            auth.verify_token(SECRET, garbage)


def test_agent_tokens_name_a_valid_chat_and_run() -> None:
    with pytest.raises(InvalidArgument):
        auth.mint_agent_token(SECRET, ".chat-1\n", 1)
    with pytest.raises(ValueError):
        auth.mint_agent_token(SECRET, ".chat-1", 0)


def test_bearer_metadata_is_read_case_insensitively_and_redacted_in_text() -> None:
    token = auth.mint_client_token(SECRET)
    assert auth.bearer_token([("Authorization", f"bearer {token}")]) == token
    assert auth.bearer_token([("x-other", "1")]) is None
    assert auth.bearer_token([("authorization", "Basic abc")]) == ""
    assert token not in auth.redact_tokens(f"env WGS_TOKEN={token} end") and "wgs1.***" in auth.redact_tokens(token)


def test_no_secret_refuses_to_start_unless_auth_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WGS_AUTH_SECRET_FILE", raising=False)
    monkeypatch.delenv("WGS_AUTH", raising=False)
    with pytest.raises(ConfigError, match="no stack secret"):
        auth.ServerAuth.from_env(tmp_path)
    monkeypatch.setenv("WGS_AUTH", "off")
    assert auth.ServerAuth.from_env(tmp_path).secret is None
    monkeypatch.setenv("WGS_AUTH", "maybe")
    with pytest.raises(ConfigError, match="WGS_AUTH"):
        auth.ServerAuth.from_env(tmp_path)


def test_short_secrets_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weak = tmp_path / "weak"
    weak.write_text("hunter2\n")
    monkeypatch.setenv("WGS_AUTH_SECRET_FILE", str(weak))
    with pytest.raises(ConfigError, match="at least 32"):
        auth.ServerAuth.from_env(tmp_path)


def test_the_stack_secret_is_created_private_and_tightened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WGS_AUTH_SECRET_FILE", raising=False)
    path = auth.ensure_stack_secret(tmp_path)
    assert path == tmp_path / "auth" / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first = path.read_bytes()
    assert len(first.strip()) >= 32 and auth.ensure_stack_secret(tmp_path) == path and path.read_bytes() == first
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)
    auth.ensure_stack_secret(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700


# -- the role table -------------------------------------------------------------------------------


def test_every_method_of_every_service_has_an_entry_in_the_role_table() -> None:
    missing = [m for m in all_methods() if m not in auth.CALLS]
    assert not missing, f"add these to wgs.common.auth.CALLS (a method not there is denied to all): {missing}"


def test_the_role_table_names_only_existing_methods_known_roles_and_request_fields() -> None:
    """No stale entry (a renamed or moved method would leave its old name allowed for nobody, and
    its new name denied to all), and every agent rule names fields its request really has."""
    pool = descriptor_pool.Default()
    methods = set(all_methods())
    for method, rule in auth.CALLS.items():
        assert method in methods, f"{method} is in the role table but no service has it"
        assert rule.roles <= {auth.CLIENT, auth.SUPERVISOR}, method
        if rule.agent is None:
            continue
        service, name = method.lstrip("/").split("/")
        request = pool.FindServiceByName(service).FindMethodByName(name).input_type
        assert rule.agent.chat_field in request.fields_by_name, method
        if rule.agent.run_field:
            assert request.fields_by_name[rule.agent.run_field].type == request.fields_by_name[
                rule.agent.run_field].TYPE_INT32, method


def test_a_method_not_in_the_table_is_denied_to_everyone() -> None:
    for role in (auth.CLIENT, auth.SUPERVISOR):
        with pytest.raises(PermissionDenied, match="not in the access table"):
            auth.check_role("/wgs.v1.GraphService/DropEverything", auth.Identity(role))
    assert auth.check_role("/grpc.health.v1.Health/Check", None) is not None


def test_denials_name_the_role_and_the_call() -> None:
    with pytest.raises(PermissionDenied) as err:
        auth.check_role("/wgs.v1.RuntimeService/RecordRunStarted", auth.Identity(auth.CLIENT))
    assert err.value.message == "client may not call /wgs.v1.RuntimeService/RecordRunStarted (allowed: supervisor)"
    agent = auth.Identity(auth.AGENT, ".chat-3", 2)
    with pytest.raises(PermissionDenied) as err:
        auth.check_role("/wgs.v1.ChatService/CreateChat", agent)
    assert err.value.message.startswith("agent of .chat-3 run #2 may not call /wgs.v1.ChatService/CreateChat")


def test_agents_only_for_their_own_chat_and_only_replies() -> None:
    agent = auth.Identity(auth.AGENT, ".chat-3", 2)
    method = "/wgs.v1.GraphService/AppendMessage"
    rule = auth.check_role(method, agent)
    assert rule is not None
    reply = graph_pb2.AppendMessageRequest(chat_id=".chat-3", role=task_pb2.MESSAGE_ROLE_ASSISTANT, content="x")
    auth.check_agent_request(method, agent, rule, reply)
    with pytest.raises(PermissionDenied, match=r"only for their own chat, not '\.chat-4'"):
        auth.check_agent_request(method, agent, rule, graph_pb2.AppendMessageRequest(
            chat_id=".chat-4", role=task_pb2.MESSAGE_ROLE_ASSISTANT))
    with pytest.raises(PermissionDenied, match="only ASSISTANT or SYSTEM_ERROR"):
        auth.check_agent_request(method, agent, rule, graph_pb2.AppendMessageRequest(
            chat_id=".chat-3", role=task_pb2.MESSAGE_ROLE_USER))


def test_agent_reports_only_for_their_own_run() -> None:
    """ReportAgentStatus and PublishPartialMessage name a run: an agent may name only its own (the
    graph then checks that run is live)."""
    agent = auth.Identity(auth.AGENT, ".chat-3", 2)
    for method, cls in (("/wgs.v1.GraphService/ReportAgentStatus", graph_pb2.ReportAgentStatusRequest),
                        ("/wgs.v1.GraphService/PublishPartialMessage", graph_pb2.PublishPartialMessageRequest)):
        rule = auth.check_role(method, agent)
        assert rule is not None
        auth.check_agent_request(method, agent, rule, cls(chat_id=".chat-3", run_number=2))
        with pytest.raises(PermissionDenied) as err:
            auth.check_agent_request(method, agent, rule, cls(chat_id=".chat-3", run_number=1))
        assert err.value.message == (f"agent of .chat-3 run #2 may not call {method}: agents may call it only "
                                     "for their own run, not run 1")
        with pytest.raises(PermissionDenied, match="only for their own chat"):
            auth.check_agent_request(method, agent, rule, cls(chat_id=".chat-4", run_number=2))
        with pytest.raises(PermissionDenied, match=r"client may not call .* \(allowed: supervisor, agent"):
            auth.check_role(method, auth.Identity(auth.CLIENT))


# -- paths, ids, timestamps, environments -----------------------------------------------------------


def test_inside_accepts_only_paths_within_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "chats").mkdir(parents=True)
    (state / "chats" / "run-1.log").write_text("x")
    assert paths.inside(state, state / "chats" / "run-1.log") == (state / "chats" / "run-1.log").resolve()
    assert paths.inside(state, "chats/run-1.log") == (state / "chats" / "run-1.log").resolve()
    (state / "chats" / "escape").symlink_to("/etc")
    for outside in ("/etc/passwd", state / ".." / "x", state / "chats" / "escape" / "passwd", tmp_path / "statex"):
        with pytest.raises(paths.OutsideStateDir):
            paths.inside(state, outside)


@pytest.mark.parametrize("value", [".chat-1\n", ".chat-1\r", " .chat-1", ".chat-01", "../.chat-1"])
def test_chat_ids_match_the_whole_string(value: str) -> None:
    assert not validation.is_chat_id(value)
    with pytest.raises(InvalidArgument):
        validation.chat_id(value)
    with pytest.raises(InvalidArgument):
        validation.task_id("task\n")
    with pytest.raises(InvalidArgument):
        validation.request_id("req-1\n")
    with pytest.raises(InvalidArgument):
        validation.tag("tag\n")


def test_invalid_timestamps_are_invalid_arguments_naming_the_field() -> None:
    req = runtime_service_pb2.RecordRunExitedRequest(supervisor_id="s", exits=[
        runtime_service_pb2.RunExit(chat_id=".chat-1"), runtime_service_pb2.RunExit(chat_id=".chat-2")])
    req.exits[1].run.exited_at.seconds = 10**15
    with pytest.raises(InvalidArgument, match=r"^exits\[1\]\.run\.exited_at: seconds 1000000000000000 is out of range"):
        check_timestamps(req)
    move = runtime_service_pb2.TransitionChatRequest(chat_id=".chat-1")
    move.next_restart_at.nanos = -5
    with pytest.raises(InvalidArgument, match=r"^next_restart_at: nanos -5"):
        check_timestamps(move)
    with pytest.raises(InvalidArgument, match=r"^started_at:"):
        from_ts(move.next_restart_at, "started_at")


def test_graph_and_dispatch_get_no_api_keys_from_wgs_up() -> None:
    shell = {"PATH": "/bin", "HOME": "/root", "OPENAI_API_KEY": "sk-1", "LAMBDA01_API_KEY": "sk-2", "MY_LLM": "k",
             "WGS_API_KEY": "sk-3", "WGS_TOKEN": "wgs1.a.b", "WGS_AUTH_SECRET_FILE": "/s", "WGS_TLS_KEY_FILE": "/k",
             "PGPASSWORD": "pg", "OTEL_SERVICE_NAME": "x"}
    for service in ("graph", "dispatch"):
        env = service_env(service, shell)
        assert {"OPENAI_API_KEY", "LAMBDA01_API_KEY", "MY_LLM", "WGS_API_KEY", "WGS_TOKEN"}.isdisjoint(env)
        assert env["WGS_AUTH_SECRET_FILE"] == "/s" and env["WGS_TLS_KEY_FILE"] == "/k" and env["PATH"] == "/bin"
    assert "PGPASSWORD" in service_env("graph", shell) and "PGPASSWORD" not in service_env("dispatch", shell)
    sup = service_env("supervisor", shell)
    assert sup["OPENAI_API_KEY"] == "sk-1" and sup["MY_LLM"] == "k" and "WGS_TOKEN" not in sup


def test_the_table_says_what_the_model_says() -> None:
    """docs/security.md, pinned: a change to the table that breaks the model fails here."""
    def names(module: object, service: str) -> list[str]:
        return [m.name for m in module.DESCRIPTOR.services_by_name[service].methods]  # type: ignore[attr-defined]

    for m in names(chat_pb2, "ChatService"):
        assert auth.CALLS[f"/wgs.v1.ChatService/{m}"] == auth.CLIENTS, m
    assert set(names(supervisor_pb2, "SupervisorService")) == {"StopAgents", "ListReplicas"}
    assert auth.CALLS["/wgs.v1.SupervisorService/ListReplicas"] == auth.CLIENTS  # `wgs status`
    assert auth.CALLS["/wgs.v1.SupervisorService/StopAgents"] == auth.SUPERVISOR_ONLY  # `wgs down`: the owner
    graph = set(names(graph_pb2, "GraphService"))
    reads = {"GetTask", "ListTasks"}
    task_writes = {"CreateTask", "UpdateTask", "AppendTaskLog"}
    conversation = {"ListMessages", "WatchMessages"}
    reports = {"ReportAgentStatus", "PublishPartialMessage"}
    assert graph == reads | task_writes | conversation | reports | {"AppendMessage", "Reconcile"}, \
        "a new GraphService method: put it in the model first"
    for name in reads:  # clients get the read side of the graph...
        assert auth.CALLS[f"/wgs.v1.GraphService/{name}"] == auth.CLIENTS
    for name in task_writes:  # ...and write no task: the supervisor does, for the chat API
        assert auth.CALLS[f"/wgs.v1.GraphService/{name}"] == auth.SUPERVISOR_ONLY
    assert auth.CALLS["/wgs.v1.GraphService/Reconcile"] == auth.CLIENTS  # `wgs sweep`: proven-gone owners only
    for name in conversation:
        rule = auth.CALLS[f"/wgs.v1.GraphService/{name}"]
        assert rule.roles == {auth.CLIENT, auth.SUPERVISOR} and rule.agent is not None
        assert rule.agent.chat_field == "chat_id" and not rule.agent.run_field
    append = auth.CALLS["/wgs.v1.GraphService/AppendMessage"]  # users send with ChatService.SendMessage
    assert append.roles == {auth.SUPERVISOR} and append.agent == auth.OWN_CHAT_REPLIES
    for name in reports:  # the supervisor and the chat's own live run; never clients
        rule = auth.CALLS[f"/wgs.v1.GraphService/{name}"]
        assert rule.roles == {auth.SUPERVISOR} and rule.agent is not None
        assert (rule.agent.chat_field, rule.agent.run_field) == ("chat_id", "run_number")
    for m in names(runtime_service_pb2, "RuntimeService"):
        assert auth.CALLS[f"/wgs.v1.RuntimeService/{m}"] == auth.SUPERVISOR_ONLY, m
    assert not [m for m in auth.CALLS if m.startswith("/wgs.v1.GraphService/") and m.split("/")[-1] not in graph]
    assert auth.CALLS["/wgs.v1.DispatchService/PlanSpawn"] == auth.SUPERVISOR_ONLY
