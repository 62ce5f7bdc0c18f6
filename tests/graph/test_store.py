"""Unit tests of the graph store (no network), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa

from services.graph import db
from services.graph.store import GraphStore
from wgs.common import procfs
from wgs.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from wgs.common.timeutil import to_ts, utcnow
from wgs.v1 import graph_pb2 as g
from wgs.v1 import plan_pb2, runtime_pb2, task_pb2

S = task_pb2
R = runtime_pb2


def chat_req(**kw: object) -> g.CreateChatTaskRequest:
    base: dict[str, object] = {"supervisor_id": "sup-a", "lease_seconds": 30}
    base.update(kw)
    return g.CreateChatTaskRequest(**base)  # type: ignore[arg-type]


async def count_rows(store: GraphStore, table: str) -> int:
    def q() -> int:
        with store.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())

    return await asyncio.to_thread(q)


async def set_lease(store: GraphStore, chat_id: str, value: object) -> None:
    def q() -> None:
        with store.engine.begin() as conn:
            conn.execute(sa.update(db.ChatRuntimeRow).where(db.ChatRuntimeRow.chat_id == chat_id)
                         .values(lease_expires_at=value))

    await asyncio.to_thread(q)


# -- tasks ---------------------------------------------------------------------------------------


async def test_create_task_defaults_log_and_idempotency(store: GraphStore) -> None:
    resp = await store.create_task(g.CreateTaskRequest(title="Write docs", tags=["b", "a", "b"], request_id="req-1"))
    assert resp.created
    t = resp.task
    assert t.id == "task-1" and t.status == S.TASK_STATUS_OPEN and t.priority == 10 and t.version == 1
    assert list(t.tags) == ["a", "b"]
    assert [e.message for e in t.log] == ["task created"]
    again = await store.create_task(g.CreateTaskRequest(title="other title", request_id="req-1"))
    assert not again.created and again.task.id == "task-1" and again.task.title == "Write docs"
    assert await count_rows(store, "tasks") == 1


async def test_create_task_explicit_id_conflict_and_reserved_ids(store: GraphStore) -> None:
    await store.create_task(g.CreateTaskRequest(id="build", title="Build"))
    with pytest.raises(AlreadyExists, match="'build' already exists"):
        await store.create_task(g.CreateTaskRequest(id="build", title="Build again"))
    with pytest.raises(InvalidArgument, match="reserved for chats"):
        await store.create_task(g.CreateTaskRequest(id=".chat-9", title="sneaky"))
    with pytest.raises(InvalidArgument, match="reserved for chats"):
        await store.create_task(g.CreateTaskRequest(title="x", tags=["chat-loop"]))
    # An allocated id skips ids already taken by hand.
    await store.create_task(g.CreateTaskRequest(id="task-1", title="manual"))
    auto = await store.create_task(g.CreateTaskRequest(title="auto"))
    assert auto.task.id == "task-2"


async def test_list_tasks_filters_and_paging(store: GraphStore) -> None:
    for i in range(5):
        await store.create_task(g.CreateTaskRequest(id=f"t{i}", title=f"T{i}", tags=["even"] if i % 2 == 0 else []))
    await store.update_task(g.UpdateTaskRequest(id="t1", update=g.TaskUpdate(status=S.TASK_STATUS_DONE)))
    page1 = await store.list_tasks(g.ListTasksRequest(page_size=2))
    assert [t.id for t in page1.tasks] == ["t0", "t1"] and page1.next_page_token
    page2 = await store.list_tasks(g.ListTasksRequest(page_size=2, page_token=page1.next_page_token))
    page3 = await store.list_tasks(g.ListTasksRequest(page_size=2, page_token=page2.next_page_token))
    assert [t.id for t in page2.tasks] == ["t2", "t3"] and [t.id for t in page3.tasks] == ["t4"]
    assert page3.next_page_token == ""
    tagged = await store.list_tasks(g.ListTasksRequest(tag="even"))
    assert [t.id for t in tagged.tasks] == ["t0", "t2", "t4"]
    done = await store.list_tasks(g.ListTasksRequest(statuses=[S.TASK_STATUS_DONE]))
    assert [t.id for t in done.tasks] == ["t1"]
    for bad in ("not base64!", "Li4u", "x" * 500):
        with pytest.raises(InvalidArgument, match="page_token"):
            await store.list_tasks(g.ListTasksRequest(page_token=bad))
    with pytest.raises(InvalidArgument, match="status"):
        await store.list_tasks(g.ListTasksRequest(statuses=[S.TASK_STATUS_UNSPECIFIED]))


async def test_update_task_fields_timestamps_tags_and_log(store: GraphStore) -> None:
    await store.create_task(g.CreateTaskRequest(id="t", title="T", tags=["x"]))
    upd = await store.update_task(g.UpdateTaskRequest(
        id="t", expected_version=1, actor="alice", log_message="picked up",
        update=g.TaskUpdate(status=S.TASK_STATUS_IN_PROGRESS, assigned="agent-1", add_tags=["y"], remove_tags=["x"]),
    ))
    t = upd.task
    assert t.version == 2 and t.status == S.TASK_STATUS_IN_PROGRESS and t.assigned == "agent-1"
    assert t.HasField("started_at") and not t.HasField("completed_at")
    assert list(t.tags) == ["y"]
    assert (t.log[-1].actor, t.log[-1].message) == ("alice", "picked up")
    done = (await store.update_task(g.UpdateTaskRequest(id="t", update=g.TaskUpdate(status=S.TASK_STATUS_DONE)))).task
    assert done.version == 3 and done.HasField("completed_at")
    assert done.log[-1].message == "status TASK_STATUS_IN_PROGRESS -> TASK_STATUS_DONE"
    with pytest.raises(NotFound, match="'missing' does not exist"):
        await store.update_task(g.UpdateTaskRequest(id="missing", update=g.TaskUpdate(title="x")))
    with pytest.raises(InvalidArgument, match="title must not be empty"):
        await store.update_task(g.UpdateTaskRequest(id="t", update=g.TaskUpdate(title="  ")))


async def test_update_task_version_mismatch_is_aborted_and_changes_nothing(store: GraphStore) -> None:
    await store.create_task(g.CreateTaskRequest(id="t", title="T"))
    await store.update_task(g.UpdateTaskRequest(id="t", update=g.TaskUpdate(title="T2")))
    with pytest.raises(Aborted, match="current version is 2, expected 1"):
        await store.update_task(g.UpdateTaskRequest(id="t", expected_version=1, update=g.TaskUpdate(title="T3")))
    got = (await store.get_task(g.GetTaskRequest(id="t"))).task
    assert got.title == "T2" and got.version == 2


async def test_racing_updates_with_same_expected_version_exactly_one_wins(store: GraphStore) -> None:
    await store.create_task(g.CreateTaskRequest(id="t", title="T"))
    for round_ in range(5):
        version = (await store.get_task(g.GetTaskRequest(id="t"))).task.version
        results = await asyncio.gather(
            *[store.update_task(g.UpdateTaskRequest(id="t", expected_version=version,
                                                    update=g.TaskUpdate(title=f"r{round_}-{i}")))
              for i in range(4)],
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, g.UpdateTaskResponse)]
        losses = [r for r in results if isinstance(r, Aborted)]
        assert len(wins) == 1 and len(losses) == 3, results
        final = (await store.get_task(g.GetTaskRequest(id="t"))).task
        assert final.version == version + 1 and final.title == wins[0].task.title


async def test_append_task_log(store: GraphStore) -> None:
    await store.create_task(g.CreateTaskRequest(id="t", title="T"))
    entry = (await store.append_task_log(g.AppendTaskLogRequest(id="t", message="hello"))).entry
    assert entry.actor == "api" and entry.message == "hello"
    with pytest.raises(NotFound):
        await store.append_task_log(g.AppendTaskLogRequest(id="nope", message="x"))
    with pytest.raises(InvalidArgument, match="too long"):
        await store.append_task_log(g.AppendTaskLogRequest(id="t", message="x" * 9000))
    assert len((await store.get_task(g.GetTaskRequest(id="t"))).task.log) == 2


# -- chats ---------------------------------------------------------------------------------------


async def test_create_chat_task_record_and_idempotency(store: GraphStore) -> None:
    resp = await store.create_chat_task(chat_req(name="helper", model="qwen3", executor="native",
                                                 request_id="c-1", trace_id="ab" * 16))
    assert resp.created
    t, rt = resp.task, resp.runtime
    assert t.id == ".chat-1" and t.title == "Chat: helper" and t.status == S.TASK_STATUS_IN_PROGRESS
    assert t.priority == 50 and list(t.tags) == ["chat-loop"] and t.model == "qwen3"
    assert rt.state == R.RUNTIME_STATE_STARTING and rt.supervisor_id == "sup-a" and rt.trace_id == "ab" * 16
    assert rt.lease_expires_at.ToDatetime() > utcnow().replace(tzinfo=None)
    again = await store.create_chat_task(chat_req(name="other", request_id="c-1"))
    assert not again.created and again.task.id == ".chat-1" and again.task.title == "Chat: helper"
    unnamed = await store.create_chat_task(chat_req(command_argv=["bash", "-c", "cat"]))
    assert unnamed.task.id == ".chat-2" and unnamed.task.title == "Chat 2"
    assert list(unnamed.task.command_argv) == ["bash", "-c", "cat"]
    await store.create_task(g.CreateTaskRequest(title="plain", request_id="plain-1"))
    with pytest.raises(AlreadyExists, match="not a chat"):
        await store.create_chat_task(chat_req(request_id="plain-1"))


async def test_concurrent_chat_creation_gives_distinct_ids(store: GraphStore) -> None:
    results = await asyncio.gather(*[store.create_chat_task(chat_req(name=f"c{i}")) for i in range(50)])
    ids = [r.task.id for r in results]
    assert len(set(ids)) == 50
    assert sorted(int(i.split("-")[1]) for i in ids) == list(range(1, 51))


async def test_concurrent_same_request_id_creates_one_chat(store: GraphStore) -> None:
    results = await asyncio.gather(*[store.create_chat_task(chat_req(request_id="same")) for _ in range(10)])
    assert {r.task.id for r in results} == {".chat-1"}
    assert sum(r.created for r in results) == 1
    assert await count_rows(store, "chat_runtime") == 1


async def test_live_chat_cap_is_enforced_under_concurrency_and_ids_not_reused(store: GraphStore) -> None:
    results = await asyncio.gather(*[store.create_chat_task(chat_req(max_live_chats=3)) for _ in range(8)],
                                   return_exceptions=True)
    ok = [r for r in results if isinstance(r, g.CreateChatTaskResponse)]
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(ok) == 3 and len(refused) == 5
    assert "3 chats are live and the cap is 3" in refused[0].message
    # Stopping one makes room; the new chat gets a fresh id, never one handed out before.
    await store.update_task(g.UpdateTaskRequest(id=ok[0].task.id, update=g.TaskUpdate(status=S.TASK_STATUS_OPEN)))
    new = await store.create_chat_task(chat_req(max_live_chats=3))
    assert new.task.id not in {r.task.id for r in ok}


async def test_list_chat_records_filters(store: GraphStore) -> None:
    for i in range(4):
        await store.create_chat_task(chat_req(supervisor_id="sup-a" if i < 3 else "sup-b"))
    await store.update_task(g.UpdateTaskRequest(id=".chat-2", update=g.TaskUpdate(status=S.TASK_STATUS_ABANDONED)))
    await store.update_task(g.UpdateTaskRequest(id=".chat-3", update=g.TaskUpdate(
        status=S.TASK_STATUS_DONE, add_tags=["archived"])))
    live = await store.list_chat_records(g.ListChatRecordsRequest())
    assert [c.task.id for c in live.chats] == [".chat-1", ".chat-4"]
    every = await store.list_chat_records(g.ListChatRecordsRequest(include_ended=True, page_size=3))
    assert [c.task.id for c in every.chats] == [".chat-1", ".chat-2", ".chat-3"] and every.next_page_token
    rest = await store.list_chat_records(g.ListChatRecordsRequest(include_ended=True,
                                                                  page_token=every.next_page_token))
    assert [c.task.id for c in rest.chats] == [".chat-4"] and not rest.next_page_token
    mine = await store.list_chat_records(g.ListChatRecordsRequest(supervisor_id="sup-b"))
    assert [c.task.id for c in mine.chats] == [".chat-4"]
    starting = await store.list_chat_records(g.ListChatRecordsRequest(states=[R.RUNTIME_STATE_RUNNING]))
    assert list(starting.chats) == []
    with pytest.raises(InvalidArgument, match="cannot be removed"):
        await store.update_task(g.UpdateTaskRequest(id=".chat-1", update=g.TaskUpdate(remove_tags=["chat-loop"])))


# -- messages ------------------------------------------------------------------------------------


async def test_messages_seq_gap_free_under_concurrency_and_idempotent(store: GraphStore) -> None:
    chat = (await store.create_chat_task(chat_req())).task.id
    results = await asyncio.gather(*[
        store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER, content=f"m{i}"))
        for i in range(20)
    ])
    assert sorted(r.message.seq for r in results) == list(range(1, 21))
    first = await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER,
                                                              content="q", request_id="r1"))
    dup = await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER,
                                                            content="q again", request_id="r1"))
    answer = await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_ASSISTANT,
                                                               content="a", request_id="r1"))
    answer2 = await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_ASSISTANT,
                                                                content="a twice", request_id="r1"))
    assert first.created and not dup.created and dup.message.seq == first.message.seq == 21
    assert answer.created and answer.message.seq == 22 and not answer2.created and answer2.message.content == "a"
    listed = await store.list_messages(g.ListMessagesRequest(chat_id=chat, after_seq=20))
    assert [m.seq for m in listed.messages] == [21, 22]
    with pytest.raises(NotFound, match=r"chat '\.chat-99' does not exist"):
        await store.append_message(g.AppendMessageRequest(chat_id=".chat-99", role=S.MESSAGE_ROLE_USER, content="x"))
    with pytest.raises(InvalidArgument, match="role"):
        await store.append_message(g.AppendMessageRequest(chat_id=chat, content="x"))
    assert await count_rows(store, "chat_messages") == 22


async def test_watch_streams_stored_then_new_then_ends_on_shutdown(store: GraphStore) -> None:
    chat = (await store.create_chat_task(chat_req())).task.id
    for i in range(3):
        await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER, content=f"old{i}"))
    got: list[task_pb2.ChatMessage] = []
    gen = store.watch_messages(g.WatchMessagesRequest(chat_id=chat, after_seq=1))
    for _ in range(2):
        got.append(await asyncio.wait_for(anext(gen), 5))
    pending = asyncio.ensure_future(asyncio.wait_for(anext(gen), 5))
    await asyncio.sleep(0)
    await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_ASSISTANT, content="new"))
    got.append(await pending)
    assert [(m.seq, m.content) for m in got] == [(2, "old1"), (3, "old2"), (4, "new")]
    store.begin_shutdown()
    with pytest.raises(Unavailable, match="after_seq=4"):
        await asyncio.wait_for(anext(gen), 5)


async def test_watch_sees_writes_from_another_process(store: GraphStore, db_url: str) -> None:
    chat = (await store.create_chat_task(chat_req())).task.id
    other = GraphStore(db.create_engine(db_url))  # a second writer: no in-process notification
    try:
        gen = store.watch_messages(g.WatchMessagesRequest(chat_id=chat))
        pending = asyncio.ensure_future(asyncio.wait_for(anext(gen), 5))
        await other.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER, content="from elsewhere"))
        assert (await pending).content == "from elsewhere"
        await gen.aclose()
    finally:
        await other.close()


async def test_watch_unknown_chat_is_not_found(store: GraphStore) -> None:
    with pytest.raises(NotFound):
        await anext(store.watch_messages(g.WatchMessagesRequest(chat_id=".chat-7")))


# -- runtime -------------------------------------------------------------------------------------


def run(number: int, pid: int = 1000, **kw: object) -> runtime_pb2.Run:
    return runtime_pb2.Run(number=number, pid=pid, argv=["wgs-agent", "native"], hostname="test-host",
                           **kw)  # type: ignore[arg-type]


async def test_run_records_owner_check_and_pruning(store: GraphStore) -> None:
    chat = (await store.create_chat_task(chat_req())).task.id
    plan = plan_pb2.SpawnPlan(chat_id=chat, executor="native", argv=["wgs-agent"])
    started = await store.record_run_started(g.RecordRunStartedRequest(
        chat_id=chat, run=run(1), plan=plan, supervisor_id="sup-a"))
    rt = started.runtime
    assert rt.state == R.RUNTIME_STATE_RUNNING and rt.current_run.pid == 1000 and rt.plan.executor == "native"
    with pytest.raises(FailedPrecondition, match="owned by supervisor 'sup-a', not 'sup-b'"):
        await store.record_run_started(g.RecordRunStartedRequest(chat_id=chat, run=run(2), supervisor_id="sup-b"))
    exited = await store.record_run_exited(g.RecordRunExitedRequest(
        chat_id=chat, run=runtime_pb2.Run(number=1, signal=9, signal_name="SIGKILL", stderr_tail="boom"),
        state=R.RUNTIME_STATE_BACKOFF, restart_count=1, last_error="agent was killed", supervisor_id="sup-a",
        next_restart_at=to_ts(utcnow() + timedelta(seconds=5))))
    rt = exited.runtime
    assert rt.state == R.RUNTIME_STATE_BACKOFF and rt.restart_count == 1 and rt.last_error == "agent was killed"
    assert rt.HasField("next_restart_at")
    assert rt.current_run.signal == 9 and rt.current_run.pid == 1000 and rt.current_run.HasField("exited_at")
    assert rt.plan.executor == "native"  # unset plan keeps the stored one
    with pytest.raises(InvalidArgument, match="BACKOFF, EXITED, FAILED or STOPPED"):
        await store.record_run_exited(g.RecordRunExitedRequest(chat_id=chat, run=run(1),
                                                               state=R.RUNTIME_STATE_RUNNING, supervisor_id="sup-a"))
    for n in range(2, 8):
        await store.record_run_started(g.RecordRunStartedRequest(chat_id=chat, run=run(n, pid=1000 + n),
                                                                 supervisor_id="sup-a"))
    rt = (await store.get_chat_record(g.GetChatRecordRequest(chat_id=chat))).runtime
    assert rt.current_run.number == 7 and [r.number for r in rt.previous_runs] == [6, 5, 4, 3]
    assert await count_rows(store, "chat_runs") == 5
    # A spawn that failed: run with pid 0 and an error, recorded as such.
    failed = await store.record_run_exited(g.RecordRunExitedRequest(
        chat_id=chat, run=runtime_pb2.Run(number=8, error="executable not found: /nope"),
        state=R.RUNTIME_STATE_FAILED, restart_count=2, last_error="executable not found: /nope",
        supervisor_id="sup-a"))
    assert failed.runtime.current_run.number == 8 and failed.runtime.current_run.error.startswith("executable")
    upd = await store.update_chat_runtime(g.UpdateChatRuntimeRequest(
        chat_id=chat, state=R.RUNTIME_STATE_STOPPED, last_error="", supervisor_id="sup-a"))
    assert upd.runtime.state == R.RUNTIME_STATE_STOPPED and upd.runtime.last_error == ""
    assert upd.runtime.restart_count == 2  # unset restart_count keeps it


async def test_claim_and_renew_leases(store: GraphStore) -> None:
    chat = (await store.create_chat_task(chat_req(lease_seconds=60))).task.id
    with pytest.raises(FailedPrecondition, match="owned by supervisor 'sup-a' whose lease is valid until"):
        await store.claim_chat(g.ClaimChatRequest(chat_id=chat, supervisor_id="sup-b", lease_seconds=30))
    same = await store.claim_chat(g.ClaimChatRequest(chat_id=chat, supervisor_id="sup-a", lease_seconds=30))
    assert same.previous_supervisor_id == "sup-a"
    await set_lease(store, chat, utcnow() - timedelta(seconds=1))
    taken = await store.claim_chat(g.ClaimChatRequest(chat_id=chat, supervisor_id="sup-b", lease_seconds=30))
    assert taken.previous_supervisor_id == "sup-a" and taken.runtime.supervisor_id == "sup-b"
    assert "claimed by supervisor sup-b from sup-a" in (
        await store.get_task(g.GetTaskRequest(id=chat))).task.log[-1].message
    await store.create_chat_task(chat_req(supervisor_id="sup-b"))
    await store.create_chat_task(chat_req(supervisor_id="sup-c"))
    renewed = await store.renew_leases(g.RenewLeasesRequest(supervisor_id="sup-b", lease_seconds=120))
    assert renewed.renewed == 2
    with pytest.raises(NotFound):
        await store.claim_chat(g.ClaimChatRequest(chat_id=".chat-42", supervisor_id="sup-b", lease_seconds=30))
    with pytest.raises(InvalidArgument, match="lease_seconds"):
        await store.renew_leases(g.RenewLeasesRequest(supervisor_id="sup-b", lease_seconds=0))


# -- reconcile -----------------------------------------------------------------------------------


async def test_reconcile_needs_proof(store: GraphStore) -> None:
    valid = (await store.create_chat_task(chat_req(lease_seconds=600))).task.id
    expired = (await store.create_chat_task(chat_req(supervisor_id="sup-gone"))).task.id
    await set_lease(store, expired, utcnow() - timedelta(seconds=5))
    await store.create_task(g.CreateTaskRequest(id="unassigned", title="x", status=S.TASK_STATUS_IN_PROGRESS))
    await store.create_task(g.CreateTaskRequest(id="assigned", title="x", status=S.TASK_STATUS_IN_PROGRESS))
    await store.update_task(g.UpdateTaskRequest(id="assigned", update=g.TaskUpdate(assigned="agent-7")))

    dry = await store.reconcile(g.ReconcileRequest(dry_run=True))
    assert dry.examined == 4
    assert [(a.task_id, a.applied) for a in dry.actions] == [(expired, False)]
    assert "lease of supervisor 'sup-gone' expired" in dry.actions[0].reason
    kept = {k.task_id: k.reason for k in dry.kept}
    assert set(kept) == {valid, "unassigned", "assigned"}
    assert "valid until" in kept[valid] and "no owner recorded" in kept["unassigned"]
    assert "assigned to 'agent-7'" in kept["assigned"]
    still = await store.get_chat_record(g.GetChatRecordRequest(chat_id=expired))
    assert still.task.status == S.TASK_STATUS_IN_PROGRESS and still.runtime.state == R.RUNTIME_STATE_STARTING

    real = await store.reconcile(g.ReconcileRequest())
    assert [(a.task_id, a.from_status, a.to_status, a.applied) for a in real.actions] == [
        (expired, S.TASK_STATUS_IN_PROGRESS, S.TASK_STATUS_OPEN, True)]
    rec = await store.get_chat_record(g.GetChatRecordRequest(chat_id=expired))
    assert rec.task.status == S.TASK_STATUS_OPEN and rec.runtime.state == R.RUNTIME_STATE_STOPPED
    assert "expired" in rec.runtime.last_error
    assert rec.task.log[-1].actor == "reconcile" and "expired" in rec.task.log[-1].message
    for untouched in (valid, "unassigned", "assigned"):
        assert (await store.get_task(g.GetTaskRequest(id=untouched))).task.status == S.TASK_STATUS_IN_PROGRESS
    assert (await store.reconcile(g.ReconcileRequest())).actions == []


async def test_reconcile_run_proof_on_this_host(store: GraphStore) -> None:
    """Without a lease, a recorded run on this host proves death by a dead pid or reused pid."""
    sleeper = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        ticks = procfs.start_ticks(sleeper.pid)
        assert ticks is not None
        dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await dead.wait()
        cases = {
            "alive": run(1, pid=sleeper.pid, process_start_ticks=ticks),
            "reused": run(1, pid=sleeper.pid, process_start_ticks=ticks + 12345),
            "dead": run(1, pid=dead.pid, process_start_ticks=1),
            "elsewhere": runtime_pb2.Run(number=1, pid=dead.pid, hostname="other-host"),
        }
        ids = {}
        for name, r in cases.items():
            chat = (await store.create_chat_task(chat_req())).task.id
            await store.record_run_started(g.RecordRunStartedRequest(chat_id=chat, run=r, supervisor_id="sup-a"))
            await set_lease(store, chat, None)
            ids[chat] = name
        resp = await store.reconcile(g.ReconcileRequest())
        reset = {ids[a.task_id]: a.reason for a in resp.actions}
        kept = {ids[k.task_id]: k.reason for k in resp.kept}
        assert set(reset) == {"reused", "dead"} and set(kept) == {"alive", "elsewhere"}
        assert "belongs to another process" in reset["reused"] and "is gone" in reset["dead"]
        assert "alive" in kept["alive"] and "other-host" in kept["elsewhere"]
    finally:
        sleeper.kill()
        await sleeper.wait()


async def test_validation_rejects_bad_fields_without_writing(store: GraphStore) -> None:
    bad_calls = [
        store.create_task(g.CreateTaskRequest(title="")),
        store.create_task(g.CreateTaskRequest(title="x" * 600)),
        store.create_task(g.CreateTaskRequest(title="x", tags=["bad tag"])),
        store.create_task(g.CreateTaskRequest(title="x", request_id="has space")),
        store.create_task(g.CreateTaskRequest(title="x", status=99)),  # type: ignore[arg-type]
        store.create_chat_task(chat_req(supervisor_id="")),
        store.create_chat_task(chat_req(lease_seconds=0)),
        store.create_chat_task(chat_req(lease_seconds=4000)),
        store.create_chat_task(chat_req(trace_id="xyz")),
        store.create_chat_task(chat_req(command_argv=["", "x"])),
        store.create_chat_task(chat_req(name="a\nb")),
        store.create_chat_task(chat_req(max_live_chats=-1)),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidArgument):
            await call
    assert await count_rows(store, "tasks") == 0
    assert await count_rows(store, "counters") == 2
