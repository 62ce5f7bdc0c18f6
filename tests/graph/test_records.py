"""RuntimeService's logic (the chat records supervisors keep), on SQLite and PostgreSQL, no network."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from services.graph import db
from services.graph.records import ChatRecords
from services.graph.store import GraphStore
from wgs.common import chat_states
from wgs.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from wgs.common.timeutil import to_ts, utcnow
from wgs.v1 import graph_pb2 as g
from wgs.v1 import plan_pb2, runtime_pb2, task_pb2
from wgs.v1 import runtime_service_pb2 as rs

S = task_pb2
R = runtime_pb2


def chat_req(**kw: object) -> rs.CreateChatTaskRequest:
    base: dict[str, object] = {"supervisor_id": "sup-a", "lease_seconds": 30}
    base.update(kw)
    return rs.CreateChatTaskRequest(**base)  # type: ignore[arg-type]


def run(number: int, pid: int = 1000, **kw: object) -> runtime_pb2.Run:
    return runtime_pb2.Run(number=number, pid=pid, argv=["wgs-agent", "native"], hostname="test-host",
                           **kw)  # type: ignore[arg-type]


def exit_of(chat: str, number: int, state: int, **kw: object) -> rs.RunExit:
    return rs.RunExit(chat_id=chat, run=runtime_pb2.Run(number=number, exit_code=1), state=state,  # type: ignore[arg-type]
                      **kw)  # type: ignore[arg-type]


async def count_rows(store: GraphStore, table: str) -> int:
    def q() -> int:
        with store.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())

    return await asyncio.to_thread(q)


async def force(store: GraphStore, chat_id: str, **values: object) -> None:
    def q() -> None:
        with store.engine.begin() as conn:
            conn.execute(sa.update(db.ChatRuntimeRow).where(db.ChatRuntimeRow.chat_id == chat_id).values(**values))

    await asyncio.to_thread(q)


# -- creation ------------------------------------------------------------------------------------


async def test_create_chat_task_record_plan_and_idempotency(store: GraphStore, records: ChatRecords) -> None:
    plan = plan_pb2.SpawnPlan(executor="native", argv=["wgs-agent", "native"])
    gen = plan_pb2.GenerationOverrides(max_tokens=64)
    resp = await records.create_chat_task(chat_req(name="helper", model="qwen3", executor="native", request_id="c-1",
                                                   trace_id="ab" * 16, plan=plan, generation=gen))
    assert resp.created
    t, rt = resp.task, resp.runtime
    assert t.id == ".chat-1" and t.title == "Chat: helper" and t.status == S.TASK_STATUS_IN_PROGRESS
    assert t.priority == 50 and list(t.tags) == ["chat-loop"] and t.model == "qwen3"
    assert t.generation.max_tokens == 64
    assert rt.state == R.RUNTIME_STATE_STARTING and rt.supervisor_id == "sup-a" and rt.trace_id == "ab" * 16
    assert rt.plan.executor == "native"  # the plan run 1 is spawned with is stored before the spawn
    assert rt.lease_expires_at.ToDatetime() > utcnow().replace(tzinfo=None)
    again = await records.create_chat_task(chat_req(name="other", request_id="c-1"))
    assert not again.created and again.task.id == ".chat-1" and again.task.title == "Chat: helper"
    unnamed = await records.create_chat_task(chat_req(command_argv=["bash", "-c", "cat"]))
    assert unnamed.task.id == ".chat-2" and unnamed.task.title == "Chat 2"
    assert list(unnamed.task.command_argv) == ["bash", "-c", "cat"]
    await store.create_task(g.CreateTaskRequest(title="plain", request_id="plain-1"))
    with pytest.raises(AlreadyExists, match="not a chat"):
        await records.create_chat_task(chat_req(request_id="plain-1"))


async def test_concurrent_chat_creation_gives_distinct_ids(records: ChatRecords) -> None:
    results = await asyncio.gather(*[records.create_chat_task(chat_req(name=f"c{i}")) for i in range(50)])
    ids = [r.task.id for r in results]
    assert sorted(int(i.split("-")[1]) for i in ids) == list(range(1, 51))


async def test_concurrent_same_request_id_creates_one_chat(store: GraphStore, records: ChatRecords) -> None:
    results = await asyncio.gather(*[records.create_chat_task(chat_req(request_id="same")) for _ in range(10)])
    assert {r.task.id for r in results} == {".chat-1"}
    assert sum(r.created for r in results) == 1
    assert await count_rows(store, "chat_runtime") == 1


async def test_live_chat_cap_per_supervisor_under_concurrency_and_ids_not_reused(store: GraphStore,
                                                                                 records: ChatRecords) -> None:
    results = await asyncio.gather(*[records.create_chat_task(chat_req(max_live_chats=3)) for _ in range(8)],
                                   return_exceptions=True)
    ok = [r for r in results if isinstance(r, rs.CreateChatTaskResponse)]
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(ok) == 3 and len(refused) == 5
    assert "3 chats are live on supervisor sup-a and its cap is 3" in refused[0].message
    # Another supervisor's chats do not count against this one's cap.
    assert (await records.create_chat_task(chat_req(supervisor_id="sup-b", max_live_chats=3))).created
    # Stopping one makes room; the new chat gets a fresh id, never one handed out before.
    await store.update_task(g.UpdateTaskRequest(id=ok[0].task.id, update=g.TaskUpdate(status=S.TASK_STATUS_OPEN)))
    new = await records.create_chat_task(chat_req(max_live_chats=3))
    assert new.task.id not in {r.task.id for r in ok}


async def test_list_chat_records_filters(store: GraphStore, records: ChatRecords) -> None:
    for i in range(4):
        await records.create_chat_task(chat_req(supervisor_id="sup-a" if i < 3 else "sup-b"))
    await store.update_task(g.UpdateTaskRequest(id=".chat-2", update=g.TaskUpdate(status=S.TASK_STATUS_ABANDONED)))
    await store.update_task(g.UpdateTaskRequest(id=".chat-3", update=g.TaskUpdate(
        status=S.TASK_STATUS_DONE, add_tags=["archived"])))
    live = await records.list_chat_records(rs.ListChatRecordsRequest())
    assert [c.task.id for c in live.chats] == [".chat-1", ".chat-4"]
    every = await records.list_chat_records(rs.ListChatRecordsRequest(include_ended=True, page_size=3))
    assert [c.task.id for c in every.chats] == [".chat-1", ".chat-2", ".chat-3"] and every.next_page_token
    rest = await records.list_chat_records(rs.ListChatRecordsRequest(include_ended=True,
                                                                     page_token=every.next_page_token))
    assert [c.task.id for c in rest.chats] == [".chat-4"] and not rest.next_page_token
    mine = await records.list_chat_records(rs.ListChatRecordsRequest(supervisor_id="sup-b"))
    assert [c.task.id for c in mine.chats] == [".chat-4"]
    running = await records.list_chat_records(rs.ListChatRecordsRequest(states=[R.RUNTIME_STATE_RUNNING]))
    assert list(running.chats) == []
    await force(store, ".chat-4", lease_expires_at=utcnow() - timedelta(seconds=1))
    orphans = await records.list_chat_records(rs.ListChatRecordsRequest(lease_expired=True))
    assert [c.task.id for c in orphans.chats] == [".chat-4"]
    with pytest.raises(InvalidArgument, match="cannot be removed"):
        await store.update_task(g.UpdateTaskRequest(id=".chat-1", update=g.TaskUpdate(remove_tags=["chat-loop"])))


async def test_a_listed_chat_is_its_record_after_every_kind_of_change(store: GraphStore,
                                                                     records: ChatRecords) -> None:
    """ListChatRecords converts each chat once per distinct content (RecordCache): whatever changes
    a row — a run, a lease renewal that bumps no version, a tag, a write by another process straight
    to the database — the list shows the chat exactly as GetChatRecord reads it."""
    for _ in range(2):
        await records.create_chat_task(chat_req(command_argv=["/bin/sleep", "60"]))

    async def same() -> None:
        listed = await records.list_chat_records(rs.ListChatRecordsRequest(include_ended=True))
        assert len(listed.chats) == 2
        for rec in listed.chats:
            got = await records.get_chat_record(rs.GetChatRecordRequest(chat_id=rec.task.id))
            assert rec.task == got.task and rec.runtime == got.runtime

    await same()
    await records.record_run_started(rs.RecordRunStartedRequest(chat_id=".chat-1", run=run(1), supervisor_id="sup-a"))
    await same()
    await records.renew_leases(rs.RenewLeasesRequest(supervisor_id="sup-a", lease_seconds=600))
    await same()
    await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[
        exit_of(".chat-1", 1, R.RUNTIME_STATE_BACKOFF, last_error="boom")]))
    await same()
    await store.update_task(g.UpdateTaskRequest(id=".chat-2", update=g.TaskUpdate(add_tags=["x"])))
    await same()
    await force(store, ".chat-2", last_error="written by another replica")
    await same()
    listed = await records.list_chat_records(rs.ListChatRecordsRequest())
    assert [c.runtime.last_error for c in listed.chats] == ["boom", "written by another replica"]


async def test_the_record_cache_keeps_within_its_budget(records: ChatRecords) -> None:
    from services.graph.convert import RecordCache

    records._records = cache = RecordCache(max_bytes=5000)  # room for a few of these records
    for _ in range(10):
        await records.create_chat_task(chat_req(command_argv=["/bin/sleep", "60"]))
    listed = await records.list_chat_records(rs.ListChatRecordsRequest())
    assert [c.task.id for c in listed.chats] == [f".chat-{i}" for i in range(1, 11)]
    assert 0 < len(cache._items) < 10 and cache._bytes <= cache.max_bytes
    again = await records.list_chat_records(rs.ListChatRecordsRequest())
    assert again == listed


# -- runs ----------------------------------------------------------------------------------------


async def test_run_records_owner_check_and_pruning(store: GraphStore, records: ChatRecords) -> None:
    chat = (await records.create_chat_task(chat_req())).task.id
    plan = plan_pb2.SpawnPlan(executor="native", argv=["wgs-agent"])
    started = await records.record_run_started(rs.RecordRunStartedRequest(
        chat_id=chat, run=run(1), plan=plan, supervisor_id="sup-a", expected_state=R.RUNTIME_STATE_STARTING))
    rt = started.runtime
    assert rt.state == R.RUNTIME_STATE_RUNNING and rt.current_run.pid == 1000 and rt.plan.executor == "native"
    with pytest.raises(FailedPrecondition, match="owned by supervisor 'sup-a', not 'sup-b'"):
        await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(2), supervisor_id="sup-b"))
    res = await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[rs.RunExit(
        chat_id=chat, run=runtime_pb2.Run(number=1, signal=9, signal_name="SIGKILL", stderr_tail="boom",
                                          leftovers_ended=2),
        state=R.RUNTIME_STATE_BACKOFF, restart_count=1, last_error="agent was killed",
        next_restart_at=to_ts(utcnow() + timedelta(seconds=5)))]))
    rt = res.results[0].runtime
    assert rt.state == R.RUNTIME_STATE_BACKOFF and rt.restart_count == 1 and rt.last_error == "agent was killed"
    assert rt.HasField("next_restart_at")
    cur = rt.current_run
    assert cur.signal == 9 and cur.pid == 1000 and cur.HasField("exited_at") and cur.leftovers_ended == 2
    assert cur.end == R.RUN_END_EXITED  # an end not given is the agent's own
    assert rt.plan.executor == "native"  # unset plan keeps the stored one
    with pytest.raises(InvalidArgument, match="BACKOFF, EXITED, FAILED or STOPPED"):
        await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[
            exit_of(chat, 1, R.RUNTIME_STATE_RUNNING)]))
    for n in range(2, 8):
        await records.transition_chat(rs.TransitionChatRequest(chat_id=chat, supervisor_id="sup-a",
                                                               to_state=R.RUNTIME_STATE_STARTING))
        running = await records.record_run_started(rs.RecordRunStartedRequest(
            chat_id=chat, run=run(n, pid=1000 + n), supervisor_id="sup-a"))
        assert running.runtime.last_error == ""  # healthy again: the failure stays with its run only
        # The answer is the record as stored (built from the rows written, not read back).
        assert running.runtime == (await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat))).runtime
        await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[
            exit_of(chat, n, R.RUNTIME_STATE_BACKOFF, last_error="again")]))
    rt = (await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat))).runtime
    assert rt.current_run.number == 7 and [r.number for r in rt.previous_runs] == [6, 5, 4, 3]
    assert await count_rows(store, "chat_runs") == 5
    # A spawn that failed: run with pid 0 and an error, recorded as such.
    await records.transition_chat(rs.TransitionChatRequest(chat_id=chat, supervisor_id="sup-a",
                                                           to_state=R.RUNTIME_STATE_STARTING))
    failed = await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[rs.RunExit(
        chat_id=chat, run=runtime_pb2.Run(number=8, error="executable not found: /nope", end=R.RUN_END_SPAWN_FAILED),
        state=R.RUNTIME_STATE_FAILED, restart_count=2, last_error="executable not found: /nope")]))
    rt = failed.results[0].runtime
    assert rt.current_run.number == 8 and rt.current_run.error.startswith("executable")
    assert rt.current_run.end == R.RUN_END_SPAWN_FAILED
    with pytest.raises(FailedPrecondition, match="already has run 8"):
        await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(7), supervisor_id="sup-a"))


async def test_batched_exits_are_recorded_together_and_refused_ones_do_not_undo_the_others(
        store: GraphStore, records: ChatRecords) -> None:
    chats = []
    for i in range(3):
        chat = (await records.create_chat_task(chat_req(supervisor_id="sup-b" if i == 1 else "sup-a"))).task.id
        await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(1),
                                                                    supervisor_id="sup-b" if i == 1 else "sup-a"))
        chats.append(chat)
    resp = await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[
        exit_of(c, 1, R.RUNTIME_STATE_BACKOFF) for c in chats]))
    outcome = [(r.chat_id, r.error_code, r.runtime.state) for r in resp.results]
    assert outcome[0] == (chats[0], 0, R.RUNTIME_STATE_BACKOFF)
    assert outcome[1][:2] == (chats[1], 9) and "owned by supervisor 'sup-b'" in resp.results[1].error_message
    assert outcome[2] == (chats[2], 0, R.RUNTIME_STATE_BACKOFF)
    still = await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chats[1]))
    assert still.runtime.state == R.RUNTIME_STATE_RUNNING and not still.runtime.current_run.HasField("exited_at")
    with pytest.raises(InvalidArgument, match="exits must hold 1 to 1000"):
        await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a"))


async def test_a_stop_records_task_status_and_tags_in_the_same_transaction(records: ChatRecords) -> None:
    chat = (await records.create_chat_task(chat_req())).task.id
    await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(1), supervisor_id="sup-a"))
    await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[rs.RunExit(
        chat_id=chat, run=runtime_pb2.Run(number=1, signal=15, end=R.RUN_END_STOPPED, end_detail="ArchiveChat"),
        state=R.RUNTIME_STATE_STOPPED, task_status=S.TASK_STATUS_DONE, add_tags=["archived"])]))
    rec = await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat, with_log=True))
    assert rec.task.status == S.TASK_STATUS_DONE and "archived" in rec.task.tags
    assert rec.runtime.state == R.RUNTIME_STATE_STOPPED and rec.runtime.current_run.end_detail == "ArchiveChat"
    assert "was stopped (ArchiveChat)" in rec.task.log[-1].message


# -- the transition table ------------------------------------------------------------------------


async def test_every_pair_of_states_is_checked_against_the_transition_table(store: GraphStore,
                                                                           records: ChatRecords) -> None:
    """The graph enforces the table for every (from, to): legal ones are written, illegal ones are
    FAILED_PRECONDITION naming both states and change nothing."""
    chat = (await records.create_chat_task(chat_req())).task.id
    for source in chat_states.STATES:
        for target in chat_states.STATES:
            await force(store, chat, state=source)
            req = rs.TransitionChatRequest(chat_id=chat, supervisor_id="sup-a", to_state=target)  # type: ignore[arg-type]
            if chat_states.is_legal(source, target):
                resp = await records.transition_chat(req)
                assert resp.runtime.state == target
            else:
                with pytest.raises(FailedPrecondition) as err:
                    await records.transition_chat(req)
                assert f"{chat_states.name(source)} -> {chat_states.name(target)}" in err.value.message
                rt = (await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat))).runtime
                assert rt.state == source


async def test_transitions_check_the_callers_view_and_write_task_changes_with_them(store: GraphStore,
                                                                                   records: ChatRecords) -> None:
    from wgs.common.errors import Aborted

    chat = (await records.create_chat_task(chat_req())).task.id
    with pytest.raises(Aborted, match="is STARTING, not BACKOFF"):
        await records.transition_chat(rs.TransitionChatRequest(
            chat_id=chat, supervisor_id="sup-a", from_state=R.RUNTIME_STATE_BACKOFF, to_state=R.RUNTIME_STATE_STOPPED))
    resp = await records.transition_chat(rs.TransitionChatRequest(
        chat_id=chat, supervisor_id="sup-a", from_state=R.RUNTIME_STATE_STARTING, to_state=R.RUNTIME_STATE_STOPPED,
        task_status=S.TASK_STATUS_OPEN, last_error="", log_message="StopChat requested"))
    assert resp.runtime.state == R.RUNTIME_STATE_STOPPED and resp.task.status == S.TASK_STATUS_OPEN
    rec = await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat, with_log=True))
    assert "StopChat requested" in rec.task.log[-1].message and "STARTING -> STOPPED" in rec.task.log[-1].message


# -- leases, ownership, supervisors --------------------------------------------------------------


async def test_claim_renew_heartbeat_and_lost_chats(store: GraphStore, records: ChatRecords) -> None:
    chat = (await records.create_chat_task(chat_req(lease_seconds=60))).task.id
    with pytest.raises(FailedPrecondition, match="owned by supervisor 'sup-a' whose lease is valid until"):
        await records.claim_chat(rs.ClaimChatRequest(chat_id=chat, supervisor_id="sup-b", lease_seconds=30))
    same = await records.claim_chat(rs.ClaimChatRequest(chat_id=chat, supervisor_id="sup-a", lease_seconds=30))
    assert same.previous_supervisor_id == "sup-a" and not same.HasField("previous_lease_expired_at")
    await force(store, chat, lease_expires_at=utcnow() - timedelta(seconds=1))
    taken = await records.claim_chat(rs.ClaimChatRequest(chat_id=chat, supervisor_id="sup-b", lease_seconds=30))
    assert taken.previous_supervisor_id == "sup-a" and taken.runtime.supervisor_id == "sup-b"
    assert taken.HasField("previous_lease_expired_at") and taken.task.id == chat
    assert "claimed by supervisor sup-b from sup-a" in (
        await store.get_task(g.GetTaskRequest(id=chat))).task.log[-1].message
    await records.create_chat_task(chat_req(supervisor_id="sup-b"))
    await records.create_chat_task(chat_req(supervisor_id="sup-c"))
    # sup-a comes back: its renewal says the chat it thought it had is lost.
    back = await records.renew_leases(rs.RenewLeasesRequest(supervisor_id="sup-a", lease_seconds=30,
                                                            held_chat_ids=[chat]))
    assert back.renewed == 0 and list(back.lost_chat_ids) == [chat]
    renewed = await records.renew_leases(rs.RenewLeasesRequest(
        supervisor_id="sup-b", lease_seconds=120, advertise_address="10.0.0.2:50153", free_capacity=7,
        live_chats=2, max_live_chats=9, held_chat_ids=[chat]))
    assert renewed.renewed == 2 and list(renewed.lost_chat_ids) == []
    sups = {s.supervisor_id: s for s in (await records.list_supervisors(rs.ListSupervisorsRequest())).supervisors}
    assert set(sups) == {"sup-a", "sup-b"}
    assert sups["sup-b"].advertise_address == "10.0.0.2:50153" and sups["sup-b"].free_capacity == 7
    assert sups["sup-b"].owned_chats == 2
    with pytest.raises(NotFound):
        await records.claim_chat(rs.ClaimChatRequest(chat_id=".chat-42", supervisor_id="sup-b", lease_seconds=30))
    with pytest.raises(InvalidArgument, match="lease_seconds"):
        await records.renew_leases(rs.RenewLeasesRequest(supervisor_id="sup-b", lease_seconds=0))


async def test_validation_rejects_bad_fields_without_writing(store: GraphStore, records: ChatRecords) -> None:
    bad_calls = [
        records.create_chat_task(chat_req(supervisor_id="")),
        records.create_chat_task(chat_req(lease_seconds=0)),
        records.create_chat_task(chat_req(lease_seconds=4000)),
        records.create_chat_task(chat_req(trace_id="xyz")),
        records.create_chat_task(chat_req(trace_id="ab" * 16 + "\n")),
        records.create_chat_task(chat_req(command_argv=["", "x"])),
        records.create_chat_task(chat_req(name="a\nb")),
        records.create_chat_task(chat_req(max_live_chats=-1)),
        records.transition_chat(rs.TransitionChatRequest(chat_id=".chat-1", supervisor_id="s", to_state=0)),
        records.record_run_started(rs.RecordRunStartedRequest(chat_id=".chat-1", supervisor_id="s",
                                                              run=runtime_pb2.Run(number=1, pid=0))),
        records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="s", exits=[
            rs.RunExit(chat_id=".chat-1", run=runtime_pb2.Run(number=1, signal=999), state=R.RUNTIME_STATE_BACKOFF)])),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidArgument):
            await call
    assert await count_rows(store, "tasks") == 0


async def test_a_batch_of_exits_records_what_one_call_per_exit_records(records: ChatRecords) -> None:
    """The batched path (one query per table for the whole call) against the one-by-one path (a call
    per exit): the same runtimes, task changes and log lines for a crash, a failed spawn, a stop with
    task status and tags, an end recorded twice, a refused exit and a chat with runs to prune."""

    async def make() -> list[str]:
        chats = []
        for i in range(6):
            owner = "sup-b" if i == 4 else "sup-a"
            chat = (await records.create_chat_task(chat_req(supervisor_id=owner))).task.id
            chats.append(chat)
            if i == 1:
                continue  # STARTING: its spawn fails
            await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(1),
                                                                        supervisor_id=owner))
        for n in range(2, 8):  # chats[5] has had 6 runs: its 7th end prunes the oldest
            await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[
                exit_of(chats[5], n - 1, R.RUNTIME_STATE_BACKOFF)]))
            await records.transition_chat(rs.TransitionChatRequest(chat_id=chats[5], supervisor_id="sup-a",
                                                                   to_state=R.RUNTIME_STATE_STARTING))
            await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chats[5], run=run(n),
                                                                        supervisor_id="sup-a"))
        twice = runtime_pb2.Run(number=1, exit_code=0)
        twice.exited_at.FromSeconds(1_800_000_000)
        await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[
            rs.RunExit(chat_id=chats[3], run=twice, state=R.RUNTIME_STATE_EXITED)]))
        return chats

    def exits(chats: list[str]) -> list[rs.RunExit]:
        twice = runtime_pb2.Run(number=1, exit_code=0)
        twice.exited_at.FromSeconds(1_800_000_000)
        return [
            rs.RunExit(chat_id=chats[0], run=runtime_pb2.Run(number=1, signal=9, signal_name="SIGKILL",
                                                            stderr_tail="boom"),
                       state=R.RUNTIME_STATE_BACKOFF, restart_count=1, last_error="killed"),
            rs.RunExit(chat_id=chats[1], run=runtime_pb2.Run(number=1, error="executable not found: /nope",
                                                            end=R.RUN_END_SPAWN_FAILED, argv=["/nope"]),
                       state=R.RUNTIME_STATE_FAILED, last_error="executable not found"),
            rs.RunExit(chat_id=chats[2], run=runtime_pb2.Run(number=1, signal=15, end=R.RUN_END_STOPPED,
                                                            end_detail="ArchiveChat"),
                       state=R.RUNTIME_STATE_STOPPED, task_status=S.TASK_STATUS_DONE,
                       add_tags=["archived", "archived"]),
            rs.RunExit(chat_id=chats[3], run=twice, state=R.RUNTIME_STATE_EXITED),
            exit_of(chats[4], 1, R.RUNTIME_STATE_BACKOFF),  # owned by sup-b: refused, nothing changed
            exit_of(chats[5], 7, R.RUNTIME_STATE_FAILED, last_error="gave up"),
        ]

    def shown(rt: runtime_pb2.ChatRuntime) -> runtime_pb2.ChatRuntime:
        out = runtime_pb2.ChatRuntime()
        out.CopyFrom(rt)
        out.ClearField("state_changed_at")
        out.ClearField("lease_expires_at")
        for r in (out.current_run, *out.previous_runs):
            r.ClearField("started_at")
            if r.exited_at.seconds != 1_800_000_000:
                r.ClearField("exited_at")
        return out

    async def state_of(chat: str) -> tuple[object, ...]:
        rec = await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat, with_log=True))
        return (shown(rec.runtime), rec.task.status, sorted(rec.task.tags), [e.message for e in rec.task.log])

    one_by_one = await make()
    singles = [await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[e]))
               for e in exits(one_by_one)]
    batched = await make()
    batch = await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=exits(batched)))
    assert len(batch.results) == 6
    def message(r: rs.RunExitResult) -> str:  # the chat id and its lease's end differ between the two sets
        return re.sub(r"expires, at [^)]*", "expires, at T", r.error_message.replace(r.chat_id, "C"))

    for single, res in zip(singles, batch.results, strict=True):
        (one,) = single.results
        assert (one.error_code, message(one)) == (res.error_code, message(res))
        assert shown(one.runtime) == shown(res.runtime)
    assert batch.results[4].error_code == 9 and batch.results[3].error_code == 0
    for a, b in zip(one_by_one, batched, strict=True):
        assert await state_of(a) == await state_of(b)
    rt = (await records.get_chat_record(rs.GetChatRecordRequest(chat_id=batched[5]))).runtime
    assert [r.number for r in (rt.current_run, *rt.previous_runs)] == [7, 6, 5, 4, 3]


async def test_a_watch_of_every_chat_reads_chats_changed_together_in_one_read(
        records: ChatRecords, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.graph.records import watch_chat_records

    chats = []
    for _ in range(3):
        chat = (await records.create_chat_task(chat_req())).task.id
        await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(1), supervisor_id="sup-a"))
        chats.append(chat)
    reads: list[list[str]] = []
    real = records.records_of

    async def counted(ids: list[str]) -> list[rs.ChatRecord]:
        reads.append(list(ids))
        return await real(ids)

    monkeypatch.setattr(records, "records_of", counted)
    stream = watch_chat_records(records, rs.WatchChatRecordsRequest())
    first = asyncio.ensure_future(anext(stream))  # the watcher exists once the stream waits
    await records.transition_chat(rs.TransitionChatRequest(chat_id=chats[0], supervisor_id="sup-a",
                                                           to_state=R.RUNTIME_STATE_STOPPED))
    assert (await first).chat.task.id == chats[0]
    # Two chats end while nobody reads: both are read at once, each as it is now.
    await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[
        exit_of(chats[1], 1, R.RUNTIME_STATE_BACKOFF), exit_of(chats[2], 1, R.RUNTIME_STATE_FAILED)]))
    got = [await anext(stream), await anext(stream)]
    assert [(r.chat.task.id, r.chat.runtime.state) for r in got] == [
        (chats[1], R.RUNTIME_STATE_BACKOFF), (chats[2], R.RUNTIME_STATE_FAILED)]
    assert got[0].chat.runtime.current_run.exit_code == 1
    assert reads[-1] == [chats[1], chats[2]]
    await stream.aclose()


async def test_a_watch_with_include_current_starts_with_the_record_read_after_it_is_registered(
        records: ChatRecords, monkeypatch: pytest.MonkeyPatch) -> None:
    """WatchChat's snapshot comes from the watch itself: a change made right after the watch is
    registered is streamed after the snapshot, never lost between a separate read and the watch (a
    lost replica's chat restarted at that moment stayed STARTING in `wgs chat show --watch`)."""
    from services.graph.records import watch_chat_records

    chat = (await records.create_chat_task(chat_req())).task.id
    other = (await records.create_chat_task(chat_req())).task.id
    # With nothing changing, the current record comes at once.
    quiet = watch_chat_records(records, rs.WatchChatRecordsRequest(chat_id=other, include_current=True))
    now = (await asyncio.wait_for(anext(quiet), 10)).chat
    assert (now.task.id, now.runtime.state) == (other, R.RUNTIME_STATE_STARTING)
    await quiet.aclose()
    real_watch = records.g.fanout.watch_records

    def watch_then_change(chat_id: str):  # type: ignore[no-untyped-def]
        watcher = real_watch(chat_id)
        # The change races the snapshot: made the moment the watcher is registered, before any read.
        asyncio.get_running_loop().create_task(records.record_run_started(
            rs.RecordRunStartedRequest(chat_id=chat, run=run(1), supervisor_id="sup-a")))
        return watcher

    monkeypatch.setattr(records.g.fanout, "watch_records", watch_then_change)
    stream = watch_chat_records(records, rs.WatchChatRecordsRequest(chat_id=chat, include_current=True))
    seen = [(await anext(stream)).chat.runtime.state]
    while seen[-1] != R.RUNTIME_STATE_RUNNING:  # the snapshot (either state), then the change if it came later
        seen.append((await asyncio.wait_for(anext(stream), 10)).chat.runtime.state)
    assert seen in ([R.RUNTIME_STATE_STARTING, R.RUNTIME_STATE_RUNNING], [R.RUNTIME_STATE_RUNNING])
    await stream.aclose()
    monkeypatch.undo()

    # Every chat: first each chat as it is (the default selection of ListChatRecords), then changes.
    every = watch_chat_records(records, rs.WatchChatRecordsRequest(include_current=True))
    firsts = [(await anext(every)).chat for _ in range(2)]
    assert [(c.task.id, c.runtime.state) for c in firsts] == [
        (chat, R.RUNTIME_STATE_RUNNING), (other, R.RUNTIME_STATE_STARTING)]
    await records.transition_chat(rs.TransitionChatRequest(chat_id=other, supervisor_id="sup-a",
                                                           from_state=R.RUNTIME_STATE_STARTING,
                                                           to_state=R.RUNTIME_STATE_STOPPED))
    nxt = (await asyncio.wait_for(anext(every), 10)).chat
    assert (nxt.task.id, nxt.runtime.state) == (other, R.RUNTIME_STATE_STOPPED)
    await every.aclose()
