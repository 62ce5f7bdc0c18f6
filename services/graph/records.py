"""RuntimeService's logic: the chat records supervisors keep (runs, states, leases, supervisors).

Every state change goes through `set_state`, which checks the chat state machine's transition
table (wgs.common.chat_states) inside the writing transaction: an illegal change is
FAILED_PRECONDITION naming both states, whoever asks. Ownership is checked the same way: only the
chat's owner may write its records, and an owner is replaced only through ClaimChat after its lease
expired.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.graph import convert
from services.graph.db import ChatRuntimeRow, RunRow, SupervisorRow, TaskLogRow, TaskRow, TaskTag
from services.graph.store import (
    CHAT_PRIORITY,
    LOG_ENTRIES_RETURNED,
    MAX_ERROR,
    MAX_SUPERVISOR_ID,
    GraphStore,
    decode_token,
    encode_token,
    iso,
    label,
    non_negative,
    set_state,
    status_value,
    tags_value,
)
from wgs.common import chat_states
from wgs.common import validation as v
from wgs.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    WgsError,
)
from wgs.common.timeutil import from_ts, to_ts
from wgs.v1 import plan_pb2, runtime_pb2, runtime_service_pb2, task_pb2

R = runtime_pb2
S = task_pb2
RS = runtime_service_pb2

MAX_LEASE_SECONDS = 3600
MAX_HOSTNAME = 255
MAX_STDERR_TAIL = 64 * 1024
MAX_EXITS_PER_CALL = 1000
MAX_HELD_IDS = 100_000
MAX_ADDRESS = 512
TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")
SPAN_ID_RE = re.compile(r"[0-9a-f]{16}")
RUNS_KEPT = 5
WATCH_BATCH = 256  # chat records a WatchChatRecords stream reads at once

# GetChatRecord's statements (compiled once; Core rows).
_TASK = sa.select(TaskRow.__table__).where(TaskRow.id == sa.bindparam("chat_id"))
_RUNTIME = sa.select(ChatRuntimeRow.__table__).where(ChatRuntimeRow.chat_id == sa.bindparam("chat_id"))
_TAGS = sa.select(TaskTag.tag).where(TaskTag.task_id == sa.bindparam("chat_id"))
_RUNS = sa.select(RunRow.__table__).where(RunRow.chat_id == sa.bindparam("chat_id"))
_LOG = (sa.select(TaskLogRow.__table__).where(TaskLogRow.task_id == sa.bindparam("chat_id"))
        .order_by(TaskLogRow.id.desc()).limit(LOG_ENTRIES_RETURNED))


def _supervisor_id(value: str, field: str = "supervisor_id") -> str:
    return label(value, field, required=True, max_len=MAX_SUPERVISOR_ID)


def _lease(value: int) -> int:
    if not 1 <= value <= MAX_LEASE_SECONDS:
        raise InvalidArgument(f"lease_seconds must be between 1 and {MAX_LEASE_SECONDS}, got {value}", "lease_seconds")
    return value


def _hex_id(value: str, pattern: re.Pattern[str], digits: int, field: str) -> str:
    if value and not pattern.fullmatch(value):
        raise InvalidArgument(f"{field} must be {digits} lowercase hex digits or empty, got {value[:40]!r}", field)
    return value


def _state(value: int, field: str) -> int:
    if value == R.RUNTIME_STATE_UNSPECIFIED or value not in R.RuntimeState.values():
        raise InvalidArgument(f"{field} must be a runtime state such as RUNTIME_STATE_RUNNING, got {value}", field)
    return value


def _optional_state(value: int, field: str) -> int:
    return value if value == R.RUNTIME_STATE_UNSPECIFIED else _state(value, field)


def validate_run(run: runtime_pb2.Run, field: str = "run") -> None:
    if not 1 <= run.number <= 2**31 - 1:
        raise InvalidArgument(f"{field}.number must be 1 or more, got {run.number}", f"{field}.number")
    for name in ("pid", "process_start_ticks", "monitor_pid", "monitor_start_ticks", "leftovers_ended"):
        non_negative(getattr(run, name), f"{field}.{name}")
    v.argv(list(run.argv), f"{field}.argv")
    v.text(run.stderr_path, f"{field}.stderr_path", required=False, max_len=v.MAX_PATH)
    v.text(run.stderr_tail, f"{field}.stderr_tail", required=False, max_len=MAX_STDERR_TAIL)
    v.text(run.error, f"{field}.error", required=False, max_len=MAX_ERROR)
    v.text(run.end_detail, f"{field}.end_detail", required=False, max_len=MAX_ERROR)
    label(run.signal_name, f"{field}.signal_name", required=False, max_len=32)
    label(run.hostname, f"{field}.hostname", required=False, max_len=MAX_HOSTNAME)
    label(run.supervisor_id, f"{field}.supervisor_id", required=False, max_len=MAX_SUPERVISOR_ID)
    _hex_id(run.trace_id, TRACE_ID_RE, 32, f"{field}.trace_id")
    if run.HasField("signal") and not 1 <= run.signal <= 128:
        raise InvalidArgument(f"{field}.signal must be a signal number (1-128), got {run.signal}", f"{field}.signal")
    if run.end not in R.RunEnd.values():
        raise InvalidArgument(f"{field}.end must be a RunEnd value, got {run.end}", f"{field}.end")


def _validate_plan(plan: plan_pb2.SpawnPlan, field: str = "plan") -> None:
    v.argv(list(plan.argv), f"{field}.argv")
    if len(plan.SerializeToString()) > 256 * 1024:
        raise InvalidArgument(f"{field} is larger than 256 KiB", field)


class ChatRecords:
    """RuntimeService operations over the graph database (uses GraphStore's transactions)."""

    def __init__(self, store: GraphStore) -> None:
        self.g = store
        self._records = convert.RecordCache()

    # -- helpers (inside a transaction) --------------------------------------------------------

    def _owned_runtime(self, session: Session, chat_id: str, supervisor_id: str) -> ChatRuntimeRow:
        rt = self.g.runtime_row(session, chat_id, lock=True)
        if rt.supervisor_id != supervisor_id:
            raise FailedPrecondition(
                f"chat {chat_id} is owned by supervisor {rt.supervisor_id!r}, not {supervisor_id!r}; "
                f"ClaimChat first (possible once the owner's lease expires, at {iso(rt.lease_expires_at)})"
            )
        return rt

    @staticmethod
    def _prune_runs(session: Session, chat_id: str) -> None:
        keep = (
            sa.select(RunRow.number)
            .where(RunRow.chat_id == chat_id)
            .order_by(RunRow.number.desc())
            .limit(RUNS_KEPT)
            .scalar_subquery()
        )
        session.execute(
            sa.delete(RunRow).where(RunRow.chat_id == chat_id, RunRow.number.not_in(keep)),
            execution_options={"synchronize_session": False},
        )

    @staticmethod
    def _upsert_run(session: Session, chat_id: str, run: runtime_pb2.Run, supervisor: str,
                    now: datetime, *, started: bool, runs: list[RunRow] | None = None,
                    found: RunRow | bool | None = False) -> RunRow:
        """`runs`: the chat's run rows if the caller read them already (a new row is appended);
        `found`: the run's own row as already read (None: it has none); neither: read it here."""
        if runs is not None:
            row = next((r for r in runs if r.number == run.number), None)
        elif found is False:
            row = session.scalars(
                sa.select(RunRow).where(RunRow.chat_id == chat_id, RunRow.number == run.number)
            ).one_or_none()
        else:
            row = found if isinstance(found, RunRow) else None
        if row is None:
            row = RunRow(chat_id=chat_id, number=run.number)
            session.add(row)
            if runs is not None:
                runs.append(row)
        # A run that never started (a failed spawn) is recorded only at its end: it still keeps
        # the argv and stderr path that explain it.
        if started or not row.pid:
            row.pid = run.pid
            row.process_start_ticks = run.process_start_ticks
            row.monitor_pid = run.monitor_pid
            row.monitor_start_ticks = run.monitor_start_ticks
            row.argv = list(run.argv)
            row.stderr_path = run.stderr_path
            row.started_at = from_ts(run.started_at) if run.HasField("started_at") else (row.started_at or now)
            row.hostname = run.hostname
            row.supervisor_id = run.supervisor_id or supervisor
            row.trace_id = run.trace_id
        if not started:
            row.exited_at = from_ts(run.exited_at) if run.HasField("exited_at") else now
            row.exit_code = run.exit_code if run.HasField("exit_code") else None
            row.signal = run.signal if run.HasField("signal") else None
            row.signal_name = run.signal_name
            row.stderr_tail = run.stderr_tail
            row.error = run.error
            row.end = int(run.end) or R.RUN_END_EXITED
            row.end_detail = run.end_detail
            row.leftovers_ended = run.leftovers_ended
        else:
            row.exited_at = None
            row.exit_code = None
            row.signal = None
            row.signal_name = ""
            row.stderr_tail = ""
            row.error = run.error
            row.end = R.RUN_END_UNSPECIFIED
            row.end_detail = ""
            row.leftovers_ended = 0
        return row

    @staticmethod
    def _apply_task_change(session: Session, g: GraphStore, task: TaskRow, status: int | None,
                           add_tags: Sequence[str], now: datetime, tags: Sequence[str] | None = None) -> str:
        """Change a chat task's status/tags in the transaction; returns a log note ("" if nothing).
        `tags`: the task's tags as already read (None: read them here, if there are tags to add)."""
        notes: list[str] = []
        if status is not None and status != task.status:
            notes.append(f"status {S.TaskStatus.Name(task.status)} -> {S.TaskStatus.Name(status)}")
            task.status = status
            if status == S.TASK_STATUS_IN_PROGRESS:
                task.started_at = now
            task.completed_at = now if status in (S.TASK_STATUS_DONE, S.TASK_STATUS_FAILED,
                                                  S.TASK_STATUS_ABANDONED) else None
        new_tags: list[str] = []
        if add_tags:
            current = set(g.tags_of(session, [task.id])[task.id] if tags is None else tags)
            new_tags = [t for t in dict.fromkeys(add_tags) if t not in current]
        if new_tags:
            session.add_all(TaskTag(task_id=task.id, tag=t) for t in new_tags)
            notes.append("tagged " + ", ".join(new_tags))
        if notes:
            task.updated_at = now
            task.version += 1
        return "; ".join(notes)

    # -- chats ---------------------------------------------------------------------------------

    async def create_chat_task(self, req: RS.CreateChatTaskRequest) -> RS.CreateChatTaskResponse:
        v.chat_name(req.name)
        v.text(req.model, "model", required=False, max_len=v.MAX_MODEL)
        label(req.executor, "executor", required=False, max_len=64)
        v.text(req.endpoint, "endpoint", required=False, max_len=v.MAX_ENDPOINT)
        argv = v.argv(list(req.command_argv), "command_argv")
        v.text(req.working_dir, "working_dir", required=False, max_len=v.MAX_PATH)
        v.request_id(req.request_id)
        supervisor = _supervisor_id(req.supervisor_id)
        lease = _lease(req.lease_seconds)
        cap = non_negative(req.max_live_chats, "max_live_chats")
        _hex_id(req.trace_id, TRACE_ID_RE, 32, "trace_id")
        _hex_id(req.span_id, SPAN_ID_RE, 16, "span_id")
        if req.HasField("plan"):
            _validate_plan(req.plan)
        g = self.g

        def existing_response(session: Session, row: TaskRow) -> RS.CreateChatTaskResponse:
            if row.chat_number is None:
                raise AlreadyExists(
                    f"request_id {req.request_id!r} was already used to create task {row.id!r}, which is not a chat"
                )
            rt = g.runtime_row(session, row.id)
            return RS.CreateChatTaskResponse(task=g.task_pb(session, row, with_log=False),
                                             runtime=g.runtime_pb(session, rt), created=False)

        def op(session: Session) -> RS.CreateChatTaskResponse:
            if req.request_id:
                existing = session.scalars(sa.select(TaskRow).where(TaskRow.request_id == req.request_id)).first()
                if existing is not None:
                    return existing_response(session, existing)
            # The counter row lock (first statement that writes) serializes creators, so the count
            # below sees every chat committed before us: the cap cannot be overshot by a race.
            number = g.next_counter(session, "chat")
            if cap:
                live = session.scalar(
                    sa.select(sa.func.count()).select_from(TaskRow)
                    .join(ChatRuntimeRow, ChatRuntimeRow.chat_id == TaskRow.id)
                    .where(TaskRow.chat_number.is_not(None), TaskRow.status == S.TASK_STATUS_IN_PROGRESS,
                           ChatRuntimeRow.supervisor_id == supervisor)
                ) or 0
                if live >= cap:
                    raise ResourceExhausted(
                        f"{live} chats are live on supervisor {supervisor} and its cap is {cap} (WGS_MAX_LIVE_CHATS); "
                        "stop, archive or delete a chat first, or raise the cap"
                    )
            chat_id = f"{v.CHAT_PREFIX}{number}"
            now = g.now()
            row = TaskRow(
                id=chat_id, chat_number=number, title=f"Chat: {req.name}" if req.name.strip() else f"Chat {number}",
                description="", status=S.TASK_STATUS_IN_PROGRESS, priority=CHAT_PRIORITY, assigned="",
                model=req.model, executor=req.executor, endpoint=req.endpoint, command_argv=argv,
                working_dir=req.working_dir, request_id=req.request_id or None, created_at=now,
                started_at=now, completed_at=None, updated_at=now, version=1,
                generation_json=convert.message_to_json(req.generation) if req.HasField("generation") else "",
            )
            session.add(row)
            session.flush()
            session.add(TaskTag(task_id=chat_id, tag=v.CHAT_LOOP_TAG))
            chat_states.check(chat_states.UNSPECIFIED, chat_states.STARTING, chat_id)
            rt = ChatRuntimeRow(
                chat_id=chat_id, state=R.RUNTIME_STATE_STARTING, restart_count=0, next_restart_at=None,
                last_error="", plan_json=convert.plan_to_json(req.plan) if req.HasField("plan") else "",
                trace_id=req.trace_id, span_id=req.span_id, supervisor_id=supervisor,
                lease_expires_at=now + timedelta(seconds=lease), state_changed_at=now, version=1,
                resume_on_start=False, agent_status_json="",
            )
            session.add(rt)
            what = " ".join(argv) if argv else (req.model or "default model")
            g.log(session, chat_id, "graph", f"chat created by supervisor {supervisor} ({what})", now)
            session.flush()
            return RS.CreateChatTaskResponse(task=convert.task(row, [v.CHAT_LOOP_TAG]),  # its only tag
                                             runtime=convert.runtime(rt, []), created=True)

        resp = await g.run(g.write, op)
        if resp.created:
            g.fanout.runtime_changed(resp.task.id)
        return resp

    async def get_chat_record(self, req: RS.GetChatRecordRequest) -> RS.GetChatRecordResponse:
        v.chat_id(req.chat_id)
        g = self.g

        def op() -> RS.GetChatRecordResponse:
            # Plain rows on a plain connection (one read transaction): GetChat asks this for every
            # call, and the ORM session and its instances were most of the graph's work for it.
            params = {"chat_id": req.chat_id}
            with g.engine.connect() as conn:
                row = conn.execute(_TASK, params).one_or_none()
                if row is None:
                    raise NotFound(f"chat {req.chat_id!r} does not exist")
                rt = conn.execute(_RUNTIME, params).one_or_none()
                if rt is None:
                    raise FailedPrecondition(f"chat {req.chat_id} has no runtime record")
                tags = conn.execute(_TAGS, params).scalars().all()
                runs = conn.execute(_RUNS, params).all()
                log = conn.execute(_LOG, params).all()[::-1] if req.with_log else ()
            return RS.GetChatRecordResponse(task=convert.task(row, tags, log), runtime=convert.runtime(rt, runs))

        return await g.run(op)

    async def records_of(self, ids: Sequence[str]) -> list[RS.ChatRecord]:
        """The records of these chats, in this order (those that do not exist left out), in one read."""
        g = self.g

        def op() -> list[RS.ChatRecord]:
            with g.read() as session:
                rows = {t.id: (t, rt) for t, rt in session.execute(
                    sa.select(TaskRow, ChatRuntimeRow).join(ChatRuntimeRow, ChatRuntimeRow.chat_id == TaskRow.id)
                    .where(TaskRow.id.in_(ids)))}
                tags = g.tags_of(session, list(rows))
                runs = g.runs_of(session, list(rows))
                return [RS.ChatRecord(task=convert.task(rows[i][0], tags[i]), runtime=convert.runtime(rows[i][1], runs[i]))
                        for i in ids if i in rows]

        return await g.run(op)

    async def list_chat_records(self, req: RS.ListChatRecordsRequest) -> RS.ListChatRecordsResponse:
        if req.supervisor_id:
            _supervisor_id(req.supervisor_id)
        states = [_state(s, "states") for s in req.states]
        size = v.page_size(req.page_size)
        after = -1
        if req.page_token:
            after = int(decode_token(req.page_token, lambda s: bool(re.fullmatch(r"[0-9]{1,18}", s))))
        g = self.g

        def op() -> RS.ListChatRecordsResponse:
            # Plain rows on a plain connection (one read transaction), each chat converted once per
            # distinct content (convert.RecordCache): for 1,000 chats, converting was two thirds
            # of the call and building ORM instances most of the rest.
            tasks, runtimes, runs_t = TaskRow.__table__, ChatRuntimeRow.__table__, RunRow.__table__
            with g.engine.connect() as conn:
                stmt = (
                    sa.select(*convert.hashable_columns(tasks))
                    .join(runtimes, runtimes.c.chat_id == tasks.c.id)
                    .where(tasks.c.chat_number.is_not(None), tasks.c.chat_number > after)
                    .order_by(tasks.c.chat_number)
                    .limit(size + 1)
                )
                if not req.include_ended:
                    stmt = stmt.where(
                        tasks.c.status != S.TASK_STATUS_ABANDONED,
                        ~sa.exists().where(TaskTag.task_id == tasks.c.id, TaskTag.tag == v.ARCHIVED_TAG),
                    )
                if req.supervisor_id:
                    stmt = stmt.where(runtimes.c.supervisor_id == req.supervisor_id)
                if states:
                    stmt = stmt.where(runtimes.c.state.in_(states))
                if req.lease_expired:
                    stmt = stmt.where(runtimes.c.lease_expires_at <= g.now())
                rows = conn.execute(stmt).all()
                more = len(rows) > size
                rows = rows[:size]
                ids = [t.id for t in rows]
                tags: dict[str, list[str]] = defaultdict(list)
                rts: dict[str, Any] = {}
                runs: dict[str, list[Any]] = defaultdict(list)
                if ids:
                    for task_id, tag in conn.execute(sa.select(TaskTag.task_id, TaskTag.tag)
                                                     .where(TaskTag.task_id.in_(ids))).all():
                        tags[task_id].append(tag)
                    rts = {rt.chat_id: rt for rt in conn.execute(sa.select(runtimes).where(runtimes.c.chat_id.in_(ids))).all()}
                    for run in conn.execute(sa.select(*convert.hashable_columns(runs_t))
                                            .where(runs_t.c.chat_id.in_(ids)).order_by(runs_t.c.number)).all():
                        runs[run.chat_id].append(run)
            last = rows[-1].chat_number if rows else None
            resp = RS.ListChatRecordsResponse(next_page_token=encode_token(str(last)) if more and last is not None
                                              else "")
            for t in rows:
                resp.chats.add().MergeFromString(self._records.record(t, tags[t.id], rts[t.id], runs[t.id]))
            return resp

        return await g.run(op)

    # -- runs ----------------------------------------------------------------------------------

    async def record_run_started(self, req: RS.RecordRunStartedRequest) -> RS.RecordRunStartedResponse:
        v.chat_id(req.chat_id)
        supervisor = _supervisor_id(req.supervisor_id)
        if not req.HasField("run"):
            raise InvalidArgument("run is required (at least its number and pid)", "run")
        validate_run(req.run)
        if req.run.pid <= 0:
            raise InvalidArgument("run.pid must be the agent's pid (a failed spawn is recorded with RecordRunExited)",
                                  "run.pid")
        expected = _optional_state(req.expected_state, "expected_state")
        if req.HasField("plan"):
            _validate_plan(req.plan)
        g = self.g

        def op(session: Session) -> RS.RecordRunStartedResponse:
            rt = self._owned_runtime(session, req.chat_id, supervisor)
            if expected and rt.state != expected:
                raise Aborted(f"chat {req.chat_id} is {chat_states.name(rt.state)}, not "
                              f"{chat_states.name(expected)} as the caller expected; re-read it")
            # The chat's runs (at most RUNS_KEPT) read once: the latest number, the row to update,
            # whether any must be pruned and the response all come from them.
            runs = list(session.scalars(sa.select(RunRow).where(RunRow.chat_id == req.chat_id)))
            latest = max((r.number for r in runs), default=0)
            if req.run.number < latest:
                raise FailedPrecondition(f"chat {req.chat_id} already has run {latest}; run {req.run.number} "
                                         "cannot start after it")
            now = g.now()
            set_state(rt, R.RUNTIME_STATE_RUNNING, now, req.chat_id)
            self._upsert_run(session, req.chat_id, req.run, supervisor, now, started=True, runs=runs)
            rt.next_restart_at = None
            rt.last_error = ""  # the chat is healthy now; earlier failures stay in previous_runs
            rt.resume_on_start = False
            if req.HasField("plan"):
                rt.plan_json = convert.plan_to_json(req.plan)
            convert.clear_waiting(rt)
            where = f" on {req.run.hostname}" if req.run.hostname else ""
            g.log(session, req.chat_id, supervisor, f"run {req.run.number} started: pid {req.run.pid}{where}", now)
            session.flush()
            if len(runs) > RUNS_KEPT:
                self._prune_runs(session, req.chat_id)
            return RS.RecordRunStartedResponse(runtime=convert.runtime(rt, runs))  # shows the newest RUNS_KEPT

        resp = await g.run(g.write, op)
        g.fanout.runtime_changed(req.chat_id)
        return resp

    def _validate_exit(self, item: RS.RunExit, i: int) -> int:
        field = f"exits[{i}]"
        v.chat_id(item.chat_id, f"{field}.chat_id")
        if not item.HasField("run"):
            raise InvalidArgument(f"{field}.run is required (its number plus exit_code, signal or error)",
                                  f"{field}.run")
        validate_run(item.run, f"{field}.run")
        state = _state(item.state, f"{field}.state")
        if state not in chat_states.EXIT_STATES:
            raise InvalidArgument(
                f"{field}.state must be BACKOFF, EXITED, FAILED or STOPPED after a run ended, got "
                f"{chat_states.name(state)}", f"{field}.state")
        non_negative(item.restart_count, f"{field}.restart_count")
        v.text(item.last_error, f"{field}.last_error", required=False, max_len=MAX_ERROR)
        if item.HasField("plan"):
            _validate_plan(item.plan, f"{field}.plan")
        if item.HasField("task_status"):
            status_value(item.task_status, f"{field}.task_status")
        tags_value(item.add_tags, f"{field}.add_tags")
        if v.CHAT_LOOP_TAG in item.add_tags:
            raise InvalidArgument(f"{field}.add_tags: {v.CHAT_LOOP_TAG!r} is already on every chat",
                                  f"{field}.add_tags")
        return state

    def _record_exit(self, session: Session, item: RS.RunExit, state: int, supervisor: str) -> runtime_pb2.ChatRuntime:
        g = self.g
        rt = self._owned_runtime(session, item.chat_id, supervisor)
        recorded = session.scalars(sa.select(RunRow).where(RunRow.chat_id == item.chat_id,
                                                           RunRow.number == item.run.number)).one_or_none()
        if recorded is not None and recorded.exited_at is not None and rt.state == state and \
                recorded.exited_at == (from_ts(item.run.exited_at) or recorded.exited_at):
            return g.runtime_pb(session, rt)  # the same end recorded again (a retried call): nothing to do
        now = g.now()
        set_state(rt, state, now, item.chat_id)
        run = self._upsert_run(session, item.chat_id, item.run, supervisor, now, started=False)
        rt.restart_count = item.restart_count
        rt.next_restart_at = from_ts(item.next_restart_at) if item.HasField("next_restart_at") else None
        rt.last_error = item.last_error
        rt.resume_on_start = item.resume_on_start
        if item.HasField("plan"):
            rt.plan_json = convert.plan_to_json(item.plan)
        convert.clear_waiting(rt)  # the run that waited has ended
        task = g.task_row(session, item.chat_id, lock=True)
        note = self._apply_task_change(session, g, task, item.task_status if item.HasField("task_status") else None,
                                       item.add_tags, now)
        g.log(session, item.chat_id, supervisor,
              f"run {run.number} {self._how(run)}; state {chat_states.name(state)}" + (f"; {note}" if note else ""),
              now)
        session.flush()
        if item.run.number > RUNS_KEPT:  # run numbers count up from 1: fewer runs than that, nothing to prune
            self._prune_runs(session, item.chat_id)
        return g.runtime_pb(session, rt)

    def _record_exits(self, session: Session, exits: Sequence[RS.RunExit], states: Sequence[int],
                      supervisor: str) -> RS.RecordRunExitedResponse:
        """The exits of distinct chats in one go: the rows of all of them read (and locked) with one
        query per table, every check made before anything of an exit is changed (so a refused exit
        changes nothing, as the one-by-one savepoints guaranteed), then one flush. Per exit this is
        what `_record_exit` does; a statement per row there cost ~13 round trips an exit, which made
        900 exits at once take ~30 s on PostgreSQL (docs/performance.md, "900 deaths at once")."""
        g = self.g
        ids = sorted(item.chat_id for item in exits)  # rows locked in one order by every batch
        tasks = {t.id: t for t in session.scalars(
            sa.select(TaskRow).where(TaskRow.id.in_(ids)).order_by(TaskRow.id))}
        rts = {r.chat_id: r for r in session.scalars(
            sa.select(ChatRuntimeRow).where(ChatRuntimeRow.chat_id.in_(ids)).order_by(ChatRuntimeRow.chat_id)
            .with_for_update())}
        session.scalars(sa.select(TaskRow).where(TaskRow.id.in_(list(rts))).order_by(TaskRow.id)
                        .with_for_update(key_share=True)).all()  # as _record_exit locks each task
        runs = g.runs_of(session, list(rts))
        tags = g.tags_of(session, list(rts))
        now = g.now()
        outcome: list[tuple[RS.RunExit, ChatRuntimeRow | None, WgsError | None]] = []
        prune: list[str] = []
        for item, state in zip(exits, states, strict=True):
            chat_id = item.chat_id
            try:
                task = tasks.get(chat_id)
                if task is None:
                    raise NotFound(f"chat {chat_id!r} does not exist")
                rt = rts.get(chat_id)
                if rt is None:
                    raise FailedPrecondition(f"chat {chat_id} has no runtime record")
                if rt.supervisor_id != supervisor:
                    raise FailedPrecondition(
                        f"chat {chat_id} is owned by supervisor {rt.supervisor_id!r}, not {supervisor!r}; "
                        f"ClaimChat first (possible once the owner's lease expires, at {iso(rt.lease_expires_at)})")
                recorded = next((r for r in runs[chat_id] if r.number == item.run.number), None)
                if recorded is not None and recorded.exited_at is not None and rt.state == state and \
                        recorded.exited_at == (from_ts(item.run.exited_at) or recorded.exited_at):
                    outcome.append((item, rt, None))  # the same end recorded again: nothing to do
                    continue
                chat_states.check(rt.state, state, chat_id)  # the last check: nothing is changed before it
            except WgsError as exc:
                outcome.append((item, None, exc))
                continue
            set_state(rt, state, now, chat_id)
            run = self._upsert_run(session, chat_id, item.run, supervisor, now, started=False, found=recorded)
            if recorded is None:
                runs[chat_id].append(run)
            rt.restart_count = item.restart_count
            rt.next_restart_at = from_ts(item.next_restart_at) if item.HasField("next_restart_at") else None
            rt.last_error = item.last_error
            rt.resume_on_start = item.resume_on_start
            if item.HasField("plan"):
                rt.plan_json = convert.plan_to_json(item.plan)
            convert.clear_waiting(rt)
            note = self._apply_task_change(session, g, task, item.task_status if item.HasField("task_status") else None,
                                           item.add_tags, now, tags=tags[chat_id])
            g.log(session, chat_id, supervisor, f"run {run.number} {self._how(run)}; state {chat_states.name(state)}"
                  + (f"; {note}" if note else ""), now)
            if item.run.number > RUNS_KEPT:
                prune.append(chat_id)
            outcome.append((item, rt, None))
        session.flush()
        for chat_id in prune:
            self._prune_runs(session, chat_id)
        results: list[RS.RunExitResult] = []
        for item, rt_row, error in outcome:
            if error is not None:
                results.append(RS.RunExitResult(chat_id=item.chat_id, error_code=error.code.value[0],
                                                error_message=error.message))
            else:
                assert rt_row is not None
                # the newest runs are shown, and pruning removes only older ones than those
                results.append(RS.RunExitResult(chat_id=item.chat_id,
                                                runtime=convert.runtime(rt_row, runs[item.chat_id])))
        return RS.RecordRunExitedResponse(results=results)

    @staticmethod
    def _how(run: RunRow) -> str:
        """How a run ended, for the chat's log."""
        if run.exit_code is not None:
            how = f"exited with code {run.exit_code}"
        elif run.signal is not None:
            how = f"was killed by {run.signal_name or 'signal ' + str(run.signal)}"
        else:
            how = "ended"
        if run.end == R.RUN_END_STOPPED:
            how = f"was stopped ({run.end_detail or 'by wgs'}); the agent {how}"
        if run.error:
            how += f" ({run.error})" if run.pid else f": failed to start: {run.error}"
        if run.leftovers_ended:
            how += f"; {run.leftovers_ended} leftover process(es) ended"
        return how

    async def record_run_exited(self, req: RS.RecordRunExitedRequest) -> RS.RecordRunExitedResponse:
        supervisor = _supervisor_id(req.supervisor_id)
        if not 1 <= len(req.exits) <= MAX_EXITS_PER_CALL:
            raise InvalidArgument(f"exits must hold 1 to {MAX_EXITS_PER_CALL} exits, got {len(req.exits)}", "exits")
        states = [self._validate_exit(item, i) for i, item in enumerate(req.exits)]
        g = self.g

        def one_by_one(session: Session) -> RS.RecordRunExitedResponse:
            results: list[RS.RunExitResult] = []
            for item, state in zip(req.exits, states, strict=True):
                try:
                    # Each exit in a savepoint: one refused exit (not the owner, illegal transition)
                    # does not undo the others recorded in the same call.
                    with session.begin_nested():
                        runtime = self._record_exit(session, item, state, supervisor)
                    results.append(RS.RunExitResult(chat_id=item.chat_id, runtime=runtime))
                except WgsError as exc:
                    results.append(RS.RunExitResult(chat_id=item.chat_id, error_code=exc.code.value[0],
                                                    error_message=exc.message))
            return RS.RecordRunExitedResponse(results=results)

        def op(session: Session) -> RS.RecordRunExitedResponse:
            if len({item.chat_id for item in req.exits}) < len(req.exits) or len(req.exits) == 1:
                return one_by_one(session)
            return self._record_exits(session, req.exits, states, supervisor)

        resp = await g.run(g.write, op)
        for res in resp.results:
            if res.error_code == 0:
                g.forget_partials(res.chat_id)
                g.fanout.runtime_changed(res.chat_id)
        return resp

    # -- transitions ---------------------------------------------------------------------------

    async def transition_chat(self, req: RS.TransitionChatRequest) -> RS.TransitionChatResponse:
        v.chat_id(req.chat_id)
        supervisor = _supervisor_id(req.supervisor_id)
        expected = _optional_state(req.from_state, "from_state")
        target = _state(req.to_state, "to_state")
        if req.HasField("restart_count"):
            non_negative(req.restart_count, "restart_count")
        if req.HasField("last_error"):
            v.text(req.last_error, "last_error", required=False, max_len=MAX_ERROR)
        if req.HasField("plan"):
            _validate_plan(req.plan)
        if req.HasField("task_status"):
            status_value(req.task_status, "task_status")
        tags_value(req.add_tags, "add_tags")
        v.text(req.log_message, "log_message", required=False, max_len=v.MAX_LOG_MESSAGE)
        g = self.g

        def op(session: Session) -> RS.TransitionChatResponse:
            rt = self._owned_runtime(session, req.chat_id, supervisor)
            if expected and rt.state != expected:
                raise Aborted(f"chat {req.chat_id} is {chat_states.name(rt.state)}, not "
                              f"{chat_states.name(expected)} as the caller expected; re-read it")
            now = g.now()
            before = rt.state
            set_state(rt, target, now, req.chat_id)
            if req.HasField("restart_count"):
                rt.restart_count = req.restart_count
            rt.next_restart_at = from_ts(req.next_restart_at) if req.HasField("next_restart_at") else None
            if req.HasField("last_error"):
                rt.last_error = req.last_error
            if req.HasField("plan"):
                rt.plan_json = convert.plan_to_json(req.plan)
            if req.HasField("resume_on_start"):
                rt.resume_on_start = req.resume_on_start
            task = g.task_row(session, req.chat_id, lock=True)
            note = self._apply_task_change(session, g, task, req.task_status if req.HasField("task_status") else None,
                                           req.add_tags, now)
            message = req.log_message
            if before != target:
                message = "; ".join(x for x in (message, f"state {chat_states.name(before)} -> "
                                                          f"{chat_states.name(target)}") if x)
            if note:
                message = "; ".join(x for x in (message, note) if x)
            if message:
                g.log(session, req.chat_id, supervisor, message, now)
            session.flush()
            return RS.TransitionChatResponse(task=g.task_pb(session, task, with_log=False),
                                             runtime=g.runtime_pb(session, rt))

        resp = await g.run(g.write, op)
        g.fanout.runtime_changed(req.chat_id)
        return resp

    # -- leases, ownership, supervisors ---------------------------------------------------------

    async def renew_leases(self, req: RS.RenewLeasesRequest) -> RS.RenewLeasesResponse:
        supervisor = _supervisor_id(req.supervisor_id)
        lease = _lease(req.lease_seconds)
        label(req.advertise_address, "advertise_address", required=False, max_len=MAX_ADDRESS)
        for name in ("free_capacity", "live_chats", "max_live_chats", "memory_used_bytes", "memory_limit_bytes"):
            non_negative(getattr(req, name), name)
        if len(req.held_chat_ids) > MAX_HELD_IDS:
            raise InvalidArgument(f"held_chat_ids has {len(req.held_chat_ids)} ids, at most {MAX_HELD_IDS}",
                                  "held_chat_ids")
        held = [v.chat_id(c, "held_chat_ids") for c in req.held_chat_ids]
        g = self.g

        def op(session: Session) -> RS.RenewLeasesResponse:
            now = g.now()
            expires = now + timedelta(seconds=lease)
            result = session.execute(
                sa.update(ChatRuntimeRow).where(ChatRuntimeRow.supervisor_id == supervisor)
                .values(lease_expires_at=expires),
                execution_options={"synchronize_session": False},
            )
            row = session.get(SupervisorRow, supervisor, with_for_update=True)
            if row is None:
                row = SupervisorRow(id=supervisor)
                session.add(row)
            row.advertise_address = req.advertise_address
            row.heartbeat_at = now
            row.lease_expires_at = expires
            row.free_capacity = req.free_capacity
            row.live_chats = req.live_chats
            row.max_live_chats = req.max_live_chats
            row.memory_used_bytes = req.memory_used_bytes
            row.memory_limit_bytes = req.memory_limit_bytes
            lost: list[str] = []
            if held:
                owned = set(session.scalars(sa.select(ChatRuntimeRow.chat_id).where(
                    ChatRuntimeRow.chat_id.in_(held), ChatRuntimeRow.supervisor_id == supervisor)))
                lost = [c for c in held if c not in owned]
            return RS.RenewLeasesResponse(renewed=result.rowcount,  # type: ignore[attr-defined]
                                          lease_expires_at=to_ts(expires), lost_chat_ids=lost)

        return await g.run(g.write, op)

    async def claim_chat(self, req: RS.ClaimChatRequest) -> RS.ClaimChatResponse:
        v.chat_id(req.chat_id)
        supervisor = _supervisor_id(req.supervisor_id)
        lease = _lease(req.lease_seconds)
        g = self.g

        def op(session: Session) -> RS.ClaimChatResponse:
            rt = g.runtime_row(session, req.chat_id, lock=True)
            now = g.now()
            previous = rt.supervisor_id
            expired = rt.lease_expires_at is None or rt.lease_expires_at <= now
            if previous != supervisor and not expired:
                raise FailedPrecondition(
                    f"chat {req.chat_id} is owned by supervisor {previous!r} whose lease is valid until "
                    f"{iso(rt.lease_expires_at)}; it can be claimed once that lease expires"
                )
            old_lease = rt.lease_expires_at
            rt.supervisor_id = supervisor
            rt.lease_expires_at = now + timedelta(seconds=lease)
            rt.version += 1
            resp = RS.ClaimChatResponse(previous_supervisor_id=previous)
            if previous != supervisor:
                g.log(session, req.chat_id, supervisor,
                      f"claimed by supervisor {supervisor} from {previous} (its lease expired at "
                      f"{iso(old_lease)})", now)
                expired_at = to_ts(old_lease)
                if expired_at is not None:
                    resp.previous_lease_expired_at.CopyFrom(expired_at)
            session.flush()
            resp.runtime.CopyFrom(g.runtime_pb(session, rt))
            resp.task.CopyFrom(g.task_pb(session, g.task_row(session, req.chat_id), with_log=False))
            return resp

        claimed = await g.run(g.write, op)
        if claimed.previous_supervisor_id != supervisor:
            g.fanout.runtime_changed(req.chat_id)
        return claimed

    async def list_supervisors(self, req: RS.ListSupervisorsRequest) -> RS.ListSupervisorsResponse:
        g = self.g

        def op() -> RS.ListSupervisorsResponse:
            with g.read() as session:
                now = g.now()
                stmt = sa.select(SupervisorRow).order_by(SupervisorRow.id)
                if not req.include_expired:
                    stmt = stmt.where(SupervisorRow.lease_expires_at > now)
                rows = list(session.scalars(stmt))
                owned: dict[str, int] = dict(session.execute(  # type: ignore[arg-type]
                    sa.select(ChatRuntimeRow.supervisor_id, sa.func.count())
                    .join(TaskRow, TaskRow.id == ChatRuntimeRow.chat_id)
                    .where(TaskRow.status == S.TASK_STATUS_IN_PROGRESS)
                    .group_by(ChatRuntimeRow.supervisor_id)).all())
                return RS.ListSupervisorsResponse(supervisors=[convert.supervisor(r, owned.get(r.id, 0)) for r in rows])

        return await g.run(op)


async def watch_chat_records(records: ChatRecords, req: RS.WatchChatRecordsRequest
                             ) -> AsyncIterator[RS.WatchChatRecordsResponse]:
    """Each change of the chat's (or any chat's) runtime, as the record after it (first the current
    record(s), with include_current)."""
    if req.chat_id:
        v.chat_id(req.chat_id)
        await records.get_chat_record(RS.GetChatRecordRequest(chat_id=req.chat_id))  # NOT_FOUND first
    g = records.g
    watcher = g.fanout.watch_records(req.chat_id)
    try:
        if req.include_current:  # read after the watcher is registered: no change falls in between
            if req.chat_id:
                watcher.changed[req.chat_id] = None
            else:
                token = ""
                while True:
                    page = await records.list_chat_records(RS.ListChatRecordsRequest(page_size=1000,
                                                                                      page_token=token))
                    for record in page.chats:
                        yield RS.WatchChatRecordsResponse(chat=record)
                    token = page.next_page_token
                    if not token:
                        break
        while True:
            if g.closing:
                raise Unavailable("the graph service is shutting down; watch the chat records again")
            if watcher.resync:  # another replica's changes may have been missed: every record again
                watcher.resync = False
                token = ""
                while True:
                    page = await records.list_chat_records(RS.ListChatRecordsRequest(
                        include_ended=True, page_size=1000, page_token=token))
                    for record in page.chats:
                        watcher.changed.pop(record.task.id, None)
                        yield RS.WatchChatRecordsResponse(chat=record)
                    token = page.next_page_token
                    if not token:
                        break
                continue
            if not watcher.changed:
                watcher.wake.clear()
                if not watcher.changed:
                    await watcher.wake.wait()
                continue
            # Every chat changed since the last read, up to WATCH_BATCH, read together (four queries,
            # not four per chat): 900 runs ending at once change 900 chats.
            ids = list(itertools.islice(watcher.changed, WATCH_BATCH))
            for chat_id in ids:
                del watcher.changed[chat_id]
            for rec in await records.records_of(ids):
                yield RS.WatchChatRecordsResponse(chat=rec)
    finally:
        g.fanout.unwatch_records(watcher)


def status_code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return str(code)


__all__ = ["ChatRecords", "status_code_name", "validate_run", "watch_chat_records"]

