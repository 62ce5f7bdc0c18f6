"""The services' side of the model, over real processes: private files, clean rejections, quiet
logs for cancelled calls, no token in logs or spans, least privilege for `wgs up`, recorded paths
checked, and authentication that cannot be switched off by accident."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests.cli.test_stack import cli_env, recorded, wgs
from tests.harness import REPO, ServiceProcess, authed_channel, base_env, kill_agents, start_service, token
from wgs.common import auth, procfs
from wgs.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    graph_pb2,
    graph_pb2_grpc,
    runtime_pb2,
    runtime_service_pb2,
    supervisor_pb2,
    supervisor_pb2_grpc,
    task_pb2,
)
from wgs.v1 import runtime_service_pb2_grpc as runtime_grpc


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
                    ch.unary_unary("/wgs.v1.RuntimeService/CreateChatTask")(b"\xff\xff\xff\xff", timeout=5)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert err.value.details() == ("cannot parse the CreateChatTaskRequest: the request bytes are not "
                                               "a valid CreateChatTaskRequest message")
            stub = runtime_grpc.RuntimeServiceStub(ch)
            chat = stub.CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(supervisor_id="s", lease_seconds=30),
                                       timeout=10).task.id
            stub.RecordRunStarted(runtime_service_pb2.RecordRunStartedRequest(
                chat_id=chat, supervisor_id="s", run=runtime_pb2.Run(number=1, pid=1)), timeout=10)
            good = runtime_service_pb2.RunExit(chat_id=chat, state=runtime_pb2.RUNTIME_STATE_BACKOFF,
                                               run=runtime_pb2.Run(number=1, exit_code=1))
            bad = runtime_service_pb2.RecordRunExitedRequest(supervisor_id="s", exits=[good, good])
            bad.exits[1].next_restart_at.seconds = 10**15
            with pytest.raises(grpc.RpcError) as err:
                stub.RecordRunExited(bad, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(
                "exits[1].next_restart_at: seconds 1000000000000000 is out of range")
            record = stub.GetChatRecord(runtime_service_pb2.GetChatRecordRequest(chat_id=chat), timeout=5).runtime
            assert record.state == runtime_pb2.RUNTIME_STATE_RUNNING  # nothing of the refused batch was written
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
            chat = runtime_grpc.RuntimeServiceStub(ch).CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(
                supervisor_id="s", lease_seconds=60), timeout=10).task.id
            for i in range(100):
                stub.AppendMessage(graph_pb2.AppendMessageRequest(chat_id=chat, role=task_pb2.MESSAGE_ROLE_USER, content="m" * 20000,
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
    procs: list[ServiceProcess] = []
    try:
        procs += [start_service("graph", state), start_service("dispatch", state)]
        procs.append(start_service("supervisor", state, {"WGS_GRAPH_ADDR": procs[0].address,
                                                          "WGS_DISPATCH_ADDR": procs[1].address,
                                                          "WGS_SUPERVISOR_ID": "sup-sec"}))
        with authed_channel(procs[0].address, auth.SUPERVISOR) as ch:
            stub = runtime_grpc.RuntimeServiceStub(ch)
            chat = stub.CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(
                supervisor_id="sup-sec", lease_seconds=600), timeout=10).task.id
            stub.RecordRunStarted(runtime_service_pb2.RecordRunStartedRequest(  # pid 1: never ours to signal
                chat_id=chat, supervisor_id="sup-sec", run=runtime_pb2.Run(number=1, pid=1, stderr_path=str(outside))),
                timeout=10)
            done = stub.RecordRunExited(runtime_service_pb2.RecordRunExitedRequest(supervisor_id="sup-sec", exits=[
                runtime_service_pb2.RunExit(chat_id=chat, state=runtime_pb2.RUNTIME_STATE_FAILED, run=runtime_pb2.Run(
                    number=1, exit_code=1, stderr_path=str(outside), stderr_tail="TAIL-KEPT-WITH-THE-RUN\n"))]),
                timeout=10)
            assert done.results[0].error_code == 0, done
        yield state, procs, chat
    finally:
        for proc in reversed(procs):
            proc.terminate()
        kill_agents(state)


def test_wgs_chat_logs_opens_no_recorded_path_outside_the_state_dir(forged_chat) -> None:  # type: ignore[no-untyped-def]
    """The run file is found from the chat id and run number in the state dir, never from the
    recorded path: a forged one shows nothing of the file it names, only the tail kept with the run."""
    state, procs, chat = forged_chat
    env = base_env(state, {"WGS_SUPERVISOR_ADDR": procs[2].address})
    done = subprocess.run([sys.executable, "-m", "wgs.cli.main", "chat", "logs", chat, "--state-dir", str(state)],
                          env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "MARKER-OUTSIDE-THE-STATE-DIR" not in done.stdout + done.stderr
    assert done.stdout == "TAIL-KEPT-WITH-THE-RUN\n"
    assert done.stderr == "wgs: the file of run #1 is gone; showing the tail kept with the run\n"


def test_the_supervisor_reads_no_recorded_path_outside_the_state_dir(forged_chat) -> None:  # type: ignore[no-untyped-def]
    _state, procs, chat = forged_chat
    with authed_channel(procs[2].address) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        got = stub.GetChat(chat_pb2.GetChatRequest(chat_id=chat), timeout=10).chat
        listed = stub.ListChats(chat_pb2.ListChatsRequest(), timeout=10).chats
    assert got.runtime.current_run.stderr_tail == "TAIL-KEPT-WITH-THE-RUN\n"  # the record is shown as recorded
    assert [c.id for c in listed] == [chat]
    for view in (got, *listed):
        assert "MARKER-OUTSIDE-THE-STATE-DIR" not in str(view)


@pytest.fixture
def fast_leases(tmp_path: Path):  # type: ignore[no-untyped-def]
    """graph, dispatch and a supervisor renewing its leases every second (WGS_LEASE_SECONDS=3)."""
    state = tmp_path / "state"
    procs: list[ServiceProcess] = []
    try:
        procs += [start_service("graph", state), start_service("dispatch", state)]
        procs.append(start_service("supervisor", state, {"WGS_GRAPH_ADDR": procs[0].address,
                                                          "WGS_DISPATCH_ADDR": procs[1].address,
                                                          "WGS_SUPERVISOR_ID": "sup-lease", "WGS_LEASE_SECONDS": "3"}))
        yield procs
    finally:
        for proc in reversed(procs):
            proc.terminate()
        kill_agents(state)


def _renewals(graph: ServiceProcess, supervisor_id: str, count: int) -> None:
    """Wait until the supervisor has renewed its leases `count` more times (its heartbeat advances)."""
    with authed_channel(graph.address, auth.SUPERVISOR) as ch:
        stub = runtime_grpc.RuntimeServiceStub(ch)

        def heartbeat() -> int:
            sups = stub.ListSupervisors(runtime_service_pb2.ListSupervisorsRequest(include_expired=True),
                                        timeout=5).supervisors
            return next(s.heartbeat_at.ToNanoseconds() for s in sups if s.supervisor_id == supervisor_id)

        seen = [heartbeat()]
        deadline = time.monotonic() + 30
        while len(set(seen)) <= count:
            assert time.monotonic() < deadline, f"no {count} lease renewals of {supervisor_id} within 30 s"
            time.sleep(0.1)
            seen.append(heartbeat())


def test_commands_for_chats_a_supervisor_does_not_own_are_not_reported_as_takeovers(fast_leases) -> None:  # type: ignore[no-untyped-def]
    """A client naming chats that do not exist, or that another live supervisor owns, gets NOT_FOUND
    or FAILED_PRECONDITION, and the supervisor does not then count them among its own: it would log
    each as "taken over by another supervisor" at its next lease renewal (an ERROR that explains no
    death), and enough of them make its RenewLeases too large to be accepted."""
    graph, _, sup = fast_leases
    with authed_channel(graph.address, auth.SUPERVISOR) as ch:
        foreign = runtime_grpc.RuntimeServiceStub(ch).CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(
            supervisor_id="another-live-sup", lease_seconds=600), timeout=10).task.id
    with authed_channel(sup.address) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        for chat, want in ((".chat-41", grpc.StatusCode.NOT_FOUND), (".chat-42", grpc.StatusCode.NOT_FOUND),
                           (foreign, grpc.StatusCode.FAILED_PRECONDITION)):
            for verb, request in (("SendMessage", chat_pb2.SendMessageRequest(chat_id=chat, text="hi")),
                                  ("StopChat", chat_pb2.StopChatRequest(chat_id=chat)),
                                  ("RestartChat", chat_pb2.RestartChatRequest(chat_id=chat))):
                with pytest.raises(grpc.RpcError) as err:
                    getattr(stub, verb)(request, timeout=10)
                assert err.value.code() == want, (verb, chat, err.value)
    _renewals(graph, "sup-lease", 2)
    log = sup.stderr()
    assert "taken over by another supervisor" not in log, log
    assert not [r for r in records(log) if r["level"] in ("ERROR", "CRITICAL")]


def test_watchers_leaving_mid_snapshot_leave_no_error_in_the_supervisor_log(fast_leases) -> None:  # type: ignore[no-untyped-def]
    """WatchChat ("" = every chat, or one chat) cancelled after its first answer, while nothing has
    changed since: the supervisor closes the watch of the graph's records without an ERROR."""
    _, _, sup = fast_leases
    with authed_channel(sup.address) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        code = "import time; time.sleep(600)"
        chats = [stub.CreateChat(chat_pb2.CreateChatRequest(command=[sys.executable, "-c", code]), timeout=20).chat.id
                 for _ in range(2)]
        try:
            for i in range(20):
                call = stub.WatchChat(chat_pb2.WatchChatRequest(chat_id="" if i % 2 else chats[0]), timeout=30)
                assert next(iter(call)).chat.id == chats[0]
                call.cancel()
        finally:
            for chat in chats:
                stub.StopChat(chat_pb2.StopChatRequest(chat_id=chat), timeout=20)
    with authed_channel(sup.address) as ch:  # the supervisor is still answering (and has finished closing)
        chat_pb2_grpc.ChatServiceStub(ch).ListChats(chat_pb2.ListChatsRequest(), timeout=10)
    log = sup.stderr()
    assert "Traceback" not in log, log
    assert not [r for r in records(log) if r["level"] in ("ERROR", "CRITICAL")]


def test_a_forged_record_naming_an_unrelated_process_never_gets_it_signalled(fast_leases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """issue 12's attack, by a caller holding the supervisor role (a compromised or buggy replica, a
    corrupted database): a run record naming a process no supervisor started — its pid and its true
    start ticks as agent and as monitor, on this host — owned by a supervisor whose lease then
    expires. The live supervisor takes the chat over, is asked to interrupt it, stop it and stop all
    its agents: the process is never signalled (its identity as our run monitor is not proven)."""
    graph, _, sup = fast_leases
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        ticks = procfs.start_ticks(victim.pid)
        assert ticks is not None
        with authed_channel(graph.address, auth.SUPERVISOR) as ch:
            runtime = runtime_grpc.RuntimeServiceStub(ch)
            chat = runtime.CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(
                supervisor_id="gone-sup", lease_seconds=1), timeout=10).task.id
            runtime.RecordRunStarted(runtime_service_pb2.RecordRunStartedRequest(
                chat_id=chat, supervisor_id="gone-sup", run=runtime_pb2.Run(
                    number=1, pid=victim.pid, process_start_ticks=ticks, monitor_pid=victim.pid,
                    monitor_start_ticks=ticks, hostname=socket.gethostname(), argv=["agent"])), timeout=10)
            deadline = time.monotonic() + 30
            while runtime.GetChatRecord(runtime_service_pb2.GetChatRecordRequest(chat_id=chat),
                                        timeout=5).runtime.supervisor_id != "sup-lease":
                assert time.monotonic() < deadline, f"sup-lease did not take {chat} over:\n{sup.stderr()}"
                time.sleep(0.1)
        with authed_channel(sup.address) as ch:
            chats = chat_pb2_grpc.ChatServiceStub(ch)
            chats.InterruptChat(chat_pb2.InterruptChatRequest(chat_id=chat), timeout=20)
            chats.StopChat(chat_pb2.StopChatRequest(chat_id=chat), timeout=20)
        with authed_channel(sup.address, auth.SUPERVISOR) as ch:  # StopAgents: the stack owner's (`wgs down`)
            supervisor_pb2_grpc.SupervisorServiceStub(ch).StopAgents(supervisor_pb2.StopAgentsRequest(), timeout=30)
        assert victim.poll() is None, f"the unrelated process was signalled (exit {victim.returncode}):\n{sup.stderr()}"
    finally:
        victim.kill()
        victim.wait()
