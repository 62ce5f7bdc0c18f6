"""Unit tests of the graph store (no network), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest
import sqlalchemy as sa

from services.graph import db
from services.graph.records import ChatRecords
from services.graph.store import GraphStore
from wgs.common import procfs
from wgs.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from wgs.common.timeutil import utcnow
from wgs.v1 import graph_pb2 as g
from wgs.v1 import runtime_pb2, task_pb2
from wgs.v1 import runtime_service_pb2 as rs

S = task_pb2
R = runtime_pb2


def chat_req(**kw: object) -> rs.CreateChatTaskRequest:
    base: dict[str, object] = {"supervisor_id": "sup-a", "lease_seconds": 30}
    base.update(kw)
    return rs.CreateChatTaskRequest(**base)  # type: ignore[arg-type]


def run(number: int, pid: int = 1000, **kw: object) -> runtime_pb2.Run:
    kw.setdefault("hostname", "test-host")
    return runtime_pb2.Run(number=number, pid=pid, argv=["wgs-agent", "native"], **kw)  # type: ignore[arg-type]


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


# -- messages ------------------------------------------------------------------------------------


async def test_messages_seq_gap_free_under_concurrency_and_idempotent(store: GraphStore,
                                                                     records: ChatRecords) -> None:
    chat = (await records.create_chat_task(chat_req())).task.id
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


async def test_watch_streams_stored_then_new_then_ends_on_shutdown(store: GraphStore, records: ChatRecords) -> None:
    chat = (await records.create_chat_task(chat_req())).task.id
    for i in range(3):
        await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER, content=f"old{i}"))
    got: list[task_pb2.ChatMessage] = []
    gen = store.watch_messages(g.WatchMessagesRequest(chat_id=chat, after_seq=1))
    for _ in range(2):
        got.append((await asyncio.wait_for(anext(gen), 5)).message)
    pending = asyncio.ensure_future(asyncio.wait_for(anext(gen), 5))
    await asyncio.sleep(0)
    await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_ASSISTANT, content="new"))
    got.append((await pending).message)
    assert [(m.seq, m.content) for m in got] == [(2, "old1"), (3, "old2"), (4, "new")]
    store.begin_shutdown()
    with pytest.raises(Unavailable, match="after_seq=4"):
        await asyncio.wait_for(anext(gen), 5)


async def test_watch_unknown_chat_is_not_found(store: GraphStore) -> None:
    with pytest.raises(NotFound):
        await anext(store.watch_messages(g.WatchMessagesRequest(chat_id=".chat-7")))


# -- what agents report --------------------------------------------------------------------------


async def live_chat(records: ChatRecords, number: int = 1) -> str:
    chat = (await records.create_chat_task(chat_req())).task.id
    await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(number), supervisor_id="sup-a"))
    return chat


async def test_agent_status_reports_are_chat_state_until_a_later_answer_succeeds(
        store: GraphStore, records: ChatRecords) -> None:
    chat = await live_chat(records)
    err = runtime_pb2.AnswerError(error_class="context_overflow", message="the prompt exceeds 2048 tokens",
                                  request_id="r1")
    await store.report_agent_status(g.ReportAgentStatusRequest(chat_id=chat, run_number=1, answer_error=err,
                                                               input_tokens=10))
    wait = runtime_pb2.EndpointWait(reason="connection refused")
    wait.since.FromDatetime(utcnow())
    await store.report_agent_status(g.ReportAgentStatusRequest(chat_id=chat, run_number=1, waiting=wait))
    rt = (await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat))).runtime
    assert rt.agent.last_answer_error.message == "the prompt exceeds 2048 tokens"
    assert rt.agent.last_answer_error.HasField("at") and rt.agent.waiting.reason == "connection refused"
    ok = await store.report_agent_status(g.ReportAgentStatusRequest(
        chat_id=chat, run_number=1, answer_succeeded=True, endpoint_ok=True, input_tokens=5, output_tokens=7))
    assert not ok.status.HasField("last_answer_error") and not ok.status.HasField("waiting")
    assert (ok.status.input_tokens, ok.status.output_tokens, ok.status.answers) == (15, 7, 1)
    # Only the live run reports: an ended or other run is refused, and nothing changes.
    with pytest.raises(FailedPrecondition, match="not its live run"):
        await store.report_agent_status(g.ReportAgentStatusRequest(chat_id=chat, run_number=2, input_tokens=1))
    await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[rs.RunExit(
        chat_id=chat, run=runtime_pb2.Run(number=1, exit_code=0), state=R.RUNTIME_STATE_EXITED)]))
    with pytest.raises(FailedPrecondition, match="not its live run"):
        await store.report_agent_status(g.ReportAgentStatusRequest(chat_id=chat, run_number=1, input_tokens=1))
    rt = (await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat))).runtime
    assert rt.agent.input_tokens == 15 and not rt.agent.HasField("waiting")  # totals kept, waiting ended


async def test_the_unlocked_live_run_read_agrees_with_the_locked_rule_through_a_chats_life(
        store: GraphStore, records: ChatRecords) -> None:
    """is_live_run (every agent call, every reply piece) is a plain read; the writers' _live_run
    checks under a lock. Both must say the same for every run number at every step."""
    async def agree(chat: str, live: set[int]) -> None:
        def locked(number: int) -> bool:
            with store.read() as session:
                try:
                    store._live_run(session, chat, number)
                except (FailedPrecondition, NotFound):
                    return False
                return True

        for number in range(0, 5):
            fast, slow = await store.is_live_run(chat, number), await store.run(locked, number)
            assert fast == slow == (number in live), (number, fast, slow, live)

    assert not await store.is_live_run(".chat-999", 1)
    chat = (await records.create_chat_task(chat_req())).task.id
    await agree(chat, {1})  # STARTING, no run yet: run 1 is being spawned
    await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(1), supervisor_id="sup-a"))
    await agree(chat, {1})
    await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[rs.RunExit(
        chat_id=chat, run=runtime_pb2.Run(number=1, exit_code=1), state=R.RUNTIME_STATE_BACKOFF, restart_count=1)]))
    await agree(chat, set())  # exited, waiting to restart
    await records.transition_chat(rs.TransitionChatRequest(chat_id=chat, supervisor_id="sup-a",
                                                           to_state=R.RUNTIME_STATE_STARTING))
    await agree(chat, {2})
    await records.record_run_started(rs.RecordRunStartedRequest(chat_id=chat, run=run(2), supervisor_id="sup-a"))
    await agree(chat, {2})
    await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[rs.RunExit(
        chat_id=chat, run=runtime_pb2.Run(number=2, exit_code=0), state=R.RUNTIME_STATE_EXITED)]))
    await agree(chat, set())


async def test_partial_replies_reach_watchers_that_ask_and_late_joiners_get_the_text_so_far(
        store: GraphStore, records: ChatRecords) -> None:
    chat = await live_chat(records)
    plain = store.watch_messages(g.WatchMessagesRequest(chat_id=chat))
    plain_next = asyncio.ensure_future(anext(plain))
    early = store.watch_messages(g.WatchMessagesRequest(chat_id=chat, include_partial=True))
    early_next = asyncio.ensure_future(anext(early))
    await asyncio.sleep(0)
    sent = await store.publish_partial(g.PublishPartialMessageRequest(chat_id=chat, run_number=1, request_id="r1",
                                                                      offset=0, text="Hel"))
    first = await asyncio.wait_for(early_next, 5)
    assert sent.delivered == 1 and first.partial.text == "Hel" and first.partial.offset == 0
    await store.publish_partial(g.PublishPartialMessageRequest(chat_id=chat, run_number=1, request_id="r1",
                                                               offset=3, text="lo"))
    assert (await asyncio.wait_for(anext(early), 5)).partial.text == "lo"
    late = store.watch_messages(g.WatchMessagesRequest(chat_id=chat, include_partial=True))
    joined = await asyncio.wait_for(anext(late), 5)
    assert joined.partial.offset == 0 and joined.partial.text == "Hello"  # everything so far, at once
    await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_ASSISTANT, content="Hello!",
                                                      request_id="r1"))
    assert (await asyncio.wait_for(plain_next, 5)).message.content == "Hello!"  # no partials for it
    assert (await asyncio.wait_for(anext(early), 5)).message.content == "Hello!"
    after = store.watch_messages(g.WatchMessagesRequest(chat_id=chat, include_partial=True))
    assert (await asyncio.wait_for(anext(after), 5)).message.content == "Hello!"  # the reply is done: no partial
    with pytest.raises(FailedPrecondition, match="live run"):
        await store.publish_partial(g.PublishPartialMessageRequest(chat_id=chat, run_number=9, request_id="r1",
                                                                   text="x"))
    for gen in (plain, early, late, after):
        await gen.aclose()


async def test_message_pages(store: GraphStore, records: ChatRecords) -> None:
    chat = (await records.create_chat_task(chat_req())).task.id
    for i in range(5):
        await store.append_message(g.AppendMessageRequest(chat_id=chat, role=S.MESSAGE_ROLE_USER, content=f"m{i}"))
    page = await store.list_messages(g.ListMessagesRequest(chat_id=chat, page_size=2))
    seen = [m.seq for m in page.messages]
    while page.next_page_token:
        page = await store.list_messages(g.ListMessagesRequest(chat_id=chat, page_size=2,
                                                               page_token=page.next_page_token))
        seen += [m.seq for m in page.messages]
    assert seen == [1, 2, 3, 4, 5]
    with pytest.raises(InvalidArgument, match="page_token") as err:
        await store.list_messages(g.ListMessagesRequest(chat_id=chat, page_token="!!"))
    assert err.value.field == "page_token"  # the google.rpc.BadRequest field violation


# -- reconcile -----------------------------------------------------------------------------------


async def test_reconcile_needs_proof(store: GraphStore, records: ChatRecords) -> None:
    valid = (await records.create_chat_task(chat_req(lease_seconds=600))).task.id
    expired = (await records.create_chat_task(chat_req(supervisor_id="sup-gone"))).task.id
    await set_lease(store, expired, utcnow() - timedelta(seconds=5))
    no_lease = (await records.create_chat_task(chat_req(supervisor_id="sup-x"))).task.id
    await set_lease(store, no_lease, None)
    await store.create_task(g.CreateTaskRequest(id="unassigned", title="x", status=S.TASK_STATUS_IN_PROGRESS))
    await store.create_task(g.CreateTaskRequest(id="assigned", title="x", status=S.TASK_STATUS_IN_PROGRESS))
    await store.update_task(g.UpdateTaskRequest(id="assigned", update=g.TaskUpdate(assigned="agent-7")))

    dry = await store.reconcile(g.ReconcileRequest(dry_run=True))
    assert dry.examined == 5
    assert [(a.task_id, a.applied) for a in dry.actions] == [(expired, False)]
    assert "lease of supervisor 'sup-gone' expired" in dry.actions[0].reason
    kept = {k.task_id: k.reason for k in dry.kept}
    assert set(kept) == {valid, no_lease, "unassigned", "assigned"}
    assert "valid until" in kept[valid] and "no owner recorded" in kept["unassigned"]
    assert "assigned to 'agent-7'" in kept["assigned"] and "no lease recorded" in kept[no_lease]
    still = await records.get_chat_record(rs.GetChatRecordRequest(chat_id=expired))
    assert still.task.status == S.TASK_STATUS_IN_PROGRESS and still.runtime.state == R.RUNTIME_STATE_STARTING

    real = await store.reconcile(g.ReconcileRequest())
    assert [(a.task_id, a.from_status, a.to_status, a.applied) for a in real.actions] == [
        (expired, S.TASK_STATUS_IN_PROGRESS, S.TASK_STATUS_OPEN, True)]
    rec = await records.get_chat_record(rs.GetChatRecordRequest(chat_id=expired, with_log=True))
    assert rec.task.status == S.TASK_STATUS_OPEN and rec.runtime.state == R.RUNTIME_STATE_STOPPED
    assert "expired" in rec.runtime.last_error
    assert rec.task.log[-1].actor == "reconcile" and "expired" in rec.task.log[-1].message
    for untouched in (valid, no_lease, "unassigned", "assigned"):
        assert (await store.get_task(g.GetTaskRequest(id=untouched))).task.status == S.TASK_STATUS_IN_PROGRESS
    assert (await store.reconcile(g.ReconcileRequest())).actions == []


async def test_reconcile_judges_leases_only_a_valid_lease_keeps_a_chat_whose_recorded_pid_is_dead(
        store: GraphStore, records: ChatRecords) -> None:
    """The graph may run on another host than the agent (another pod), so a pid means nothing to it:
    while the owner's lease is valid the owner is alive and acting on the chat, whatever the pid."""
    no_such_pid = 1 << 22  # PID_MAX_LIMIT of 64-bit Linux: no process has this pid
    assert procfs.start_ticks(no_such_pid) is None
    chat = (await records.create_chat_task(chat_req(lease_seconds=600))).task.id
    await records.record_run_started(rs.RecordRunStartedRequest(
        chat_id=chat, supervisor_id="sup-a",
        run=run(1, pid=no_such_pid, process_start_ticks=12345, hostname=socket.gethostname())))
    resp = await store.reconcile(g.ReconcileRequest())
    assert resp.actions == [] and [k.task_id for k in resp.kept] == [chat]
    assert "lease of supervisor 'sup-a' valid until" in resp.kept[0].reason
    rec = await records.get_chat_record(rs.GetChatRecordRequest(chat_id=chat))
    assert rec.task.status == S.TASK_STATUS_IN_PROGRESS and rec.runtime.state == R.RUNTIME_STATE_RUNNING
    assert rec.runtime.current_run.pid == no_such_pid and not rec.runtime.current_run.HasField("exited_at")


async def test_reconcile_keeps_a_chat_parked_by_its_supervisors_shutdown(store: GraphStore,
                                                                         records: ChatRecords) -> None:
    chat = await live_chat(records)
    await records.record_run_exited(rs.RecordRunExitedRequest(supervisor_id="sup-a", exits=[rs.RunExit(
        chat_id=chat, run=runtime_pb2.Run(number=1, signal=15, signal_name="SIGTERM", end=R.RUN_END_STOPPED,
                                          end_detail="shutdown"),
        state=R.RUNTIME_STATE_STOPPED, resume_on_start=True)]))
    await set_lease(store, chat, utcnow() - timedelta(seconds=60))
    resp = await store.reconcile(g.ReconcileRequest())
    assert resp.actions == [] and "parked by the shutdown of supervisor 'sup-a'" in resp.kept[0].reason


async def test_validation_rejects_bad_fields_without_writing(store: GraphStore, records: ChatRecords) -> None:
    bad_calls = [
        store.create_task(g.CreateTaskRequest(title="")),
        store.create_task(g.CreateTaskRequest(title="x" * 600)),
        store.create_task(g.CreateTaskRequest(title="x", tags=["bad tag"])),
        store.create_task(g.CreateTaskRequest(title="x", request_id="has space")),
        store.create_task(g.CreateTaskRequest(title="x", status=99)),  # type: ignore[arg-type]
        records.create_chat_task(chat_req(supervisor_id="")),
        records.create_chat_task(chat_req(lease_seconds=0)),
        records.create_chat_task(chat_req(lease_seconds=4000)),
        records.create_chat_task(chat_req(trace_id="xyz")),
        records.create_chat_task(chat_req(command_argv=["", "x"])),
        records.create_chat_task(chat_req(name="a\nb")),
        records.create_chat_task(chat_req(max_live_chats=-1)),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidArgument):
            await call
    assert await count_rows(store, "tasks") == 0
    assert await count_rows(store, "counters") == 2
