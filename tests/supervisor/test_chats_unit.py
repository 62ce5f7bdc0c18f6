"""ChatManager pieces that need no network: validation, env building, redacted views."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.supervisor import chats, policy
from tests.harness import secret, secret_file
from wgs.common.auth import AGENT, Identity, verify_token
from wgs.common.errors import InvalidArgument
from wgs.v1 import chat_pb2, plan_pb2, runtime_pb2, task_pb2

SECRET = "sk-test-supervisor-secret-123456"


@pytest.fixture(autouse=True)
def stack_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """A supervisor always runs with the stack secret (it refuses to start without one)."""
    monkeypatch.setenv("WGS_AUTH_SECRET_FILE", str(secret_file()))


def _manager(tmp_path: Path) -> chats.ChatManager:
    s = chats.SupervisorSettings(state_dir=tmp_path, supervisor_id="sup-unit", lease_seconds=30,
                                 max_live_chats=10, stop_grace=1, max_log_bytes=1 << 20,
                                 graph_target="127.0.0.1:1", default_cwd=str(tmp_path),
                                 policy=policy.PolicyConfig())
    return chats.ChatManager(s, graph=None, dispatch=None)


def _plan() -> plan_pb2.SpawnPlan:
    return plan_pb2.SpawnPlan(chat_id=".chat-1", executor="native", argv=["wgs-agent", "native"], env=[
        plan_pb2.EnvVar(name="WGS_API_KEY", value_from_env="UNIT_TEST_KEY", secret=True),
        plan_pb2.EnvVar(name="WGS_PROVIDER", value="oai-compat"),
    ])


def test_agent_env_copies_secret_by_name_and_adds_wgs_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_TEST_KEY", SECRET)
    monkeypatch.setenv("WGS_ADDRESS_FILE", "/tmp/x")
    monkeypatch.setenv("WGS_TOKEN_FILE", "/tmp/the-users-token")
    env, secrets = _manager(tmp_path)._agent_env(".chat-1", 2, _plan(), {"traceparent": "00-ab-cd-01"})
    # The run's own token (its chat, its run number); nothing that leads to the stack secret.
    assert verify_token(secret(), env["WGS_TOKEN"]) == Identity(AGENT, chat_id=".chat-1", run=2)
    assert "WGS_AUTH_SECRET_FILE" not in env and "WGS_TOKEN_FILE" not in env
    assert env["WGS_API_KEY"] == SECRET and secrets == [SECRET]
    assert env["WGS_PROVIDER"] == "oai-compat" and env["WGS_CHAT_ID"] == ".chat-1"
    assert env["WGS_RUN_NUMBER"] == "2" and env["TRACEPARENT"] == "00-ab-cd-01"
    assert env["WGS_GRAPH_ADDR"] == "127.0.0.1:1" and "WGS_ADDRESS_FILE" not in env


def test_missing_secret_variable_is_a_spawn_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIT_TEST_KEY", raising=False)
    from services.supervisor.procs import SpawnError

    with pytest.raises(SpawnError, match="UNIT_TEST_KEY"):
        _manager(tmp_path)._agent_env(".chat-1", 1, _plan(), {})


def test_stderr_tail_shown_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_TEST_KEY", SECRET)
    log = tmp_path / "chats" / ".chat-1" / "run-1.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"using key {SECRET}\nfatal: 401\n")
    rt = runtime_pb2.ChatRuntime(state=runtime_pb2.RUNTIME_STATE_BACKOFF, plan=_plan(),
                                 current_run=runtime_pb2.Run(number=1, stderr_path=str(log)))
    chat = _manager(tmp_path).to_chat(task_pb2.Task(id=".chat-1", title="Chat: x"), rt)
    assert SECRET not in chat.stderr_tail and "[redacted]" in chat.stderr_tail and "fatal: 401" in chat.stderr_tail
    assert chat.name == "x"


def test_stderr_path_outside_state_dir_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path.parent / "outside.log"
    outside.write_text("private")
    rt = runtime_pb2.ChatRuntime(current_run=runtime_pb2.Run(number=1, stderr_path=str(outside)))
    chat = _manager(tmp_path).to_chat(task_pb2.Task(id=".chat-1", title="Chat 1"), rt)
    assert chat.stderr_tail == "" and chat.name == ""


@pytest.mark.parametrize("req, msg", [
    (chat_pb2.CreateChatRequest(executor="gpt"), "unknown executor"),
    (chat_pb2.CreateChatRequest(command=["a"], endpoint="http://x"), "command cannot be combined"),
    (chat_pb2.CreateChatRequest(endpoint="https://user:pw@host:1"), "credentials"),
    (chat_pb2.CreateChatRequest(working_dir="rel"), "absolute"),
    (chat_pb2.CreateChatRequest(working_dir="/nonexistent-dir-xyz"), "not an existing directory"),
    (chat_pb2.CreateChatRequest(name="n" * 201), "name is too long"),
])
def test_create_validation(req: chat_pb2.CreateChatRequest, msg: str) -> None:
    with pytest.raises(InvalidArgument, match=msg):
        chats.ChatManager.validate_create(req)


def test_executor_alias_normalized() -> None:
    assert chats.ChatManager.validate_create(chat_pb2.CreateChatRequest(executor="NEX")) == "native"
    assert chats.ChatManager.validate_create(chat_pb2.CreateChatRequest()) == ""


def test_default_supervisor_id_is_stable_and_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WGS_SUPERVISOR_ID", raising=False)
    a = chats.SupervisorSettings.from_env(tmp_path).supervisor_id
    assert a == chats.SupervisorSettings.from_env(tmp_path).supervisor_id
    assert a != chats.SupervisorSettings.from_env(tmp_path / "other").supervisor_id
    assert len(a) <= 80 and os.uname().nodename.split(".")[0] in a
    monkeypatch.setenv("WGS_SUPERVISOR_ID", "mine")
    assert chats.SupervisorSettings.from_env(tmp_path).supervisor_id == "mine"


def test_agent_sees_no_other_endpoints_key_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every endpoint's key variable named in the plan's unset_env stays out of the agent's env."""
    monkeypatch.setenv("UNIT_TEST_KEY", SECRET)
    monkeypatch.setenv("OTHER_ENDPOINT_KEY", "sk-other-endpoint-secret")
    plan = _plan()
    plan.unset_env.extend(["OTHER_ENDPOINT_KEY", "UNIT_TEST_KEY"])
    env, _ = _manager(tmp_path)._agent_env(".chat-1", 1, plan, {})
    assert "OTHER_ENDPOINT_KEY" not in env and "UNIT_TEST_KEY" not in env
    assert env["WGS_API_KEY"] == SECRET


def test_creating_span_is_rebuilt_from_the_stored_ids() -> None:
    rt = runtime_pb2.ChatRuntime(trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331")
    ctx = chats.creating_span(rt)
    assert ctx is not None and ctx.is_valid
    assert format(ctx.trace_id, "032x") == rt.trace_id and format(ctx.span_id, "016x") == rt.span_id
    assert chats.creating_span(runtime_pb2.ChatRuntime()) is None  # untraced chat: no link
    assert chats.creating_span(runtime_pb2.ChatRuntime(trace_id="zz", span_id="b7ad6b7169203331")) is None
