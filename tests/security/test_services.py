"""The services' side of the model, over real processes: private files, clean rejections, quiet
logs for cancelled calls, no token in logs or spans, least privilege for `wgs up`, recorded paths
checked, and authentication that cannot be switched off by accident."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from tests.cli.test_stack import cli_env, recorded, wgs
from tests.harness import REPO, authed_channel, base_env, kill_agents, start_service, token
from wgs.common import auth
from wgs.v1 import chat_pb2, chat_pb2_grpc, graph_pb2, graph_pb2_grpc, runtime_pb2


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_the_database_and_its_wal_are_private_and_wider_ones_are_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / "graph.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)  # an older stack's file
    graph = start_service("graph", state)
    try:
        with authed_channel(graph.address, auth.SUPERVISOR) as ch:  # a write: the WAL and SHM exist now
            graph_pb2_grpc.GraphServiceStub(ch).CreateTask(graph_pb2.CreateTaskRequest(title="t"), timeout=10)
        for path in (db, state / "graph.db-wal", state / "graph.db-shm"):
            assert path.exists() and mode(path) == 0o600, (path, oct(mode(path)))
    finally:
        graph.terminate()
    tightened = [r for r in records(graph.stderr()) if str(r["msg"]).startswith(f"tightened {db} from mode 644")]
    assert tightened, graph.stderr()


def test_unparseable_requests_are_invalid_arguments_with_one_warning_line(tmp_path: Path) -> None:
    graph = start_service("graph", tmp_path / "state")
    try:
        with authed_channel(graph.address, auth.SUPERVISOR) as ch:
            for _ in range(200):
                with pytest.raises(grpc.RpcError) as err:
                    ch.unary_unary("/wgs.v1.GraphService/CreateChatTask")(b"\xff\xff\xff\xff", timeout=5)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert err.value.details() == ("cannot parse the CreateChatTaskRequest: the request bytes are not "
                                               "a valid CreateChatTaskRequest message")
            stub = graph_pb2_grpc.GraphServiceStub(ch)
            chat = stub.CreateChatTask(graph_pb2.CreateChatTaskRequest(supervisor_id="s", lease_seconds=30),
                                       timeout=10).task.id
            bad = graph_pb2.RecordRunExitedRequest(chat_id=chat, supervisor_id="s", state=runtime_pb2.RUNTIME_STATE_BACKOFF,
                                                   run=runtime_pb2.Run(number=1, exit_code=1))
            bad.next_restart_at.seconds = 10**15
            with pytest.raises(grpc.RpcError) as err:
                stub.RecordRunExited(bad, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith("next_restart_at: seconds 1000000000000000 is out of range")
    finally:
        graph.terminate()
    log = graph.stderr()
    assert "Traceback" not in log
    warnings = [r for r in records(log) if str(r["msg"]).startswith("rejected an unparseable")]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING", warnings


def test_cancelled_and_timed_out_streams_log_no_errors_and_tokens_stay_out_of_logs_and_spans(tmp_path: Path) -> None:
    state = tmp_path / "state"
    traced = {"OTEL_SDK_DISABLED": "false"}
    graph = start_service("graph", state, traced)
    try:
        tok = token(auth.SUPERVISOR)
        with authed_channel(graph.address, auth.SUPERVISOR) as ch:
            stub = graph_pb2_grpc.GraphServiceStub(ch)
            chat = stub.CreateChatTask(graph_pb2.CreateChatTaskRequest(supervisor_id="s", lease_seconds=60),
                                       timeout=10).task.id
            for i in range(100):
                stub.AppendMessage(graph_pb2.AppendMessageRequest(chat_id=chat, role=1, content="m" * 20000,
                                                                  request_id=f"r-{i}"), timeout=10)
            for i in range(20):  # cancel while the server is sending; or let the deadline pass
                call = stub.WatchMessages(graph_pb2.WatchMessagesRequest(chat_id=chat), timeout=None if i % 2 else 0.2)
                try:
                    for _ in call:
                        if i % 2:
                            call.cancel()
                except grpc.RpcError as exc:
                    assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
            timer = threading.Timer(0.3, lambda: None)
            timer.start()
            timer.join()
    finally:
        graph.terminate()
    log = graph.stderr()
    errors = [r for r in records(log) if r["level"] in ("ERROR", "CRITICAL")]
    assert not errors, errors[:3]
    assert "Traceback" not in log and tok not in log
    spans = (state / "traces" / "graph.jsonl").read_text()
    assert chat in spans and tok not in spans  # spans were written, without the token
    assert mode(state / "traces" / "graph.jsonl") == 0o600 and mode(state / "traces") == 0o700


def test_without_a_secret_a_service_refuses_to_start_unless_auth_is_off(tmp_path: Path) -> None:
    env = base_env(tmp_path, {"WGS_GRAPH_LISTEN": "127.0.0.1:0"})
    del env["WGS_AUTH_SECRET_FILE"]
    done = subprocess.run([sys.executable, "-m", "wgs.cli.main", "serve", "graph"], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no stack secret" in done.stderr and "WGS_AUTH=off" in done.stderr
    assert "Traceback" not in done.stderr
    graph = start_service("graph", tmp_path / "open", {"WGS_AUTH": "off"})
    try:
        with grpc.insecure_channel(graph.address) as ch:  # no token at all
            graph_pb2_grpc.GraphServiceStub(ch).ListTasks(graph_pb2.ListTasksRequest(), timeout=5)
    finally:
        graph.terminate()
    assert any(r["level"] == "WARNING" and "authentication is OFF" in str(r["msg"]) for r in records(graph.stderr()))


def test_wgs_up_gives_api_keys_only_to_the_supervisor_and_a_private_secret(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = {"OPENAI_API_KEY": "sk-openai-test", "LAMBDA01_API_KEY": "sk-lambda-test", "WGS_TOKEN": "wgs1.x.y"}
    env = cli_env(state, keys)
    del env["WGS_AUTH_SECRET_FILE"]  # the stack's own secret, as a user gets it
    up = wgs(state, "up", "--detach", "--state-dir", str(state), env=env)
    assert up.returncode == 0, up.stderr
    try:
        services = recorded(state)["services"]
        for name, svc in services.items():
            environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{svc['pid']}/environ").read_bytes()
                           .split(b"\0") if b"=" in item)
            has = {k.decode() for k in environ if k.decode() in keys}
            assert has == ({"OPENAI_API_KEY", "LAMBDA01_API_KEY"} if name == "supervisor" else set()), (name, has)
        secret = state / "auth" / "secret"
        assert mode(secret) == 0o600 and mode(secret.parent) == 0o700
        made = wgs(state, "token", "create", "--role", "client", "--state-dir", str(state), env=env)
        assert made.returncode == 0, made.stderr
        client = made.stdout.strip()
        assert auth.verify_token(auth.read_secret(secret), client) == auth.Identity(auth.CLIENT)
        listed = wgs(state, "chat", "list", "--state-dir", str(state), env={**env, "WGS_TOKEN": client})
        assert listed.returncode == 0, listed.stderr
        shown = wgs(state, "env", env={**env, "WGS_TOKEN": client})
        assert client not in shown.stdout
    finally:
        down = wgs(state, "down", "--state-dir", str(state), env=env)
        assert down.returncode == 0, down.stderr


@pytest.fixture
def forged_chat(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A stack whose graph records a run with a stderr path outside the state dir (as a forged or
    corrupted record would), the file holding a marker."""
    state = tmp_path / "state"
    outside = tmp_path / "outside.log"
    outside.write_text("MARKER-OUTSIDE-THE-STATE-DIR\n")
    procs = [start_service("graph", state), start_service("dispatch", state)]
    procs.append(start_service("supervisor", state, {"WGS_GRAPH_ADDR": procs[0].address,
                                                      "WGS_DISPATCH_ADDR": procs[1].address,
                                                      "WGS_SUPERVISOR_ID": "sup-sec"}))
    with authed_channel(procs[0].address, auth.SUPERVISOR) as ch:
        stub = graph_pb2_grpc.GraphServiceStub(ch)
        chat = stub.CreateChatTask(graph_pb2.CreateChatTaskRequest(supervisor_id="sup-sec", lease_seconds=600),
                                   timeout=10).task.id
        stub.RecordRunStarted(graph_pb2.RecordRunStartedRequest(
            chat_id=chat, supervisor_id="sup-sec", run=runtime_pb2.Run(number=1, stderr_path=str(outside))),
            timeout=10)
        stub.RecordRunExited(graph_pb2.RecordRunExitedRequest(
            chat_id=chat, supervisor_id="sup-sec", state=runtime_pb2.RUNTIME_STATE_FAILED,
            run=runtime_pb2.Run(number=1, exit_code=1, stderr_path=str(outside))), timeout=10)
    try:
        yield state, procs, chat
    finally:
        for proc in reversed(procs):
            proc.terminate()
        kill_agents(state)


def test_wgs_chat_logs_opens_no_recorded_path_outside_the_state_dir(forged_chat) -> None:  # type: ignore[no-untyped-def]
    state, procs, chat = forged_chat
    env = base_env(state, {"WGS_SUPERVISOR_ADDR": procs[2].address})
    done = subprocess.run([sys.executable, "-m", "wgs.cli.main", "chat", "logs", chat, "--state-dir", str(state)],
                          env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "does not lie inside the state dir" in done.stderr and "not opening it" in done.stderr


def test_the_supervisor_reads_no_recorded_path_outside_the_state_dir(forged_chat) -> None:  # type: ignore[no-untyped-def]
    _state, procs, chat = forged_chat
    with authed_channel(procs[2].address) as ch:
        got = chat_pb2_grpc.ChatServiceStub(ch).GetChat(chat_pb2.GetChatRequest(chat_id=chat), timeout=10).chat
    assert "MARKER-OUTSIDE-THE-STATE-DIR" not in got.stderr_tail + got.runtime.current_run.stderr_tail


