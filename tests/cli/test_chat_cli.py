"""The chat commands against a real stack started with `wgs up --detach`: one readable line per error,
non-zero exits, and the agent's life visible through create/show/logs/stop."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_stack import cli_env, recorded, service_processes, wgs
from tests.harness import REPO, authed_channel
from wgs.cli.procs import is_alive


def test_unreachable_supervisor_is_one_line_naming_it(tmp_path: Path) -> None:
    env = cli_env(tmp_path, {"WGS_SUPERVISOR_ADDR": "127.0.0.1:1", "WGS_RPC_TIMEOUT_SECONDS": "2"})
    res = wgs(tmp_path, "chat", "list", env=env)
    assert res.returncode != 0
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("wgs: cannot reach the supervisor service at 127.0.0.1:1")
    assert "wgs up" in res.stderr


def test_bad_chat_id_is_refused_before_any_call(tmp_path: Path) -> None:
    res = wgs(tmp_path, "chat", "show", "nope", env=cli_env(tmp_path, {"WGS_SUPERVISOR_ADDR": "127.0.0.1:1"}))
    assert res.returncode == 2
    assert res.stderr == "wgs: invalid chat id 'nope': use .chat-N, chat-N or N (for example .chat-3)\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("stack") / "state"
    up = wgs(state, "up", "--detach", "--state-dir", str(state))
    assert up.returncode == 0, up.stderr
    record = recorded(state)
    try:
        yield state
    finally:
        wgs(state, "down", "--state-dir", str(state))
        for svc in record["services"].values():
            assert not is_alive(svc["pid"], svc["start_ticks"])
        assert service_processes(state) == []


def chat_cli(state: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    # --state-dir right after the subcommand: anything after a "--" belongs to the agent's argv.
    return wgs(state, "chat", args[0], "--state-dir", str(state), *args[1:], timeout=timeout)


def test_not_found_is_one_line_and_non_zero(stack: Path) -> None:
    res = chat_cli(stack, "show", "999")
    assert res.returncode == 1
    assert res.stderr.startswith("wgs: not found: ")
    assert ".chat-999" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_invalid_argument_is_one_line_and_non_zero(stack: Path) -> None:
    res = chat_cli(stack, "create", "--executor", "no-such-executor")
    assert res.returncode == 1
    assert res.stderr.startswith("wgs: invalid argument: ")
    assert "no-such-executor" in res.stderr
    assert res.stderr.count("\n") == 1


def test_command_chat_lifecycle_through_the_cli(stack: Path, tmp_path: Path) -> None:
    script = "echo agent-started >&2; exec sleep 300"
    res = chat_cli(stack, "create", "--name", "sleeper", "--settle", "0.5", "--json", "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "RUNNING" and doc["pid"] and doc["exit_code"] is None
    assert doc["plan"]["executor"] == "command" and doc["plan"]["argv"][:2] == ["sh", "-c"]
    chat_id = doc["id"]
    assert Path(doc["stderr_path"]).exists()

    shown = json.loads(chat_cli(stack, "show", chat_id.removeprefix(".chat-"), "--json").stdout)
    assert shown["id"] == chat_id and shown["pid"] == doc["pid"]

    listed = json.loads(chat_cli(stack, "list", "--json").stdout)
    assert chat_id in [c["id"] for c in listed]

    logs = chat_cli(stack, "logs", chat_id)
    assert logs.returncode == 0 and "agent-started" in logs.stdout

    stop = chat_cli(stack, "stop", chat_id)
    assert stop.returncode == 0, stop.stderr
    assert "STOPPED" in stop.stdout
    assert not is_alive(doc["pid"], None)


def test_an_agent_that_dies_at_once_fails_create_with_its_stderr(stack: Path) -> None:
    res = chat_cli(stack, "create", "--settle", "3", "--", "sh", "-c", "echo cannot-reach-endpoint >&2; exit 3")
    assert res.returncode == 1
    assert "cannot-reach-endpoint" in res.stderr
    assert "wgs chat show" in res.stderr


def test_create_settle_exits_0_when_a_restart_survives_a_failed_first_run(stack: Path, tmp_path: Path) -> None:
    marker = tmp_path / "second-run"
    script = f'if [ -e "{marker}" ]; then exec sleep 300; fi; touch "{marker}"; echo first run fails >&2; exit 1'
    res = chat_cli(stack, "create", "--settle", "5", "--json", "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr  # --settle watches the whole time: a restart may still recover
    doc = json.loads(res.stdout)
    try:
        assert doc["state"] == "RUNNING" and doc["run_number"] == 2 and doc["restart_count"] == 1
        assert doc["last_error"] == "" and is_alive(doc["pid"], None)  # healthy now; the failure is history
        [first] = doc["previous_runs"]
        assert first["exit_code"] == 1 and "first run fails" in first["stderr_tail"]
        assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"wgs: note: 1 earlier run(s) of {doc['id']} failed")
    finally:
        chat_cli(stack, "delete", doc["id"])


def test_send_wait_times_out_loudly_when_nobody_answers(stack: Path) -> None:
    created = chat_cli(stack, "create", "--settle", "0", "--json", "--", "sleep", "300")
    assert created.returncode == 0, created.stderr
    chat_id = json.loads(created.stdout)["id"]
    try:
        res = chat_cli(stack, "send", chat_id, "hello", "--wait", "1")
        assert res.returncode == 1
        assert res.stderr.startswith(f"wgs: no reply from {chat_id} within 1s")
        history = chat_cli(stack, "history", chat_id)
        assert "user: hello" in history.stdout
    finally:
        chat_cli(stack, "delete", chat_id)


def test_sweep_dry_run_keeps_live_chats(stack: Path) -> None:
    created = chat_cli(stack, "create", "--settle", "0", "--json", "--", "sleep", "300")
    chat_id = json.loads(created.stdout)["id"]
    try:
        res = wgs(stack, "sweep", "--dry-run", "--json", "--state-dir", str(stack))
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert chat_id not in [a["task_id"] for a in doc["reset"]]
        assert chat_id in [k["task_id"] for k in doc["kept"]]
    finally:
        chat_cli(stack, "delete", chat_id)




def test_send_wait_ends_at_once_when_the_chat_is_stopped(stack: Path) -> None:

    from wgs.v1 import chat_pb2, chat_pb2_grpc

    created = chat_cli(stack, "create", "--settle", "0", "--json", "--", "sleep", "300")
    chat_id = json.loads(created.stdout)["id"]
    address = recorded(stack)["services"]["supervisor"]["address"]
    waiting = subprocess.Popen(
        [sys.executable, "-m", "wgs.cli.main", "chat", "send", chat_id, "hello", "--wait", "60",
         "--state-dir", str(stack)],
        env=cli_env(stack), cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        with authed_channel(address) as ch:
            stream = chat_pb2_grpc.ChatServiceStub(ch).WatchChatMessages(
                chat_pb2.WatchChatMessagesRequest(chat_id=chat_id), timeout=30)
            first = next(iter(stream))  # the message is stored: the CLI is now waiting for a reply
            stream.cancel()
        assert first.message.content == "hello"
        assert chat_cli(stack, "stop", chat_id).returncode == 0
        _out, err = waiting.communicate(timeout=30)  # far less than --wait 60
        assert waiting.returncode == 1
        assert err.startswith(f"wgs: no reply from {chat_id}: its agent is STOPPED")
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        chat_cli(stack, "delete", chat_id)


def test_send_says_at_once_when_the_agent_cannot_be_started_for_the_message(stack: Path, tmp_path: Path) -> None:
    """A message to an idle (EXITED) chat starts its agent again; if that start fails for good, the
    message is kept but `wgs chat send` must say the agent could not be started — not "sent"."""
    from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2

    agent = tmp_path / "agent.sh"
    agent.write_text("#!/bin/sh\nexit 0\n")
    agent.chmod(0o755)
    created = chat_cli(stack, "create", "--settle", "0", "--json", "--", str(agent))
    assert created.returncode == 0, created.stderr
    chat_id = json.loads(created.stdout)["id"]
    try:
        address = recorded(stack)["services"]["supervisor"]["address"]
        with authed_channel(address) as ch:
            stream = chat_pb2_grpc.ChatServiceStub(ch).WatchChat(chat_pb2.WatchChatRequest(chat_id=chat_id), timeout=30)
            assert any(c.chat.runtime.state == runtime_pb2.RUNTIME_STATE_EXITED for c in stream)
        agent.unlink()  # the program is gone: the start for the message cannot work
        res = chat_cli(stack, "send", chat_id, "hello")
        assert res.returncode == 1, res.stdout + res.stderr
        assert res.stderr.count("\n") == 1 and res.stderr.startswith(
            f"wgs: message stored in {chat_id} (seq 1) but its agent could not be started: "), res.stderr
        assert "executable not found" in res.stderr and f"wgs chat restart {chat_id}" in res.stderr
        assert "user: hello" in chat_cli(stack, "history", chat_id).stdout
    finally:
        chat_cli(stack, "delete", chat_id)


def test_native_chat_conversation_through_send_and_attach(stack: Path) -> None:
    from tests.fakes.fake_openai import FakeOpenAI

    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        created = chat_cli(stack, "create", "--executor", "native", "--model", "qwen3-coder",
                           "--endpoint", fake.base_url, "--settle", "0.5", "--json")
        assert created.returncode == 0, created.stderr
        doc = json.loads(created.stdout)
        assert doc["plan"]["endpoint"]["url"] == fake.base_url and doc["plan"]["endpoint"]["source"]
        chat_id = doc["id"]
        try:
            reply = chat_cli(stack, "send", chat_id, "hello there", "--wait", "60")
            assert reply.returncode == 0, reply.stderr
            assert reply.stdout == "echo: hello there\n"

            attach = subprocess.run(
                [sys.executable, "-m", "wgs.cli.main", "chat", "attach", chat_id, "--wait", "60",
                 "--state-dir", str(stack)],
                env=cli_env(stack), cwd=str(REPO), input="second line\n", capture_output=True, text=True,
                timeout=90,
            )
            assert attach.returncode == 0, attach.stderr
            assert "echo: second line" in attach.stdout

            history = chat_cli(stack, "history", chat_id).stdout
            assert "user: hello there" in history and "assistant: echo: hello there" in history
        finally:
            chat_cli(stack, "delete", chat_id)


def test_incident_unreachable_endpoint_fails_create_with_the_reason(stack: Path) -> None:
    res = chat_cli(stack, "create", "--executor", "native", "--model", "qwen3-coder",
                   "--endpoint", "http://127.0.0.1:1", "--settle", "5", "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["plan"]["endpoint"]["url"] == "http://127.0.0.1:1"
    # The agent lives (a model server may be loading) and says what it waits for; create fails loudly.
    assert doc["state"] == "RUNNING" and doc["pid"]
    assert "connection refused" in doc["agent"]["waiting_for_endpoint"]["reason"]
    assert res.stderr.startswith(f"wgs: agent of {doc['id']} runs but is waiting for its endpoint since ")
    assert "connection refused" in res.stderr.splitlines()[0]
    chat_cli(stack, "delete", doc["id"])


def test_logs_follow_prints_until_the_run_ends(stack: Path) -> None:
    created = chat_cli(stack, "create", "--settle", "0", "--json", "--",
                       "sh", "-c", "echo first >&2; sleep 1.5; echo second >&2")
    assert created.returncode == 0, created.stderr
    chat_id = json.loads(created.stdout)["id"]
    try:
        follow = chat_cli(stack, "logs", chat_id, "--follow", timeout=60)
        assert follow.returncode == 0, follow.stderr
        assert follow.stdout == "first\nsecond\n"
        assert "ended; state EXITED" in follow.stderr
        shown = json.loads(chat_cli(stack, "show", chat_id, "--json").stdout)
        assert shown["state"] == "EXITED" and shown["exit_code"] == 0
    finally:
        chat_cli(stack, "delete", chat_id)
