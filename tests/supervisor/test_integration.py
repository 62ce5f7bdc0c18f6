"""Supervisor integration: real graph, dispatch and supervisor processes; real agent processes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.supervisor import procs
from tests.supervisor.conftest import Stack, pid_alive, wait_chat, wait_gone, wait_output
from wgs.common import procfs
from wgs.v1 import chat_pb2, graph_pb2, plan_pb2, runtime_pb2, task_pb2

PY = sys.executable
RS = runtime_pb2
SLEEPER = [PY, "-c", "import time\nprint('agent up', flush=True)\ntime.sleep(600)"]


def create(stack: Stack, command: list[str], **kw: str) -> chat_pb2.CreateChatResponse:
    return stack.chat().CreateChat(chat_pb2.CreateChatRequest(command=command, **kw), timeout=20)


def test_create_chat_returns_running_pid_and_stderr_path(stack: Stack) -> None:
    resp = create(stack, SLEEPER, name="hello")
    chat = resp.chat
    assert resp.created and chat.id.startswith(".chat-")
    rt = chat.runtime
    assert rt.state == RS.RUNTIME_STATE_RUNNING, rt.last_error
    run = rt.current_run
    assert run.pid > 0 and pid_alive(run.pid) and run.monitor_pid > 0
    assert Path(run.stderr_path).exists()
    assert Path(run.stderr_path).is_relative_to(stack.state_dir / "chats" / chat.id)
    assert list(run.argv)[1:] == SLEEPER[1:]
    assert chat.name == "hello" and chat.status == task_pb2.TASK_STATUS_IN_PROGRESS
    assert "chat-loop" in chat.tags
    got = stack.chat().GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=10).chat
    assert got.runtime.current_run.pid == run.pid


def test_agent_exit_3_recorded_with_stderr(stack: Stack) -> None:
    code = "import sys, time\ntime.sleep(1.2)\nsys.stderr.write('fatal: cannot reach endpoint\\n')\nsys.exit(3)"
    chat = create(stack, [PY, "-c", code]).chat
    stub = stack.chat()
    exited, _ = wait_chat(stub, chat.id, lambda c: c.runtime.state == RS.RUNTIME_STATE_BACKOFF)
    runs = [exited.runtime.current_run, *exited.runtime.previous_runs]
    first = next(r for r in runs if r.number == 1)
    assert first.exit_code == 3
    assert "fatal: cannot reach endpoint" in first.stderr_tail
    # The exit was a failure after a healthy start (not a failed start): BACKOFF, saying so.
    assert exited.runtime.state == RS.RUNTIME_STATE_BACKOFF
    assert "agent exited with code 3" in exited.runtime.last_error and "failed start" not in exited.runtime.last_error


def test_spawn_failure_reported_in_response_and_chat_persists(stack: Stack, tmp_path: Path) -> None:
    resp = create(stack, ["no-such-agent-binary-xyz", "--flag"])
    chat = resp.chat
    assert resp.created
    rt = chat.runtime
    # Retrying cannot find a missing executable: FAILED at once, the reason and the fix named.
    assert rt.state == RS.RUNTIME_STATE_FAILED
    assert "executable not found" in rt.last_error and "no-such-agent-binary-xyz" in rt.last_error
    assert "restarting cannot fix this" in rt.last_error and "wgs chat restart" in rt.last_error
    assert "install the program or fix the command's path" in rt.last_error
    assert rt.current_run.pid == 0 and "executable not found" in rt.current_run.error
    assert rt.current_run.end == RS.RUN_END_SPAWN_FAILED and not rt.HasField("next_restart_at")
    got = stack.chat().GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=10).chat
    assert got.id == chat.id and got.runtime.state == RS.RUNTIME_STATE_FAILED
    with pytest.raises(grpc.RpcError) as err:
        stack.chat().SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hi"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "RestartChat" in (err.value.details() or "")
    # A file that is not executable: FAILED at once too, with its own fix.
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\nexec sleep 600\n")
    script.chmod(0o644)
    rt = create(stack, [str(script)]).chat.runtime
    assert rt.state == RS.RUNTIME_STATE_FAILED and rt.restart_count == 0
    assert "not executable" in rt.last_error and "make the program executable (chmod +x)" in rt.last_error


def test_bad_working_dir_is_invalid_argument_and_writes_nothing(stack: Stack, tmp_path: Path) -> None:
    stub = stack.chat()
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateChat(chat_pb2.CreateChatRequest(command=SLEEPER, working_dir=str(tmp_path / "missing")),
                        timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "working_dir" in (err.value.details() or "")
    assert list(stub.ListChats(chat_pb2.ListChatsRequest(include_ended=True), timeout=10).chats) == []


def test_crash_loop_reaches_failed_with_growing_delays(stack: Stack) -> None:
    code = "import sys\nsys.stderr.write('crash\\n')\nsys.exit(1)"
    chat = create(stack, [PY, "-c", code]).chat
    final, seen = wait_chat(stack.chat(), chat.id, lambda c: c.runtime.state == RS.RUNTIME_STATE_FAILED)
    # 3 failures allowed in the window: the 4th gives up → exactly 4 runs.
    numbers = {final.runtime.current_run.number, *(r.number for r in final.runtime.previous_runs)}
    assert max(numbers) == 4
    assert final.runtime.current_run.exit_code == 1
    assert "failed start" in final.runtime.last_error
    delays: list[float] = []
    for c in seen:
        if c.runtime.state == RS.RUNTIME_STATE_BACKOFF and c.runtime.HasField("next_restart_at"):
            ex = c.runtime.current_run.exited_at.ToNanoseconds()
            d = (c.runtime.next_restart_at.ToNanoseconds() - ex) / 1e9
            if not delays or abs(delays[-1] - d) > 1e-3:
                delays.append(round(d, 1))
    assert delays == sorted(delays) and len(delays) >= 2 and delays[0] < delays[-1], delays
    # RestartChat clears the failure history and spawns again.
    again = stack.chat().RestartChat(chat_pb2.RestartChatRequest(chat_id=chat.id), timeout=20).chat
    assert again.runtime.restart_count == 0
    assert again.runtime.current_run.number == 5


def test_idle_exit_then_lazy_respawn_on_message(stack: Stack, tmp_path: Path) -> None:
    # Each run exits 0 (idle) when the test creates its flag file, and not before.
    idle = [PY, "-c", "import os, time\n"
                      f"flag = os.path.join({str(tmp_path)!r}, 'exit-' + os.environ['WGS_RUN_NUMBER'])\n"
                      "while not os.path.exists(flag): time.sleep(0.02)\n"]
    chat = create(stack, idle).chat
    stub = stack.chat()
    (tmp_path / "exit-1").touch()
    exited, _ = wait_chat(stub, chat.id, lambda c: c.runtime.state == RS.RUNTIME_STATE_EXITED)
    assert exited.runtime.current_run.exit_code == 0 and exited.runtime.last_error == ""
    resp = stub.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hello", request_id="m1"),
                            timeout=20)
    assert resp.respawned and resp.message.seq >= 1 and resp.message.request_id == "m1"
    assert resp.runtime.state == RS.RUNTIME_STATE_RUNNING and resp.runtime.current_run.number == 2
    # A message to the running agent does not respawn it (run 2 runs until its flag exists).
    again = stub.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="more"), timeout=20)
    assert not again.respawned and again.runtime.current_run.number == 2
    assert again.runtime.state == RS.RUNTIME_STATE_RUNNING
    (tmp_path / "exit-2").touch()
    done, _ = wait_chat(stub, chat.id, lambda c: c.runtime.state == RS.RUNTIME_STATE_EXITED)
    assert done.runtime.current_run.number == 2 and done.runtime.current_run.exit_code == 0


def _group_left(pgid: int) -> list[int]:
    import os

    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                st = Path(f"/proc/{e}/stat").read_text()
            except OSError:
                continue
            rest = st[st.rfind(")") + 2:].split()
            if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
                out.append(int(e))
    return out


GRANDPARENT = [PY, "-c", (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print('up', flush=True)\ntime.sleep(600)")]


@pytest.mark.parametrize("verb", ["stop", "delete", "archive"])
def test_stop_delete_archive_leave_no_process(stack: Stack, verb: str) -> None:
    chat = create(stack, GRANDPARENT).chat
    run = chat.runtime.current_run
    stub = stack.chat()
    wait_output(run.stderr_path, "up")
    assert len(_group_left(run.monitor_pid)) == 3  # monitor, agent, grandchild
    if verb == "stop":
        after = stub.StopChat(chat_pb2.StopChatRequest(chat_id=chat.id), timeout=30).chat
        assert after.status == task_pb2.TASK_STATUS_OPEN
    elif verb == "delete":
        after = stub.DeleteChat(chat_pb2.DeleteChatRequest(chat_id=chat.id), timeout=30).chat
        assert after.status == task_pb2.TASK_STATUS_ABANDONED
    else:
        after = stub.ArchiveChat(chat_pb2.ArchiveChatRequest(chat_id=chat.id), timeout=30).chat
        assert after.status == task_pb2.TASK_STATUS_DONE and "archived" in after.tags
    assert after.runtime.state == RS.RUNTIME_STATE_STOPPED
    assert _group_left(run.monitor_pid) == []
    assert not pid_alive(run.pid)
    assert after.runtime.current_run.signal == 9  # the agent ignored SIGTERM
    if verb != "stop":
        with pytest.raises(grpc.RpcError) as err:
            stub.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hi"), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    else:  # a stopped chat starts again on the next message
        resp = stub.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hi"), timeout=20)
        assert resp.respawned and resp.runtime.state == RS.RUNTIME_STATE_RUNNING


def test_supervisor_kill9_adopts_and_records_exit(stack: Stack, tmp_path: Path) -> None:
    flag = tmp_path / "exit-now"
    code = (f"import os, sys, time\nprint('up', flush=True)\n"
            f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"
            "sys.stderr.write('leaving with 5\\n')\nsys.exit(5)")
    chat = create(stack, [PY, "-c", code]).chat
    run = chat.runtime.current_run
    stack.restart_supervisor(kill9=True)
    assert pid_alive(run.pid)  # the agent outlived the supervisor
    stub = stack.chat()
    got = stub.GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=10).chat
    assert got.runtime.state == RS.RUNTIME_STATE_RUNNING and got.runtime.current_run.pid == run.pid
    listed = stub.ListChats(chat_pb2.ListChatsRequest(), timeout=10).chats
    assert [c.id for c in listed] == [chat.id]
    flag.write_text("x")
    done, _ = wait_chat(stub, chat.id, lambda c: c.runtime.current_run.number >= 1
                        and any(r.number == 1 and r.HasField("exit_code")
                                for r in [c.runtime.current_run, *c.runtime.previous_runs]))
    first = next(r for r in [done.runtime.current_run, *done.runtime.previous_runs] if r.number == 1)
    assert first.exit_code == 5 and "leaving with 5" in first.stderr_tail


def test_exit_while_supervisor_down_is_explained(stack: Stack, tmp_path: Path) -> None:
    flag = tmp_path / "exit-now"
    code = (f"import os, sys, time\n"
            f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)\nsys.exit(4)")
    chat = create(stack, [PY, "-c", code]).chat
    run = chat.runtime.current_run
    stack.supervisor.kill9()
    flag.write_text("x")
    assert wait_gone(run.monitor_pid)
    stack.supervisor = __import__("tests.harness", fromlist=["x"]).start_service(
        "supervisor", stack.state_dir, stack.sup_env)
    got = stack.chat().GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=10).chat
    first = next(r for r in [got.runtime.current_run, *got.runtime.previous_runs] if r.number == 1)
    assert first.exit_code == 4


def _marked(state_dir: Path, chat_id: str) -> dict[int, int]:
    """Live processes carrying a run marker (WGS_RUN_ID) of the chat: pid -> run number."""
    markers = {procs.run_marker(state_dir, chat_id, n).encode(): n for n in range(1, 10)}
    found: dict[int, int] = {}
    for pid in procfs.pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in env:
            key, _, value = entry.partition(b"=")
            if key == procs.RUN_ID_VAR.encode() and value in markers and pid_alive(pid):
                found[pid] = markers[value]
    return found


def test_killed_run_monitor_its_agent_is_ended_before_the_restart(stack: Stack) -> None:
    """kill -9 of a run's monitor while the supervisor runs: the agent (and the child it forked) is
    proven and ended before the end is recorded and before the restart; one agent afterwards."""
    forking = [PY, "-c", "import subprocess, time\nsubprocess.Popen(['sleep', '600'])\n"
                         "print('agent up', flush=True)\ntime.sleep(600)"]
    chat = create(stack, forking).chat
    run = chat.runtime.current_run
    wait_output(run.stderr_path, "agent up")  # the agent and its child run
    assert sorted(_marked(stack.state_dir, chat.id).values()) == [1, 1]
    os.kill(run.monitor_pid, signal.SIGKILL)  # the test's own run monitor (pid from the record)
    stub = stack.chat()
    done, _ = wait_chat(stub, chat.id, lambda c: c.runtime.state == RS.RUNTIME_STATE_RUNNING
                        and c.runtime.current_run.number == 2)
    first = next(r for r in done.runtime.previous_runs if r.number == 1)
    assert first.end == RS.RUN_END_UNKNOWN
    assert first.error.startswith("run monitor died (SIGKILL) without an exit record; ")
    assert "agent of run 1 (" in first.error and f") pid {run.pid} ended" in first.error
    assert "descendant of run 1 (sleep) pid " in first.error and first.error.endswith(" before restart")
    assert first.leftovers_ended == 1  # the child it forked
    assert done.runtime.restart_count == 0  # not the agent's fault
    assert not procfs.is_alive(run.pid, run.process_start_ticks)
    wait_output(done.runtime.current_run.stderr_path, "agent up")
    marked = _marked(stack.state_dir, chat.id)
    assert set(marked.values()) == {2} and len(marked) == 2  # run 2's agent and its child, nothing of run 1
    assert done.runtime.current_run.pid in marked


def test_concurrent_create_and_idempotent_request_id(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stub = stack.chat()
    with ThreadPoolExecutor(8) as pool:
        resps = list(pool.map(lambda i: stub.CreateChat(chat_pb2.CreateChatRequest(
            command=SLEEPER, request_id=f"req-{i % 4}"), timeout=30), range(8)))
    ids = {r.chat.id for r in resps}
    assert len(ids) == 4
    assert sum(r.created for r in resps) == 4
    pids = {r.chat.runtime.current_run.pid for r in resps}
    assert len(pids) == 4 and all(pid_alive(p) for p in pids)
    listed = stub.ListChats(chat_pb2.ListChatsRequest(), timeout=10).chats
    assert len(listed) == 4
    again = stub.CreateChat(chat_pb2.CreateChatRequest(command=SLEEPER, request_id="req-0"), timeout=10)
    assert not again.created and again.chat.id in ids


def test_bad_input_on_every_rpc(stack: Stack) -> None:
    stub = stack.chat()
    bad = "../etc"

    def code(fn, req) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
        try:
            r = fn(req, timeout=10)
            if hasattr(r, "__iter__") and not hasattr(r, "ListFields"):
                next(iter(r))
        except grpc.RpcError as exc:
            assert "Traceback" not in (exc.details() or "")
            return exc.code()
        return grpc.StatusCode.OK

    inv = grpc.StatusCode.INVALID_ARGUMENT
    assert code(stub.CreateChat, chat_pb2.CreateChatRequest(executor="bogus")) == inv
    assert code(stub.CreateChat, chat_pb2.CreateChatRequest(command=["x"], model="m")) == inv
    assert code(stub.CreateChat, chat_pb2.CreateChatRequest(name="x" * 300)) == inv
    assert code(stub.CreateChat, chat_pb2.CreateChatRequest(request_id="bad id!")) == inv
    assert code(stub.CreateChat, chat_pb2.CreateChatRequest(command=[""])) == inv
    assert code(stub.CreateChat, chat_pb2.CreateChatRequest(working_dir="relative/dir", command=["x"])) == inv
    assert code(stub.GetChat, chat_pb2.GetChatRequest(chat_id=bad)) == inv
    assert code(stub.GetChat, chat_pb2.GetChatRequest(chat_id="")) == inv
    assert code(stub.GetChat, chat_pb2.GetChatRequest(chat_id=".chat-999")) == grpc.StatusCode.NOT_FOUND
    assert code(stub.ListChats, chat_pb2.ListChatsRequest(page_size=-1)) == inv
    assert code(stub.SendMessage, chat_pb2.SendMessageRequest(chat_id=bad, text="x")) == inv
    assert code(stub.SendMessage, chat_pb2.SendMessageRequest(chat_id=".chat-1", text="")) == inv
    assert code(stub.SendMessage, chat_pb2.SendMessageRequest(chat_id=".chat-999", text="x")) == \
        grpc.StatusCode.NOT_FOUND
    assert code(stub.ListChatMessages, chat_pb2.ListChatMessagesRequest(chat_id=bad)) == inv
    assert code(stub.ListChatMessages, chat_pb2.ListChatMessagesRequest(chat_id=".chat-1", page_size=5000)) == inv
    assert code(stub.StreamChatLog, chat_pb2.StreamChatLogRequest(chat_id=bad)) == inv
    assert code(stub.WatchChatMessages, chat_pb2.WatchChatMessagesRequest(chat_id=bad)) == inv
    assert code(stub.StopChat, chat_pb2.StopChatRequest(chat_id=bad)) == inv
    assert code(stub.StopChat, chat_pb2.StopChatRequest(chat_id=".chat-999")) == grpc.StatusCode.NOT_FOUND
    assert code(stub.DeleteChat, chat_pb2.DeleteChatRequest(chat_id=bad)) == inv
    assert code(stub.ArchiveChat, chat_pb2.ArchiveChatRequest(chat_id=bad)) == inv
    assert code(stub.InterruptChat, chat_pb2.InterruptChatRequest(chat_id=bad)) == inv
    assert code(stub.RestartChat, chat_pb2.RestartChatRequest(chat_id=bad)) == inv
    assert code(stub.WatchChat, chat_pb2.WatchChatRequest(chat_id=bad)) == inv
    # Nothing was written by any of these.
    assert list(stub.ListChats(chat_pb2.ListChatsRequest(include_ended=True), timeout=10).chats) == []


def _field_violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations in a status's details (grpc examples/python/errors)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


def test_dispatchs_field_violation_reaches_the_client_through_the_supervisor(stack: Stack) -> None:
    """dispatch refuses the generation setting; the supervisor passes on its status, words and field."""
    stub = stack.chat()
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateChat(chat_pb2.CreateChatRequest(executor="native", model="m", endpoint="local",
                                                   generation=plan_pb2.GenerationOverrides(temperature=9)),
                        timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("generation.temperature ")
    violations = _field_violations(err.value)
    assert [f for f, _ in violations] == ["generation.temperature"] and "0 to 2" in violations[0][1]
    assert list(stub.ListChats(chat_pb2.ListChatsRequest(include_ended=True), timeout=10).chats) == []


def test_list_chat_messages_pages_through_the_supervisor(stack: Stack) -> None:
    chat = create(stack, SLEEPER).chat
    stub = stack.chat()
    for i in range(5):
        stub.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text=f"m{i}"), timeout=10)

    def pages(**kw: int) -> list[list[str]]:
        out: list[list[str]] = []
        token = ""
        while True:
            page = stub.ListChatMessages(chat_pb2.ListChatMessagesRequest(chat_id=chat.id, page_size=2,
                                                                          page_token=token, **kw), timeout=10)
            out.append([m.content for m in page.messages])
            token = page.next_page_token
            if not token:
                return out

    assert pages() == [["m0", "m1"], ["m2", "m3"], ["m4"]]
    assert pages(after_seq=2) == [["m2", "m3"], ["m4"]]
    with pytest.raises(grpc.RpcError) as err:
        stub.ListChatMessages(chat_pb2.ListChatMessagesRequest(chat_id=chat.id, page_token="!!"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in _field_violations(err.value)] == ["page_token"]


def test_interrupt_is_truthful(stack: Stack) -> None:
    code = ("import time\nprint('ready', flush=True)\ntry:\n    time.sleep(600)\n"
            "except KeyboardInterrupt:\n    raise SystemExit(0)")
    chat = create(stack, [PY, "-c", code]).chat
    stub = stack.chat()
    wait_output(chat.runtime.current_run.stderr_path, "ready")
    r = stub.InterruptChat(chat_pb2.InterruptChatRequest(chat_id=chat.id), timeout=10)
    assert r.delivered and r.pid == chat.runtime.current_run.pid
    wait_chat(stub, chat.id, lambda c: c.runtime.state == RS.RUNTIME_STATE_EXITED)
    r = stub.InterruptChat(chat_pb2.InterruptChatRequest(chat_id=chat.id), timeout=10)
    assert not r.delivered and r.pid == 0 and "EXITED" in r.detail


def test_incident_replay_native_endpoint(stack: Stack) -> None:
    """.chat-32: qwen3-coder, native, inline endpoint → planned with source request, spawned at once."""
    url = "https://lambda01.example:30000"
    resp = stack.chat().CreateChat(chat_pb2.CreateChatRequest(
        model="qwen3-coder", executor="native", endpoint=url), timeout=20)
    chat = resp.chat
    rt = chat.runtime
    assert rt.plan.executor == "native" and rt.plan.model == "qwen3-coder"
    assert rt.plan.endpoint.url.startswith(url) and rt.plan.endpoint.source == plan_pb2.CHOICE_SOURCE_REQUEST
    argv = list(rt.current_run.argv)
    assert argv[0].endswith("wgs-agent") and "--endpoint" in argv and argv[argv.index("--endpoint") + 1] == \
        rt.plan.endpoint.url
    # Spawned at once, without any message (the agent then finds the endpoint unreachable).
    assert rt.current_run.number == 1 and rt.current_run.started_at.seconds > 0
    assert rt.state == RS.RUNTIME_STATE_RUNNING and rt.current_run.pid > 0 and not rt.current_run.error
    assert Path(rt.current_run.stderr_path).exists()
    assert chat.trace_id == rt.trace_id
    # The sweep leaves it alone (the supervisor's lease is valid).
    rec = stack.graph_stub().Reconcile(graph_pb2.ReconcileRequest(dry_run=False), timeout=10)
    assert chat.id not in [a.task_id for a in rec.actions]
    got = stack.chat().GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=10).chat
    assert got.status == task_pb2.TASK_STATUS_IN_PROGRESS


def test_a_plan_refused_at_creation_writes_nothing_and_says_why_in_dispatchs_words(stack: Stack) -> None:
    stub = stack.chat()
    for _ in range(2):  # each try used to leave a FAILED chat behind
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateChat(chat_pb2.CreateChatRequest(model="qwen3-coder", executor="native",
                                                       endpoint="no-such-endpoint"), timeout=20)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "endpoint 'no-such-endpoint' is not configured (known: none)" in (err.value.details() or "")
    assert list(stub.ListChats(chat_pb2.ListChatsRequest(include_ended=True), timeout=10).chats) == []


def test_spawn_span_and_traceparent_reach_the_agent(tmp_path: Path) -> None:
    import json
    import time

    from tests.harness import authed_channel, start_service
    from tests.supervisor.conftest import FAST_POLICY, start_without_health_wait

    state = tmp_path / "state"
    graph = start_service("graph", state)
    dispatch = start_service("dispatch", state)
    env = {"WGS_GRAPH_ADDR": graph.address, "WGS_DISPATCH_ADDR": dispatch.address, "OTEL_SDK_DISABLED": "false",
           **FAST_POLICY}
    sup = start_without_health_wait("supervisor", state, env)
    try:
        with authed_channel(sup.address) as ch:
            from wgs.v1 import chat_pb2_grpc

            stub = chat_pb2_grpc.ChatServiceStub(ch)
            code = "import os\nprint('TP=' + os.environ.get('TRACEPARENT', ''), flush=True)"
            chat = stub.CreateChat(chat_pb2.CreateChatRequest(command=[PY, "-c", code]), timeout=20).chat
            assert len(chat.trace_id) == 32 and chat.trace_id == chat.runtime.trace_id
            wait_output(chat.runtime.current_run.stderr_path, "TP=00-")
            tp = Path(chat.runtime.current_run.stderr_path).read_text().split("TP=")[1].split()[0]
            assert tp.split("-")[1] == chat.trace_id
            spawn_span_id = tp.split("-")[2]
            stub.StopChat(chat_pb2.StopChatRequest(chat_id=chat.id), timeout=20)
        traces = state / "traces" / "supervisor.jsonl"
        end = time.monotonic() + 15
        span = None
        while span is None and time.monotonic() < end:  # the batch exporter flushes every 0.5 s
            if traces.exists():
                for line in traces.read_text().splitlines():
                    for rs in json.loads(line).get("resourceSpans", []):
                        for ss in rs.get("scopeSpans", []):
                            for sp in ss.get("spans", []):
                                if sp.get("spanId") == spawn_span_id:
                                    span = sp
            if span is None:
                time.sleep(0.1)
        assert span is not None, "spawn span not exported"
        assert span["name"] == Path(PY).name and span["kind"] == "SPAN_KIND_CLIENT"
        attrs = {a["key"]: a["value"] for a in span["attributes"]}
        assert attrs["wgs.chat.id"]["stringValue"] == chat.id
        assert attrs["wgs.stderr.path"]["stringValue"] == chat.runtime.current_run.stderr_path
        assert int(attrs["process.pid"]["intValue"]) == chat.runtime.current_run.pid
        assert "process.command_args" in attrs
    finally:
        sup.terminate()
        dispatch.terminate()
        graph.terminate()


def test_watch_all_chats_streams_every_chats_changes(stack: Stack) -> None:
    """WatchChat("") first lists the chats it has, then keeps streaming: it must not end after that."""
    stub = stack.chat()
    old = create(stack, SLEEPER).chat
    stream = stub.WatchChat(chat_pb2.WatchChatRequest(), timeout=20)
    seen: list[tuple[str, int]] = []
    new = create(stack, [PY, "-c", "pass"]).chat
    try:
        for resp in stream:
            seen.append((resp.chat.id, resp.chat.runtime.state))
            if resp.chat.id == new.id and resp.chat.runtime.state == RS.RUNTIME_STATE_EXITED:
                break
    finally:
        stream.cancel()
    assert seen[0] == (old.id, RS.RUNTIME_STATE_RUNNING)  # the snapshot
    assert (new.id, RS.RUNTIME_STATE_EXITED) in seen  # a change after it


def test_live_chat_cap_is_resource_exhausted(stack: Stack) -> None:
    stack.sup_env["WGS_MAX_LIVE_CHATS"] = "1"
    stack.restart_supervisor(kill9=False)
    first = create(stack, SLEEPER).chat
    with pytest.raises(grpc.RpcError) as err:
        create(stack, SLEEPER)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    listed = stack.chat().ListChats(chat_pb2.ListChatsRequest(include_ended=True), timeout=10).chats
    assert [c.id for c in listed] == [first.id]


def test_backoff_chat_restarted_after_supervisor_restart(stack: Stack, tmp_path: Path) -> None:
    flag = tmp_path / "healthy"
    code = (f"import os, sys, time\nif not os.path.exists({str(flag)!r}): sys.exit(2)\n"
            "print('healthy', flush=True)\ntime.sleep(600)")
    stack.sup_env["WGS_RESTART_INITIAL_BACKOFF_SECONDS"] = "2"
    stack.restart_supervisor(kill9=False)
    chat = create(stack, [PY, "-c", code]).chat
    backoff, _ = wait_chat(stack.chat(), chat.id, lambda c: c.runtime.state == RS.RUNTIME_STATE_BACKOFF)
    stack.supervisor.kill9()
    flag.write_text("x")
    stack.supervisor = __import__("tests.harness", fromlist=["x"]).start_service(
        "supervisor", stack.state_dir, stack.sup_env)
    running, _ = wait_chat(stack.chat(), chat.id, lambda c: c.runtime.state == RS.RUNTIME_STATE_RUNNING
                           and c.runtime.current_run.number > backoff.runtime.current_run.number)
    assert pid_alive(running.runtime.current_run.pid)


def test_a_supervisor_away_past_its_lease_leaves_no_unsupervised_agent(stack: Stack, tmp_path: Path) -> None:
    """Fencing: an agent whose supervisor cannot renew its lease is ended by its own run monitor before
    the lease expires; Reconcile then resets the chat; the supervisor back records why the run ended."""
    import time

    stack.sup_env["WGS_LEASE_SECONDS"] = "3"
    stack.restart_supervisor(kill9=False)
    chat = create(stack, SLEEPER).chat
    run = chat.runtime.current_run
    stack.supervisor.kill9()
    assert wait_gone(run.pid, 10)  # fenced by its monitor: nobody renewed the lease
    graph = stack.graph_stub()
    end = time.monotonic() + 20
    actions: list[graph_pb2.ReconcileAction] = []
    while time.monotonic() < end and not actions:  # bounded: until the lease has expired
        actions = [a for a in graph.Reconcile(graph_pb2.ReconcileRequest(dry_run=False), timeout=10).actions
                   if a.task_id == chat.id]
        if not actions:
            time.sleep(0.2)
    assert actions and actions[0].to_status == task_pb2.TASK_STATUS_OPEN
    stack.supervisor = __import__("tests.harness", fromlist=["x"]).start_service(
        "supervisor", stack.state_dir, stack.sup_env)
    got = stack.chat().GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=10).chat
    first = got.runtime.current_run
    assert first.number == 1 and first.end == RS.RUN_END_FENCED and got.pid == 0
    assert "lease" in first.error
    assert got.runtime.state == RS.RUNTIME_STATE_STOPPED and got.status == task_pb2.TASK_STATUS_OPEN
    resp = stack.chat().SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="back?"), timeout=20)
    assert resp.respawned and resp.runtime.current_run.number == 2


def test_another_supervisor_takes_over_only_after_the_lease_and_never_beside_the_old_agent(stack: Stack) -> None:

    stack.sup_env["WGS_LEASE_SECONDS"] = "3"
    stack.restart_supervisor(kill9=False)
    chat = create(stack, SLEEPER).chat
    run = chat.runtime.current_run
    stack.supervisor.kill9()
    stack.sup_env["WGS_SUPERVISOR_ID"] = "sup-other"
    stack.supervisor = __import__("tests.harness", fromlist=["x"]).start_service(
        "supervisor", stack.state_dir, stack.sup_env)
    stub = stack.chat()
    # The first owner's lease is still valid: no takeover, and the message is refused as retryable
    # (UNAVAILABLE: its owner cannot be reached), with when to retry.
    with pytest.raises(grpc.RpcError) as err:
        stub.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hi", request_id="r1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "lease is valid until" in (err.value.details() or "")
    # The survivor takes the chat over by itself (failover), once the lease expired.
    taken, _ = wait_chat(stub, chat.id, lambda c: c.runtime.supervisor_id == "sup-other"
                         and c.runtime.state == RS.RUNTIME_STATE_RUNNING and c.runtime.current_run.number == 2)
    # The old agent had fenced itself before the lease lapsed: never two agents.
    assert not pid_alive(run.pid)
    first = next(r for r in taken.runtime.previous_runs if r.number == 1)
    assert first.end == RS.RUN_END_FENCED
    assert taken.runtime.restart_count == 0  # not the agent's fault: not counted
    resp = stub.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hi", request_id="r1"), timeout=10)
    assert not resp.respawned and resp.runtime.current_run.number == 2
    stopped = stub.StopChat(chat_pb2.StopChatRequest(chat_id=chat.id), timeout=20).chat
    assert stopped.runtime.state == RS.RUNTIME_STATE_STOPPED and wait_gone(taken.runtime.current_run.pid)
