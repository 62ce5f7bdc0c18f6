"""The chat lifecycle in-process (tests/supervisor/inprocess.py): the real GraphStore on SQLite, the
real planner, a fake run backend and a manual clock. Each test runs in milliseconds."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path

import pytest

from services.supervisor.backend import Leftover, SpawnFailed
from services.supervisor.lifecycle import Lifecycle
from services.supervisor.live import Transition
from tests.supervisor.inprocess import World, make_world
from wgs.common import chat_states
from wgs.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from wgs.v1 import chat_pb2, graph_pb2, plan_pb2, runtime_pb2, task_pb2
from wgs.v1 import runtime_service_pb2 as rs

R = runtime_pb2
SLEEPER = ["/bin/sleep", "600"]
SECRET = "sk-lab-secret-value-0123456789"


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setenv("LAB_TEST_KEY", SECRET)
    w = await make_world(tmp_path)
    try:
        yield w
    finally:
        for life in w.lifecycles:
            await life.close()
        await w.store.close()


@pytest.fixture
async def sup(world: World) -> Lifecycle:
    life = world.supervisor()
    await life.start()
    return life


async def create(life: Lifecycle, **kw: object) -> chat_pb2.Chat:
    kw.setdefault("command", SLEEPER)
    return (await life.create_chat(chat_pb2.CreateChatRequest(**kw))).chat  # type: ignore[arg-type]


async def record(world: World, chat_id: str) -> rs.GetChatRecordResponse:
    return await world.records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat_id, with_log=True))


def runs(rt: runtime_pb2.ChatRuntime) -> dict[int, runtime_pb2.Run]:
    return {r.number: r for r in (rt.current_run, *rt.previous_runs) if r.number}


# -- creation ------------------------------------------------------------------------------------


async def test_create_plans_once_persists_and_spawns_run_1(world: World, sup: Lifecycle) -> None:
    chat = await create(sup, command=[], executor="nex", endpoint="lab")
    assert chat.runtime.state == R.RUNTIME_STATE_RUNNING and chat.pid > 0
    assert world.dispatch.calls == ["PlanSpawn"]  # once, before anything was written
    spec = world.backend.spawned[0]
    assert spec.chat_id == chat.id and spec.number == 1
    assert "--chat" not in spec.argv and spec.env["WGS_CHAT_ID"] == chat.id and spec.env["WGS_RUN_NUMBER"] == "1"
    assert spec.env["WGS_API_KEY"] == SECRET and spec.env["WGS_TOKEN"].startswith("wgs1.")
    rec = await record(world, chat.id)
    assert rec.task.executor == "native"  # as requested, normalized by dispatch
    assert rec.runtime.plan.executor_source == plan_pb2.CHOICE_SOURCE_REQUEST
    assert rec.runtime.current_run.pid == chat.pid and rec.runtime.current_run.stderr_path.endswith("run-1.log")


async def test_a_plan_refused_at_creation_writes_nothing(world: World, sup: Lifecycle) -> None:
    with pytest.raises(FailedPrecondition, match="endpoint 'nosuch' is not configured"):
        await create(sup, command=[], endpoint="nosuch")
    with pytest.raises(InvalidArgument) as err:
        await create(sup, command=[], executor="gpt")
    assert err.value.field == "executor"
    listed = await world.records.list_chat_records(rs.ListChatRecordsRequest(include_ended=True))
    assert list(listed.chats) == [] and world.backend.spawned == []


async def test_a_repeated_request_id_returns_the_first_chat_and_spawns_once(world: World, sup: Lifecycle) -> None:
    first = await sup.create_chat(chat_pb2.CreateChatRequest(command=SLEEPER, request_id="r-1"))
    again = await sup.create_chat(chat_pb2.CreateChatRequest(command=SLEEPER, request_id="r-1"))
    assert first.created and not again.created and again.chat.id == first.chat.id
    assert len(world.backend.spawned) == 1


async def test_the_pre_spawn_log_line_comes_before_the_spawn(world: World, sup: Lifecycle,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    world.backend.on_spawn = lambda spec: seen.extend(r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.INFO, logger="wgs.supervisor"):
        chat = await create(sup)
    pre = [m for m in seen if m.startswith(f"spawning agent for {chat.id} run 1")]
    assert pre and "stderr=" in pre[0] and str(world.backend.log_path(chat.id, 1)) in pre[0]


async def test_a_plan_refused_later_fails_the_existing_chat_with_dispatchs_words(world: World,
                                                                                sup: Lifecycle) -> None:
    """The config changed after the chat was created: its next spawn cannot be planned. Retrying
    cannot help until a person fixes the config: FAILED with dispatch's words, nothing spawned."""
    idle, crashed, restarted = [await create(sup, command=[], executor="native", endpoint="lab") for _ in range(3)]
    world.backend.exit(idle.id, 1, code=0)  # EXITED: respawned on the next message
    world.backend.exit(crashed.id, 1, code=1)  # BACKOFF: respawned by the timer
    await world.settle()
    config = world.tmp / "config.toml"
    good = config.read_text()
    replacement = world.tmp / "config.toml.new"
    replacement.write_text('[defaults]\nmodel = "qwen3-coder"\n')  # the endpoint 'lab' was removed
    replacement.replace(config)
    spawned = len(world.backend.spawned)

    resp = await sup.send_message(chat_pb2.SendMessageRequest(chat_id=idle.id, text="still there?"))
    assert resp.message.content == "still there?"  # the message is kept ...
    assert not resp.respawned and resp.runtime.state == R.RUNTIME_STATE_FAILED  # ... but no agent started
    await world.clock.advance(world.restart_delay(crashed.id) or 0)
    await sup.restart_chat(restarted.id)
    for chat in (idle, crashed, restarted):
        rt = (await record(world, chat.id)).runtime
        assert rt.state == R.RUNTIME_STATE_FAILED, chat.id
        assert rt.last_error.startswith("cannot plan the agent: endpoint 'lab' is not configured (known: none) in ")
        assert rt.last_error.endswith(f"fix the chat or config.toml, then `wgs chat restart {chat.id}`")
        assert world.restart_delay(chat.id) is None  # no retry: it cannot help
    assert len(world.backend.spawned) == spawned and world.backend.live(restarted.id) == []

    config.write_text(good)  # fixed: RestartChat starts it again
    again = await sup.restart_chat(idle.id)
    assert again.runtime.state == R.RUNTIME_STATE_RUNNING and again.runtime.last_error == ""


# -- failure classes and the restart policy ----------------------------------------------------------


async def test_a_missing_executable_fails_at_once_with_the_fix_and_keeps_its_stderr_path(world: World,
                                                                                        sup: Lifecycle) -> None:
    world.backend.fail_next.append(SpawnFailed("executable not found: 'nope' is not on PATH", permanent=True,
                                               errno=errno.ENOENT))
    chat = await create(sup, command=["nope"])
    rt = chat.runtime
    assert rt.state == R.RUNTIME_STATE_FAILED and "restarting cannot fix this" in rt.last_error
    assert "install the program or fix the command's path" in rt.last_error  # the fix for ENOENT, named
    assert "wgs chat restart" in rt.last_error and not rt.HasField("next_restart_at")
    run = rt.current_run
    assert run.pid == 0 and run.end == R.RUN_END_SPAWN_FAILED and "executable not found" in run.error
    assert run.stderr_path == str(world.backend.log_path(chat.id, 1))
    assert world.restart_delay(chat.id) is None  # no retry scheduled


async def test_a_retryable_spawn_failure_backs_off_and_keeps_its_stderr_path(world: World, sup: Lifecycle) -> None:
    world.backend.fail_next.append(SpawnFailed("could not start the run monitor: [Errno 11] Resource temporarily "
                                               "unavailable"))
    world.backend.tail_text[".chat-1"] = "wgs: fork failed\n"
    chat = await create(sup)
    rt = chat.runtime
    assert rt.state == R.RUNTIME_STATE_BACKOFF and "could not start the run monitor" in rt.last_error
    run = rt.current_run
    assert run.pid == 0 and run.end == R.RUN_END_SPAWN_FAILED and "Resource temporarily unavailable" in run.error
    assert run.stderr_path == str(world.backend.log_path(chat.id, 1)) and run.stderr_tail == "wgs: fork failed\n"
    delay = world.restart_delay(chat.id)
    assert delay == 0.5
    await world.clock.advance(delay)
    again = (await record(world, chat.id)).runtime
    assert again.state == R.RUNTIME_STATE_RUNNING and again.current_run.number == 2
    assert runs(again)[1].stderr_path == run.stderr_path  # kept in the history


async def test_an_agent_reporting_a_configuration_problem_fails_at_once(world: World, sup: Lifecycle) -> None:
    chat = await create(sup, command=[], executor="native", endpoint="lab")
    world.backend.tail_text[chat.id] = "starting\nwgs-agent: endpoint lab refused authentication: HTTP 401\n"
    world.backend.exit(chat.id, 1, code=5)
    await world.settle()
    rt = (await record(world, chat.id)).runtime
    assert rt.state == R.RUNTIME_STATE_FAILED
    assert "refused authentication: HTTP 401" in rt.last_error and "api_key_env" in rt.last_error


async def test_exits_at_once_read_their_tails_together_once_each(world: World, sup: Lifecycle) -> None:
    """Each exit's output tail is read once (it explains the death and goes on the run), and the
    tails of runs that ended together are read in one call off the event loop, not one hop each."""
    chats = [await create(sup) for _ in range(6)]
    for chat in chats:
        world.backend.tail_text[chat.id] = f"last words of {chat.id}\n"
    world.backend.tail_reads.clear()
    world.backend.tail_batches.clear()
    for chat in chats:
        world.backend.exit(chat.id, 1, sig=9)
    await world.settle()
    assert sorted(p.parent.name for p in world.backend.tail_reads) == sorted(c.id for c in chats)
    assert world.backend.tail_batches == [6]
    for chat in chats:
        run = (await record(world, chat.id)).runtime.current_run
        assert run.signal == 9 and run.stderr_tail == f"last words of {chat.id}\n"


async def test_a_crash_loop_backs_off_doubling_then_fails(world: World, sup: Lifecycle) -> None:
    chat = await create(sup)
    delays: list[float] = []
    for n in range(1, 7):
        world.backend.exit(chat.id, n, code=1)
        await world.settle()
        rt = (await record(world, chat.id)).runtime
        if n <= 5:
            assert rt.state == R.RUNTIME_STATE_BACKOFF and "failed start" in rt.last_error
            delay = world.restart_delay(chat.id)
            assert delay is not None
            delays.append(delay)
            await world.clock.advance(delay)
            assert (await record(world, chat.id)).runtime.current_run.number == n + 1
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]
    rt = (await record(world, chat.id)).runtime
    assert rt.state == R.RUNTIME_STATE_FAILED and "6 failures within 120s" in rt.last_error
    assert rt.restart_count == 5
    with pytest.raises(FailedPrecondition, match="wgs chat restart"):
        await sup.send_message(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hi"))
    again = await sup.restart_chat(chat.id)
    assert again.runtime.state == R.RUNTIME_STATE_RUNNING and again.runtime.restart_count == 0
    assert again.runtime.current_run.number == 7 and again.runtime.last_error == ""


async def test_a_healthy_run_resets_the_backoff_and_a_running_chat_shows_no_old_error(world: World,
                                                                                     sup: Lifecycle) -> None:
    chat = await create(sup)
    world.backend.exit(chat.id, 1, code=1)
    await world.settle()
    await world.clock.advance(world.restart_delay(chat.id) or 0)
    rt = (await record(world, chat.id)).runtime
    assert rt.state == R.RUNTIME_STATE_RUNNING and rt.last_error == ""  # healthy now: no old error shown
    assert runs(rt)[1].exit_code == 1  # ... it stays in the history
    await world.clock.advance(61)  # up longer than reset_after
    world.backend.exit(chat.id, 2, code=1)
    await world.settle()
    rt = (await record(world, chat.id)).runtime
    assert world.restart_delay(chat.id) == 0.5 and "failed start" not in rt.last_error


async def test_exit_0_is_exited_and_a_message_respawns_it(world: World, sup: Lifecycle) -> None:
    chat = await create(sup)
    world.backend.exit(chat.id, 1, code=0)
    await world.settle()
    rt = (await record(world, chat.id)).runtime
    assert rt.state == R.RUNTIME_STATE_EXITED and rt.last_error == "" and world.restart_delay(chat.id) is None
    resp = await sup.send_message(chat_pb2.SendMessageRequest(chat_id=chat.id, text="hello", request_id="m1"))
    assert resp.respawned and resp.runtime.current_run.number == 2
    again = await sup.send_message(chat_pb2.SendMessageRequest(chat_id=chat.id, text="more"))
    assert not again.respawned
    msgs = await world.store.list_messages(graph_pb2.ListMessagesRequest(chat_id=chat.id))
    assert [m.content for m in msgs.messages] == ["hello", "more"]


async def test_a_run_ended_by_fencing_restarts_at_once_and_is_not_counted(world: World, sup: Lifecycle) -> None:
    chat = await create(sup)
    world.backend.exit(chat.id, 1, sig=15, fenced=True, error="fenced: the supervisor's lease was not renewed")
    await world.settle()
    await world.clock.advance(0)
    rt = (await record(world, chat.id)).runtime
    assert rt.state == R.RUNTIME_STATE_RUNNING and rt.restart_count == 0
    assert runs(rt)[1].end == R.RUN_END_FENCED


class _LostReply:
    """The graph's RuntimeService as a supervisor sees it when one RecordRunStarted reply is lost (the
    graph restarting, a deadline); the caller cannot tell whether the write happened. `when`: the
    write happened before the reply was lost ("written"), never ("not-written"), or lands late, just
    before the next RecordRunStarted reaches the graph ("late": a handler that outlived its deadline)."""

    def __init__(self, runtime: object, when: str) -> None:
        self._runtime, self.when, self.armed = runtime, when, False
        self._late: rs.RecordRunStartedRequest | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self._runtime, name)

    def RecordRunStarted(self, req: rs.RecordRunStartedRequest, timeout: float | None = None,
                         metadata: object = None) -> Awaitable[rs.RecordRunStartedResponse]:
        return self._record(req, timeout)

    async def _record(self, req: rs.RecordRunStartedRequest, deadline: float | None) -> rs.RecordRunStartedResponse:
        real = self._runtime.RecordRunStarted  # type: ignore[attr-defined]
        if self._late is not None:
            late, self._late = self._late, None
            await real(late, timeout=deadline)
        if not self.armed:
            return await real(req, timeout=deadline)  # type: ignore[no-any-return]
        self.armed = False
        if self.when == "written":
            await real(req, timeout=deadline)
        elif self.when == "late":
            self._late = req
        raise Unavailable("graph RecordRunStarted: the connection was lost before the reply")


@pytest.mark.parametrize("when", ["written", "not-written", "late"])
async def test_a_restart_whose_start_reply_is_lost_ends_that_run_and_never_shows_it_live(
        world: World, sup: Lifecycle, when: str) -> None:
    """A run whose start got no answer is ended (it must not live unrecorded). If the graph wrote the
    start all the same — at once or late — the chat must not show that dead agent RUNNING for ever:
    its end is recorded with why, and the chat goes on to a new run. (A fault campaign found chat
    show saying RUNNING with a pid that had been ended, after a graph restart.)"""
    chat = await create(sup)
    lossy = _LostReply(sup.graph._runtime, when)
    sup.graph._runtime = lossy  # type: ignore[assignment]
    lossy.armed = True
    world.backend.exit(chat.id, 1, sig=9)  # the agent is killed: a restart is due
    await world.settle()
    for _ in range(3):  # the restart whose reply is lost, the next try, (late: the one after)
        await world.clock.advance(sup.s.policy.max_backoff)
    assert not lossy.armed
    rt = (await record(world, chat.id)).runtime
    shown = runs(rt)
    live = world.backend.live(chat.id)
    assert rt.state == R.RUNTIME_STATE_RUNNING and live == [rt.current_run.number], (rt, live)
    assert rt.current_run.pid == world.backend.runs[(chat.id, rt.current_run.number)].handle.pid
    assert rt.restart_count == 1  # the kill counts; the lost reply is not the agent's fault
    if when == "not-written":  # nothing was written: run 2 is simply started again
        assert rt.current_run.number == 2 and sorted(shown) == [1, 2]
    else:  # the graph showed run 2 RUNNING: its end is recorded, with why, and run 3 runs
        assert rt.current_run.number == 3 and sorted(shown) == [1, 2, 3]
        assert shown[2].end == R.RUN_END_STOPPED and "could not be confirmed with the graph" in shown[2].end_detail
        assert not any(r.alive and r.handle.pid == shown[2].pid for r in world.backend.runs.values())


# -- stops ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb, status, tag", [
    ("stop", task_pb2.TASK_STATUS_OPEN, ""), ("delete", task_pb2.TASK_STATUS_ABANDONED, ""),
    ("archive", task_pb2.TASK_STATUS_DONE, "archived"),
])
async def test_stops_are_recorded_as_stops_never_as_crashes(world: World, sup: Lifecycle, verb: str, status: int,
                                                           tag: str) -> None:
    chat = await create(sup)
    after = await getattr(sup, f"{verb}_chat")(chat.id)
    assert after.runtime.state == R.RUNTIME_STATE_STOPPED and after.status == status and after.pid == 0
    run = after.runtime.current_run
    assert run.end == R.RUN_END_STOPPED and run.end_detail == f"{verb.capitalize()}Chat"
    assert after.runtime.restart_count == 0 and after.runtime.last_error == ""
    assert (tag in after.tags) == bool(tag)
    assert world.backend.live(chat.id) == []
    if verb == "stop":
        resp = await sup.send_message(chat_pb2.SendMessageRequest(chat_id=chat.id, text="again"))
        assert resp.respawned and resp.runtime.state == R.RUNTIME_STATE_RUNNING
    else:
        with pytest.raises(FailedPrecondition):
            await sup.send_message(chat_pb2.SendMessageRequest(chat_id=chat.id, text="again"))


async def test_a_shutdown_parks_the_chats_and_the_next_start_resumes_them_without_a_failure(world: World,
                                                                                           sup: Lifecycle) -> None:
    chats = [await create(sup) for _ in range(3)]
    await sup.stop_chat(chats[2].id)  # a chat the user stopped stays stopped
    stopped = await sup.stop_agents("wgs down")
    assert [a.chat_id for a in stopped] == [chats[0].id, chats[1].id]
    for c in chats[:2]:
        rt = (await record(world, c.id)).runtime
        assert rt.state == R.RUNTIME_STATE_STOPPED and rt.resume_on_start and rt.current_run.end_detail == "wgs down"
    await sup.close()
    again = world.supervisor()
    await again.start()
    for c in chats[:2]:
        rt = (await record(world, c.id)).runtime
        assert rt.state == R.RUNTIME_STATE_RUNNING and rt.current_run.number == 2
        assert rt.restart_count == 0 and rt.last_error == "" and not rt.resume_on_start
    assert (await record(world, chats[2].id)).runtime.state == R.RUNTIME_STATE_STOPPED


# -- adoption and proof before a restart -------------------------------------------------------------


async def test_a_restarted_supervisor_adopts_a_live_run_and_records_a_dead_ones_end(world: World,
                                                                                   sup: Lifecycle) -> None:
    alive, dead, starting = await create(sup), await create(sup), await create(sup)
    await world.records.transition_chat(rs.TransitionChatRequest(  # died mid-spawn: STARTING, no run 2
        chat_id=starting.id, supervisor_id="sup-a", to_state=R.RUNTIME_STATE_STOPPED))
    await world.records.transition_chat(rs.TransitionChatRequest(
        chat_id=starting.id, supervisor_id="sup-a", to_state=R.RUNTIME_STATE_STARTING))
    await sup.close()  # "kill -9": runs live on
    world.backend.runs[(starting.id, 1)].alive = False
    world.backend.runs[(dead.id, 1)].alive = False
    world.backend.runs[(dead.id, 1)].exit = None  # the monitor died too: no exit record
    world.backend.leftovers[dead.id] = [Leftover(pid=dead.pid, what="agent of run 1", outcome="ended")]
    again = world.supervisor()
    await again.start()
    await world.settle()
    rt = (await record(world, alive.id)).runtime
    assert rt.state == R.RUNTIME_STATE_RUNNING and rt.current_run.number == 1  # adopted, not duplicated
    world.backend.exit(alive.id, 1, code=3)  # its later exit is recorded by the new supervisor
    await world.settle()
    assert runs((await record(world, alive.id)).runtime)[1].exit_code == 3
    rt = (await record(world, dead.id)).runtime
    first = runs(rt)[1]
    assert first.end == R.RUN_END_UNKNOWN and f"pid {dead.pid} ended before restart" in first.error
    assert "the run monitor left no record" in first.error  # what is known of the end is kept beside it
    assert rt.state == R.RUNTIME_STATE_BACKOFF and rt.restart_count == 0
    await world.clock.advance(0)
    assert world.backend.live(dead.id) == [2]  # restarted only after the old agent was ended
    rt = (await record(world, starting.id)).runtime
    assert rt.state == R.RUNTIME_STATE_RUNNING and rt.current_run.number == 2
    assert (starting.id, [1]) in world.backend.end_leftovers_calls  # proved before spawning


async def test_a_killed_run_monitor_its_agent_is_ended_before_the_end_is_recorded_and_the_restart(
        world: World, sup: Lifecycle) -> None:
    chat, gone = await create(sup), await create(sup)
    world.backend.kill_monitor(chat.id, 1)  # kill -9 of the monitor: the agent lives on, unsupervised
    world.backend.runs[(gone.id, 1)].alive = False  # ... here the agent had died with it
    world.backend.kill_monitor(gone.id, 1)
    await world.settle()
    rt = (await record(world, chat.id)).runtime
    first = runs(rt)[1]
    # Proven and ended before the end was recorded, and said on the run and in last_error:
    expected = f"run monitor died (SIGKILL) without an exit record; agent of run 1 pid {chat.pid} ended before restart"
    assert first.end == R.RUN_END_UNKNOWN and first.error == expected
    assert rt.state == R.RUNTIME_STATE_BACKOFF and rt.last_error == f"{expected}; restarting now"
    assert world.backend.live(chat.id) == [] and len(world.backend.spawned) == 2  # ended before any restart
    assert world.backend.end_leftovers_calls[0] == (chat.id, [1])
    gone_run = runs((await record(world, gone.id)).runtime)[1]
    assert gone_run.error == "run monitor died (SIGKILL) without an exit record; no process of run 1 was left"
    await world.clock.advance(0)  # not the agent's fault: restarted at once, not counted
    for c in (chat, gone):
        rt = (await record(world, c.id)).runtime
        assert rt.state == R.RUNTIME_STATE_RUNNING and rt.current_run.number == 2 and rt.restart_count == 0
        assert world.backend.live(c.id) == [2]  # one agent


async def test_a_live_chat_keeps_its_lease_and_survives_reconcile(world: World, sup: Lifecycle) -> None:
    chat = await create(sup)
    for _ in range(9):  # 90 s: far past one lease (30 s)
        await world.clock.advance(10)
    resp = await world.store.reconcile(graph_pb2.ReconcileRequest())
    assert chat.id not in [a.task_id for a in resp.actions]
    rec = await record(world, chat.id)
    assert rec.task.status == task_pb2.TASK_STATUS_IN_PROGRESS
    assert rec.runtime.lease_expires_at.ToDatetime().replace(tzinfo=world.clock.now().tzinfo) > world.clock.now()
    # Each renewal moved the fencing deadline on: the runs never fence themselves while renewals succeed.
    assert world.backend.deadlines[-1] > world.clock.now().timestamp()


async def test_lost_chats_are_dropped_and_never_resumed(world: World, sup: Lifecycle) -> None:
    chat = await create(sup)
    await world.store.run(lambda: None)
    # Another supervisor took the chat over while this one could not renew (its lease expired).
    def expire() -> None:
        import sqlalchemy as sa

        from services.graph import db as gdb
        with world.store.engine.begin() as conn:
            conn.execute(sa.update(gdb.ChatRuntimeRow).values(lease_expires_at=world.clock.now() - timedelta(seconds=1)))

    await asyncio.to_thread(expire)
    await world.records.claim_chat(rs.ClaimChatRequest(chat_id=chat.id, supervisor_id="sup-b", lease_seconds=30))
    await world.clock.advance(10)  # the next renewal learns it
    assert world.backend.live(chat.id) == []  # its run was ended, not left beside the new owner's
    assert chat.id not in sup.held_chats()
    rt = (await record(world, chat.id)).runtime
    assert rt.supervisor_id == "sup-b"


async def test_a_lost_supervisors_chats_are_taken_over_and_explained(world: World, sup: Lifecycle) -> None:
    other_backend = type(world.backend)(world.tmp, hostname="other-host", now=world.clock.now)
    b = world.supervisor("sup-b", backend=other_backend)
    await b.start()
    chat = await create(b)
    await b.close()  # the pod is lost: no more renewals
    await world.clock.advance(31)  # past its lease; sup-a's failover scan runs every 10 s
    await world.clock.advance(10)
    rt = (await record(world, chat.id)).runtime
    assert rt.supervisor_id == "sup-a" and rt.state == R.RUNTIME_STATE_RUNNING and rt.current_run.number == 2
    first = runs(rt)[1]
    assert first.end == R.RUN_END_UNKNOWN and "supervisor 'sup-b' was lost" in first.error
    assert "now runs on supervisor sup-a" in first.error and rt.restart_count == 0


async def test_a_lost_supervisors_many_chats_are_taken_over_several_at_a_time(
        world: World, sup: Lifecycle, monkeypatch: pytest.MonkeyPatch) -> None:
    """A survivor adopts a lost replica's chats several at once: one after another, a hundred chats
    took most of a minute (seen in benchmarks/replicas.py)."""
    from services.supervisor.ownership import TAKEOVER_CONCURRENCY

    other_backend = type(world.backend)(world.tmp, hostname="other-host", now=world.clock.now)
    b = world.supervisor("sup-b", backend=other_backend)
    await b.start()
    chats = [await create(b) for _ in range(TAKEOVER_CONCURRENCY * 2 + 1)]
    await b.close()
    real = sup.owner.adopt_claimed
    active = peak = 0

    async def adopt(claimed: rs.ClaimChatResponse) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(5):  # let the others in, as a real adoption's round trips would
            await asyncio.sleep(0)
        try:
            await real(claimed)
        finally:
            active -= 1

    monkeypatch.setattr(sup.owner, "adopt_claimed", adopt)
    await world.clock.advance(31)
    await world.clock.advance(10)
    assert peak == TAKEOVER_CONCURRENCY
    for chat in chats:
        rt = (await record(world, chat.id)).runtime
        assert rt.supervisor_id == "sup-a" and rt.state == R.RUNTIME_STATE_RUNNING and rt.current_run.number == 2


async def test_lease_renewals_go_on_while_a_takeover_is_slow(
        world: World, sup: Lifecycle, monkeypatch: pytest.MonkeyPatch) -> None:
    """A takeover that takes longer than the lease must not hold up this replica's own renewals: its
    runs would fence themselves (the renewal was scheduled only after the takeover ended)."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow_takeover() -> int:
        started.set()
        await release.wait()
        return 0

    monkeypatch.setattr(sup.owner, "take_over_orphans", slow_takeover)
    await sup.owner._round()
    await started.wait()
    takeover = sup.owner._takeover
    renewed = len(world.backend.deadlines)
    for _ in range(3):  # three renewal periods while the takeover is still running
        await asyncio.wait_for(sup.owner._round(), 10)
    assert len(world.backend.deadlines) == renewed + 3  # each renewed and moved the fencing deadline
    assert sup.owner._takeover is takeover and not takeover.done()  # one takeover at a time
    release.set()
    assert await takeover == 0


# -- views ---------------------------------------------------------------------------------------


async def test_what_is_shown_is_redacted_and_true_now(world: World, sup: Lifecycle) -> None:
    chat = await create(sup, command=[], executor="native", endpoint="lab")
    token = world.backend.spawned[0].env["WGS_TOKEN"]
    world.backend.tail_text[chat.id] = f"using key {SECRET}\ntoken {token}\nboom\n"
    shown = await sup.views.get_chat(chat.id)
    assert SECRET not in shown.stderr_tail and token not in shown.stderr_tail and "boom" in shown.stderr_tail
    world.backend.exit(chat.id, 1, sig=11)
    await world.settle()
    rt = (await record(world, chat.id)).runtime
    tail = runs(rt)[1].stderr_tail  # the tail kept with the run, shown in previous_runs later
    assert "boom" in tail and SECRET not in tail and token not in tail
    listed = await sup.views.list_chats(chat_pb2.ListChatsRequest())
    assert listed.chats[0].pid == 0 and listed.chats[0].runtime.state == R.RUNTIME_STATE_BACKOFF


async def test_chat_logs_streams_the_run_file_but_never_through_a_symlink_or_a_fifo(
        world: World, sup: Lifecycle) -> None:
    """The run file sits in a directory its agent can write to: an agent that replaces it with a
    symlink (to the stack secret, another chat's file) or a FIFO must not have that streamed to a
    client or block the stream; `wgs chat logs` then shows the tail kept with the run's record."""
    chat = await create(sup, command=[], executor="native", endpoint="lab")
    run_file = world.backend.log_path(chat.id, 1)
    run_file.parent.mkdir(parents=True, exist_ok=True)

    async def logs() -> list[chat_pb2.StreamChatLogResponse]:
        return [r async for r in sup.views.stream_log(chat_pb2.StreamChatLogRequest(chat_id=chat.id))]

    run_file.write_text(f"starting\nkey {SECRET}\n")
    got = await logs()
    shown = b"".join(r.data for r in got)
    assert shown.startswith(b"starting\nkey ") and SECRET.encode() not in shown and not got[-1].from_record

    secret = world.tmp / "stack-secret"
    secret.write_text("the stack secret\n")
    run_file.unlink()
    run_file.symlink_to(secret)
    got = await logs()
    assert b"stack secret" not in b"".join(r.data for r in got) and got[-1].from_record

    run_file.unlink()
    os.mkfifo(run_file)
    got = await asyncio.wait_for(logs(), 5)  # no writer: a plain open would block for ever
    assert got[-1].from_record

    elsewhere = world.tmp / "elsewhere"  # the chat's directory itself replaced by a link
    elsewhere.mkdir()
    (elsewhere / run_file.name).write_text("the stack secret\n")
    run_file.unlink()
    run_file.parent.rmdir()
    run_file.parent.symlink_to(elsewhere)
    got = await logs()
    assert b"stack secret" not in b"".join(r.data for r in got) and got[-1].from_record


async def test_watch_chat_of_every_chat_keeps_streaming_after_the_snapshot(world: World, sup: Lifecycle) -> None:
    old = await create(sup)
    stream = sup.views.watch_chat("")
    first = await anext(stream)
    assert first.id == old.id
    new = await create(sup)
    seen = []
    while not seen or seen[-1] != (new.id, R.RUNTIME_STATE_RUNNING):
        c = await asyncio.wait_for(anext(stream), 5)
        seen.append((c.id, c.runtime.state))
    await stream.aclose()


async def test_every_state_change_goes_through_the_table(world: World, sup: Lifecycle) -> None:
    """An illegal change is refused before anything is written (the graph would refuse it too)."""
    chat = await create(sup)
    live = sup.live(chat.id)
    with pytest.raises(FailedPrecondition, match="RUNNING -> STARTING"):
        await sup.change_state(live, chat_states.STARTING, Transition())
    assert (await record(world, chat.id)).runtime.state == R.RUNTIME_STATE_RUNNING


async def test_a_chat_whose_supervisor_lapsed_says_so_and_shows_no_live_pid(world: World) -> None:
    b = world.supervisor("sup-b")
    await b.start()
    chat = await create(b)
    assert chat.pid > 0 and chat.owner_notice == ""
    await b.close()  # frozen or lost: it renews no more
    reader = world.supervisor("sup-a")  # any replica answering reads (not started: no takeover here)
    await world.clock.advance(29)
    assert (await reader.views.get_chat(chat.id)).pid == chat.pid  # the lease still holds: the agent may run
    await world.clock.advance(2)
    shown = await reader.views.get_chat(chat.id)
    assert shown.runtime.state == R.RUNTIME_STATE_RUNNING  # the record's last word ...
    assert shown.pid == 0 and "supervisor 'sup-b' has not renewed its lease" in shown.owner_notice  # ... and now
    listed = (await reader.views.list_chats(chat_pb2.ListChatsRequest())).chats[0]
    assert listed.pid == 0 and listed.owner_notice == shown.owner_notice
