"""The graph's logic: every GraphService operation over the database, without gRPC.

Each operation validates its request completely first (InvalidArgument, nothing written), then
runs in ONE transaction on a worker thread (sync SQLAlchemy), so a failure never leaves
half-written data. Write transactions take the write lock up front (SQLite: BEGIN IMMEDIATE;
PostgreSQL: row locks on the counter/chat rows) and are retried a bounded number of times on
"database is locked", serialization failures and unique-key races, where the retry finds the row
the other writer created (idempotency).

Operations take and return wgs.v1 messages (plain data classes): the servicer only forwards.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import logging
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import datetime
from functools import partial
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from google.protobuf import timestamp_pb2
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.graph import convert, reconcile
from services.graph.db import (
    WRITE_OPTION,
    ChatRuntimeRow,
    Counter,
    MessageRow,
    RunRow,
    TaskLogRow,
    TaskRow,
    TaskTag,
)
from services.graph.fanout import Fanout
from wgs.common import chat_states
from wgs.common import validation as v
from wgs.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from wgs.common.logs import fields
from wgs.common.timeutil import utcnow
from wgs.v1 import graph_pb2, runtime_pb2, task_pb2

log = logging.getLogger("wgs.graph.store")

T = TypeVar("T")
P = ParamSpec("P")

S = task_pb2  # statuses and roles
R = runtime_pb2  # runtime states

TERMINAL = {S.TASK_STATUS_DONE, S.TASK_STATUS_FAILED, S.TASK_STATUS_ABANDONED}
DEFAULT_PRIORITY = 10
CHAT_PRIORITY = 50
LOG_ENTRIES_RETURNED = 200
MAX_TAGS = 64
MAX_ACTOR = 200
MAX_SUPERVISOR_ID = 200
MAX_EXECUTOR = 64
MAX_ERROR = 8 * 1024
MAX_WRITE_ATTEMPTS = 8
WATCH_BATCH = 1000
MAX_PARTIAL = 64 * 1024
MAX_TRACE_PARENT = 64
TRACE_PARENT_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


class _Conflict(Exception):
    """A compare-and-swap lost to a concurrent writer: rerun the whole transaction."""


# ---------------------------------------------------------------------------------------------
# Validation of fields specific to the graph (generic rules live in wgs.common.validation).


def status_value(value: int, field: str) -> int:
    if value == S.TASK_STATUS_UNSPECIFIED or value not in S.TaskStatus.values():
        raise InvalidArgument(f"{field} must be a task status such as TASK_STATUS_OPEN, got {value}", field)
    return value


def _role(value: int) -> int:
    if value == S.MESSAGE_ROLE_UNSPECIFIED or value not in S.MessageRole.values():
        raise InvalidArgument(f"role must be a message role such as MESSAGE_ROLE_USER, got {value}", "role")
    return value


def label(value: str, field: str, *, required: bool, max_len: int) -> str:
    """A one-line identifier-like string (supervisor id, actor, hostname): no control characters."""
    if required and not value:
        raise InvalidArgument(f"{field} is required", field)
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is too long: {len(value)} characters, at most {max_len}", field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidArgument(f"{field} must not contain control characters (newlines, tabs, NUL)", field)
    return value


def tags_value(values: Sequence[str], field: str) -> list[str]:
    if len(values) > MAX_TAGS:
        raise InvalidArgument(f"{field} has {len(values)} tags, at most {MAX_TAGS}", field)
    return sorted({v.tag(t, f"{field} entry") for t in values})


def non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative, got {value}", field)
    return value


def encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def decode_token(token: str, check: Callable[[str], bool]) -> str:
    bad = InvalidArgument("page_token is not valid: pass next_page_token from the previous response unchanged",
                          "page_token")
    if len(token) > 400:
        raise bad
    try:
        value = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise bad from None
    if not check(value):
        raise bad
    return value


def set_state(rt: ChatRuntimeRow, state: int, now: datetime, chat_id: str) -> None:
    """The one place the graph changes a chat's runtime state: only along the transition table."""
    chat_states.check(rt.state, state, chat_id)
    if rt.state != state:
        rt.state = state
        rt.state_changed_at = now
    rt.version += 1


# The range google.protobuf.Timestamp allows (0001-01-01 .. 9999-12-31).
_TS_MIN_SECONDS = -62135596800
_TS_MAX_SECONDS = 253402300799


def valid_ts(ts: timestamp_pb2.Timestamp, field: str) -> None:
    """INVALID_ARGUMENT naming the field for a Timestamp outside what protobuf allows."""
    if not _TS_MIN_SECONDS <= ts.seconds <= _TS_MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(f"{field} is not a valid timestamp (seconds {ts.seconds}, nanos {ts.nanos})", field)


def iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "never"


def _retryable(exc: sa.exc.DBAPIError) -> bool:
    """Lock contention, serialization failures and unique-key races: rerunning may succeed."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in ("40001", "40P01", "55P03", "23505"):
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text or "unique constraint failed" in text


# ---------------------------------------------------------------------------------------------


_LATEST_RUN = (sa.select(RunRow.number, RunRow.exited_at).where(RunRow.chat_id == sa.bindparam("chat_id"))
               .order_by(RunRow.number.desc()).limit(1).subquery())
# The chat's runtime state and its latest run (number, exited_at; NULLs when it has none).
_LIVE_RUN = (sa.select(ChatRuntimeRow.state, _LATEST_RUN.c.number, _LATEST_RUN.c.exited_at)
             .select_from(ChatRuntimeRow).outerjoin(_LATEST_RUN, sa.true())
             .where(ChatRuntimeRow.chat_id == sa.bindparam("chat_id")))


def run_is_live(state: int, latest: int, exited: bool, number: int) -> bool:
    """The live-run rule (see _live_run): `latest` is the chat's latest recorded run (0: none),
    `exited` whether it has exited (True when there is none)."""
    recorded = number == latest and not exited and state in chat_states.LIVE_STATES
    spawning = number == latest + 1 and exited and state == chat_states.STARTING
    return recorded or spawning


class GraphStore:
    """All graph operations. Async methods run the sync transaction on a worker thread."""

    def __init__(self, engine: Engine, *, max_workers: int = 8, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self._clock = clock
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        # SQLite has one writer: this process's writers take turns on a lock, handed over at once,
        # instead of on SQLite's busy handler, which sleeps in steps of up to 100 ms and left writes
        # waiting long after the lock was free when creates and deletes came many at once.
        self._write_turn: threading.Lock | None = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="graph-db")
        self.fanout = Fanout()
        self._closing = asyncio.Event()

    # -- plumbing ------------------------------------------------------------------------------

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        # Carry the caller's context (the current span) into the worker thread, so the database
        # spans are children of the RPC that caused them.
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, partial(ctx.run, fn, *args, **kwargs))

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run fn in one write transaction, retrying (bounded) on contention and races."""
        delay = 0.01
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            try:
                with self._write_turn or nullcontext(), Session(self._write_engine, expire_on_commit=False) as session, \
                        session.begin():
                    return fn(session)
            except _Conflict:
                pass
            except sa.exc.DBAPIError as exc:
                if not _retryable(exc):
                    raise
                log.debug("retrying write after %s (attempt %d)", type(exc.orig).__name__, attempt)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
        raise Aborted("the database stayed busy with concurrent changes; retry the call")

    async def close(self) -> None:
        """Stop watchers (they end with UNAVAILABLE) and release threads and connections."""
        self.begin_shutdown()
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.engine.dispose()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def begin_shutdown(self) -> None:
        self._closing.set()
        self.fanout.wake_all()

    # -- shared helpers (inside a transaction) ---------------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    @staticmethod
    def tags_of(session: Session, ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        if ids:
            rows = session.execute(sa.select(TaskTag.task_id, TaskTag.tag).where(TaskTag.task_id.in_(ids)))
            for task_id, tag in rows:
                out[task_id].append(tag)
        return out

    @staticmethod
    def runs_of(session: Session, ids: Sequence[str]) -> dict[str, list[RunRow]]:
        out: dict[str, list[RunRow]] = defaultdict(list)
        if ids:
            for row in session.scalars(sa.select(RunRow).where(RunRow.chat_id.in_(ids))):
                out[row.chat_id].append(row)
        return out

    @staticmethod
    def log(session: Session, task_id: str, actor: str, message: str, now: datetime) -> TaskLogRow:
        entry = TaskLogRow(task_id=task_id, timestamp=now, actor=actor, message=message)
        session.add(entry)
        return entry

    def task_pb(self, session: Session, row: TaskRow, *, with_log: bool) -> task_pb2.Task:
        entries: Sequence[TaskLogRow] = ()
        if with_log:
            entries = list(
                session.scalars(
                    sa.select(TaskLogRow)
                    .where(TaskLogRow.task_id == row.id)
                    .order_by(TaskLogRow.id.desc())
                    .limit(LOG_ENTRIES_RETURNED)
                )
            )[::-1]
        return convert.task(row, self.tags_of(session, [row.id])[row.id], entries)

    def runtime_pb(self, session: Session, rt: ChatRuntimeRow) -> runtime_pb2.ChatRuntime:
        return convert.runtime(rt, self.runs_of(session, [rt.chat_id])[rt.chat_id])

    @staticmethod
    def task_row(session: Session, task_id: str, *, lock: bool = False) -> TaskRow:
        stmt = sa.select(TaskRow).where(TaskRow.id == task_id)
        if lock:
            # FOR NO KEY UPDATE: serializes writers of this task without blocking the foreign-key
            # checks of inserts into task_log/chat_runs/chat_messages (no lock-order deadlocks).
            stmt = stmt.with_for_update(key_share=True)
        row = session.scalars(stmt).one_or_none()
        if row is None:
            what = "chat" if v.is_chat_id(task_id) else "task"
            raise NotFound(f"{what} {task_id!r} does not exist")
        return row

    @staticmethod
    def runtime_row(session: Session, chat_id: str, *, lock: bool = False) -> ChatRuntimeRow:
        stmt = sa.select(ChatRuntimeRow).where(ChatRuntimeRow.chat_id == chat_id)
        if lock:
            stmt = stmt.with_for_update()
        rt = session.scalars(stmt).one_or_none()
        if rt is None:
            GraphStore.task_row(session, chat_id)  # NOT_FOUND if there is no such chat at all
            raise FailedPrecondition(f"chat {chat_id} has no runtime record")
        return rt

    def set_state(self, rt: ChatRuntimeRow, state: int, now: datetime) -> None:
        set_state(rt, state, now, rt.chat_id)

    @staticmethod
    def next_counter(session: Session, name: str) -> int:
        """UPDATE … RETURNING inside the caller's transaction: the row lock serializes allocators."""
        value = session.execute(
            sa.update(Counter).where(Counter.name == name).values(value=Counter.value + 1).returning(Counter.value),
            execution_options={"synchronize_session": False},
        ).scalar_one_or_none()
        if value is None:
            raise FailedPrecondition(f"counter {name!r} is missing: the database was not migrated")
        return int(value)

    # -- tasks ---------------------------------------------------------------------------------

    async def create_task(self, req: graph_pb2.CreateTaskRequest) -> graph_pb2.CreateTaskResponse:
        if req.id:
            if req.id.startswith("."):
                raise InvalidArgument(f"id {req.id[:40]!r}: ids starting with '.' are reserved for chats", "id")
            v.task_id(req.id)
        v.text(req.title, "title", required=True, max_len=v.MAX_TITLE)
        v.text(req.description, "description", required=False, max_len=v.MAX_DESCRIPTION)
        status = S.TASK_STATUS_OPEN if req.status == S.TASK_STATUS_UNSPECIFIED else status_value(req.status, "status")
        tags = tags_value(req.tags, "tags")
        if v.CHAT_LOOP_TAG in tags:
            raise InvalidArgument(f"tag {v.CHAT_LOOP_TAG!r} is reserved for chats (use CreateChatTask)", "tags")
        v.text(req.model, "model", required=False, max_len=v.MAX_MODEL)
        label(req.executor, "executor", required=False, max_len=MAX_EXECUTOR)
        v.text(req.endpoint, "endpoint", required=False, max_len=v.MAX_ENDPOINT)
        v.request_id(req.request_id)

        def op(session: Session) -> graph_pb2.CreateTaskResponse:
            if req.request_id:
                existing = session.scalars(sa.select(TaskRow).where(TaskRow.request_id == req.request_id)).first()
                if existing is not None:
                    return graph_pb2.CreateTaskResponse(task=self.task_pb(session, existing, with_log=True),
                                                        created=False)
            if req.id:
                task_id = req.id
                if session.get(TaskRow, task_id) is not None:
                    raise AlreadyExists(f"task {task_id!r} already exists")
            else:
                while True:
                    task_id = f"task-{self.next_counter(session, 'task')}"
                    if session.get(TaskRow, task_id) is None:
                        break
            now = self.now()
            row = TaskRow(
                id=task_id, title=req.title, description=req.description, status=status,
                priority=req.priority or DEFAULT_PRIORITY, assigned="", model=req.model,
                executor=req.executor, endpoint=req.endpoint, command_argv=[], working_dir="",
                request_id=req.request_id or None, created_at=now, updated_at=now, version=1,
                started_at=now if status == S.TASK_STATUS_IN_PROGRESS else None,
                completed_at=now if status in TERMINAL else None,
            )
            session.add(row)
            session.flush()
            session.add_all(TaskTag(task_id=task_id, tag=t) for t in tags)
            self.log(session, task_id, "graph", "task created", now)
            session.flush()
            return graph_pb2.CreateTaskResponse(task=self.task_pb(session, row, with_log=True), created=True)

        return await self.run(self.write, op)

    async def get_task(self, req: graph_pb2.GetTaskRequest) -> graph_pb2.GetTaskResponse:
        v.task_id(req.id)

        def op() -> graph_pb2.GetTaskResponse:
            with self.read() as session:
                return graph_pb2.GetTaskResponse(task=self.task_pb(session, self.task_row(session, req.id),
                                                                    with_log=True))

        return await self.run(op)

    async def list_tasks(self, req: graph_pb2.ListTasksRequest) -> graph_pb2.ListTasksResponse:
        statuses = [status_value(s, "statuses entry") for s in req.statuses]
        if req.tag:
            v.tag(req.tag)
        size = v.page_size(req.page_size)
        after = ""
        if req.page_token:
            after = decode_token(req.page_token, lambda s: bool(v.TASK_ID_RE.match(s) or v.CHAT_ID_RE.match(s)))

        def op() -> graph_pb2.ListTasksResponse:
            with self.read() as session:
                stmt = sa.select(TaskRow).order_by(TaskRow.id).limit(size + 1)
                if statuses:
                    stmt = stmt.where(TaskRow.status.in_(statuses))
                if req.tag:
                    stmt = stmt.where(
                        sa.exists().where(TaskTag.task_id == TaskRow.id, TaskTag.tag == req.tag)
                    )
                if after:
                    stmt = stmt.where(TaskRow.id > after)
                rows = list(session.scalars(stmt))
                more = len(rows) > size
                rows = rows[:size]
                tags = self.tags_of(session, [r.id for r in rows])
                return graph_pb2.ListTasksResponse(
                    tasks=[convert.task(r, tags[r.id]) for r in rows],
                    next_page_token=encode_token(rows[-1].id) if more else "",
                )

        return await self.run(op)

    async def update_task(self, req: graph_pb2.UpdateTaskRequest) -> graph_pb2.UpdateTaskResponse:
        v.task_id(req.id)
        non_negative(req.expected_version, "expected_version")
        u = req.update
        if u.HasField("title"):
            v.text(u.title, "update.title", required=True, max_len=v.MAX_TITLE)
        if u.HasField("description"):
            v.text(u.description, "update.description", required=False, max_len=v.MAX_DESCRIPTION)
        if u.HasField("status"):
            status_value(u.status, "update.status")
        if u.HasField("assigned"):
            label(u.assigned, "update.assigned", required=False, max_len=200)
        if u.HasField("model"):
            v.text(u.model, "update.model", required=False, max_len=v.MAX_MODEL)
        if u.HasField("executor"):
            label(u.executor, "update.executor", required=False, max_len=MAX_EXECUTOR)
        if u.HasField("endpoint"):
            v.text(u.endpoint, "update.endpoint", required=False, max_len=v.MAX_ENDPOINT)
        add_tags = tags_value(u.add_tags, "update.add_tags")
        remove_tags = tags_value(u.remove_tags, "update.remove_tags")
        if set(add_tags) & set(remove_tags):
            raise InvalidArgument("update.add_tags and update.remove_tags must not name the same tag",
                                  "update.remove_tags")
        v.text(req.log_message, "log_message", required=False, max_len=v.MAX_LOG_MESSAGE)
        actor = label(req.actor, "actor", required=False, max_len=MAX_ACTOR) or "api"
        is_chat = v.is_chat_id(req.id)
        if v.CHAT_LOOP_TAG in add_tags and not is_chat:
            raise InvalidArgument(f"tag {v.CHAT_LOOP_TAG!r} is reserved for chats", "update.add_tags")
        if v.CHAT_LOOP_TAG in remove_tags and is_chat:
            raise InvalidArgument(f"tag {v.CHAT_LOOP_TAG!r} cannot be removed from a chat", "update.remove_tags")

        def op(session: Session) -> graph_pb2.UpdateTaskResponse:
            row = self.task_row(session, req.id)
            if req.expected_version and row.version != req.expected_version:
                raise self._version_mismatch(req.id, row.version, req.expected_version)
            now = self.now()
            values: dict[str, Any] = {}
            for name in ("title", "description", "priority", "assigned", "model", "executor", "endpoint"):
                if u.HasField(name) and getattr(u, name) != getattr(row, name):
                    values[name] = getattr(u, name)
            old_status = row.status
            if u.HasField("status") and u.status != row.status:
                values["status"] = u.status
                if u.status == S.TASK_STATUS_IN_PROGRESS:
                    values["started_at"] = now
                values["completed_at"] = now if u.status in TERMINAL else None
            current_tags = set(self.tags_of(session, [row.id])[row.id])
            to_add = [t for t in add_tags if t not in current_tags]
            to_remove = [t for t in remove_tags if t in current_tags]
            if not values and not to_add and not to_remove and not req.log_message:
                return graph_pb2.UpdateTaskResponse(task=self.task_pb(session, row, with_log=True))
            values["updated_at"] = now
            values["version"] = row.version + 1
            # Compare-and-swap on the version read above: of two racing updates only one matches.
            result = session.execute(
                sa.update(TaskRow).where(TaskRow.id == row.id, TaskRow.version == row.version).values(**values),
                execution_options={"synchronize_session": False},
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                if req.expected_version:
                    current = session.scalar(sa.select(TaskRow.version).where(TaskRow.id == row.id))
                    raise self._version_mismatch(req.id, current, req.expected_version)
                raise _Conflict()
            if to_remove:
                session.execute(sa.delete(TaskTag).where(TaskTag.task_id == row.id, TaskTag.tag.in_(to_remove)))
            session.add_all(TaskTag(task_id=row.id, tag=t) for t in to_add)
            if req.log_message:
                self.log(session, row.id, actor, req.log_message, now)
            elif "status" in values:
                self.log(session, row.id, actor,
                          f"status {S.TaskStatus.Name(old_status)} -> {S.TaskStatus.Name(u.status)}", now)
            session.flush()
            session.expire(row)
            fresh = self.task_row(session, req.id)
            return graph_pb2.UpdateTaskResponse(task=self.task_pb(session, fresh, with_log=True))

        return await self.run(self.write, op)

    @staticmethod
    def _version_mismatch(task_id: str, current: int | None, expected: int) -> Aborted:
        return Aborted(
            f"task {task_id} was changed concurrently: current version is {current}, expected "
            f"{expected}; re-read the task and retry"
        )

    async def append_task_log(self, req: graph_pb2.AppendTaskLogRequest) -> graph_pb2.AppendTaskLogResponse:
        v.task_id(req.id)
        actor = label(req.actor, "actor", required=False, max_len=MAX_ACTOR) or "api"
        v.text(req.message, "message", required=True, max_len=v.MAX_LOG_MESSAGE)

        def op(session: Session) -> graph_pb2.AppendTaskLogResponse:
            self.task_row(session, req.id)
            entry = self.log(session, req.id, actor, req.message, self.now())
            session.flush()
            return graph_pb2.AppendTaskLogResponse(entry=convert.log_entry(entry))

        return await self.run(self.write, op)

    # -- messages ------------------------------------------------------------------------------

    async def append_message(self, req: graph_pb2.AppendMessageRequest,
                             trace_parent: str = "") -> graph_pb2.AppendMessageResponse:
        """Append a message; `trace_parent` (the caller's W3C traceparent) is stored with USER
        messages so the agent's answer can join that trace."""
        v.chat_id(req.chat_id)
        role = _role(req.role)
        v.text(req.content, "content", required=True, max_len=v.MAX_MESSAGE)
        v.request_id(req.request_id)
        if not TRACE_PARENT_RE.fullmatch(trace_parent) or role != S.MESSAGE_ROLE_USER:
            trace_parent = ""

        def op(session: Session) -> graph_pb2.AppendMessageResponse:
            self.task_row(session, req.chat_id, lock=True)  # serializes appends to this chat
            if req.request_id:
                existing = session.scalars(
                    sa.select(MessageRow).where(
                        MessageRow.chat_id == req.chat_id, MessageRow.role == role,
                        MessageRow.request_id == req.request_id,
                    )
                ).first()
                if existing is not None:
                    return graph_pb2.AppendMessageResponse(message=convert.message(existing), created=False)
            last = session.scalar(sa.select(sa.func.max(MessageRow.seq)).where(MessageRow.chat_id == req.chat_id))
            row = MessageRow(chat_id=req.chat_id, seq=(last or 0) + 1, role=role, content=req.content,
                             request_id=req.request_id or None, created_at=self.now(), trace_parent=trace_parent)
            session.add(row)
            session.flush()
            return graph_pb2.AppendMessageResponse(message=convert.message(row), created=True)

        resp = await self.run(self.write, op)
        if resp.created and role != S.MESSAGE_ROLE_USER and req.request_id:
            self.fanout.finish_partial(req.chat_id, req.request_id)
        # Also for a repeated request: the first may have been stored by a replica that died before
        # it woke the watchers (they re-read, and find nothing new if it did wake them).
        self.fanout.message_stored(req.chat_id)
        return resp

    def _messages(self, chat_id: str, after_seq: int, limit: int) -> list[task_pb2.ChatMessage]:
        with self.read() as session:
            self.task_row(session, chat_id)
            rows = session.scalars(
                sa.select(MessageRow)
                .where(MessageRow.chat_id == chat_id, MessageRow.seq > after_seq)
                .order_by(MessageRow.seq)
                .limit(limit)
            )
            return [convert.message(r) for r in rows]

    async def list_messages(self, req: graph_pb2.ListMessagesRequest) -> graph_pb2.ListMessagesResponse:
        v.chat_id(req.chat_id)
        after = non_negative(req.after_seq, "after_seq")
        size = v.page_size(req.page_size)
        if req.page_token:
            after = max(after, int(decode_token(req.page_token, lambda s: bool(re.fullmatch(r"[0-9]{1,18}", s)))))
        msgs = await self.run(self._messages, req.chat_id, after, size + 1)
        more = len(msgs) > size
        msgs = msgs[:size]
        return graph_pb2.ListMessagesResponse(
            messages=msgs, next_page_token=encode_token(str(msgs[-1].seq)) if more and msgs else "")

    async def watch_messages(
        self, req: graph_pb2.WatchMessagesRequest
    ) -> AsyncGenerator[graph_pb2.WatchMessagesResponse, None]:
        """Stored messages after after_seq, then each new one (and, with include_partial, pieces of
        replies being generated); ends with Unavailable on shutdown.

        Woken by appends in this process and, on PostgreSQL, by the other graph replicas' NOTIFYs
        (Fanout, pgnotify); no polling.
        """
        v.chat_id(req.chat_id)
        last = non_negative(req.after_seq, "after_seq")
        watcher = self.fanout.watch(req.chat_id, req.include_partial)
        try:
            await self.run(self._messages, req.chat_id, last, 1)  # NOT_FOUND before anything is sent
            while True:
                watcher.wake.clear()  # before the query: an append after it sets the event again
                if self._closing.is_set():
                    raise Unavailable(
                        f"the graph service is shutting down; reconnect and watch {req.chat_id} "
                        f"again with after_seq={last}"
                    )
                if watcher.stored:  # else only reply pieces woke us: no query
                    watcher.stored = False
                    batch = await self.run(self._messages, req.chat_id, last, WATCH_BATCH)
                    for msg in batch:
                        last = msg.seq
                        yield graph_pb2.WatchMessagesResponse(message=msg)
                    if len(batch) == WATCH_BATCH:
                        watcher.stored = True
                        continue
                while watcher.partials:
                    yield graph_pb2.WatchMessagesResponse(partial=watcher.partials.popleft())
                if watcher.wake.is_set():
                    continue
                await watcher.wake.wait()
        finally:
            self.fanout.unwatch(watcher)

    # -- what agents report ----------------------------------------------------------------------

    def _live_run(self, session: Session, chat_id: str, number: int) -> ChatRuntimeRow:
        """The chat's runtime, if run `number` is its live run (else FailedPrecondition).

        Live: the latest recorded run has that number and has not exited; or the run is being spawned
        (the supervisor records it only once the process exists): the chat is STARTING and `number`
        follows the latest run, which has exited (or there is none)."""
        rt = self.runtime_row(session, chat_id, lock=True)
        run = session.scalars(sa.select(RunRow).where(RunRow.chat_id == chat_id)
                              .order_by(RunRow.number.desc()).limit(1)).one_or_none()
        latest, exited = (run.number, run.exited_at is not None) if run is not None else (0, True)
        if not run_is_live(rt.state, latest, exited, number):
            current = f"run {latest}{' (ended)' if exited else ''}" if run is not None else "no run"
            raise FailedPrecondition(f"run {number} of chat {chat_id} is not its live run ({current}, state "
                                     f"{chat_states.name(rt.state)}): only a live run reports")
        return rt

    async def is_live_run(self, chat_id: str, number: int) -> bool:
        """Whether run `number` of the chat is its live run (per-run agent credentials, reports).

        Asked for every call an agent makes (authorization) and for every piece of a reply, so it is
        one prepared statement on a plain connection that locks nothing; writers check again under
        their lock (_live_run). Through the ORM this read was most of the graph's CPU while a reply
        streamed (docs/performance.md, "Streaming replies")."""
        def op() -> bool:
            with self.engine.connect() as conn:
                row = conn.execute(_LIVE_RUN, {"chat_id": chat_id}).one_or_none()
            if row is None:
                return False  # no such chat, or no runtime record
            latest, exited = (row.number, row.exited_at is not None) if row.number is not None else (0, True)
            return run_is_live(row.state, latest, exited, number)

        return await self.run(op)

    async def report_agent_status(self, req: graph_pb2.ReportAgentStatusRequest) -> graph_pb2.ReportAgentStatusResponse:
        v.chat_id(req.chat_id)
        if req.run_number < 1:
            raise InvalidArgument(f"run_number must be 1 or more, got {req.run_number}", "run_number")
        if req.HasField("answer_error"):
            v.text(req.answer_error.message, "answer_error.message", required=True, max_len=MAX_ERROR)
            label(req.answer_error.error_class, "answer_error.error_class", required=True, max_len=64)
            v.request_id(req.answer_error.request_id, "answer_error.request_id")
            valid_ts(req.answer_error.at, "answer_error.at")
        if req.HasField("waiting"):
            v.text(req.waiting.reason, "waiting.reason", required=True, max_len=MAX_ERROR)
            valid_ts(req.waiting.since, "waiting.since")
            valid_ts(req.waiting.next_attempt_at, "waiting.next_attempt_at")
        if req.answer_succeeded and req.HasField("answer_error"):
            raise InvalidArgument("answer_succeeded and answer_error exclude each other", "answer_succeeded")
        if req.endpoint_ok and req.HasField("waiting"):
            raise InvalidArgument("endpoint_ok and waiting exclude each other", "endpoint_ok")
        for name in ("input_tokens", "output_tokens", "context_window"):
            non_negative(getattr(req, name), name)
        label(req.context_window_detail, "context_window_detail", required=False, max_len=200)
        if req.input_tokens > 10**9 or req.output_tokens > 10**9:
            raise InvalidArgument("token counts of one report must be at most 10^9", "input_tokens")

        def op(session: Session) -> graph_pb2.ReportAgentStatusResponse:
            rt = self._live_run(session, req.chat_id, req.run_number)
            status = convert.agent_status(rt)
            status.run_number = req.run_number
            status.updated_at.FromDatetime(self.now())
            if req.HasField("answer_error"):
                status.last_answer_error.CopyFrom(req.answer_error)
                if not status.last_answer_error.HasField("at"):
                    status.last_answer_error.at.FromDatetime(self.now())
            if req.answer_succeeded:
                status.ClearField("last_answer_error")
                status.answers += 1
            if req.HasField("waiting"):
                status.waiting.CopyFrom(req.waiting)
            if req.endpoint_ok:
                status.ClearField("waiting")
            status.input_tokens += req.input_tokens
            status.output_tokens += req.output_tokens
            if req.context_window:
                status.context_window = req.context_window
                status.context_window_source = req.context_window_source
                status.context_window_detail = req.context_window_detail
            rt.agent_status_json = convert.message_to_json(status)
            rt.version += 1
            return graph_pb2.ReportAgentStatusResponse(status=status)

        resp = await self.run(self.write, op)
        self.fanout.runtime_changed(req.chat_id)
        return resp

    async def publish_partial(self, req: graph_pb2.PublishPartialMessageRequest
                              ) -> graph_pb2.PublishPartialMessageResponse:
        v.chat_id(req.chat_id)
        v.request_id(req.request_id)
        if not req.request_id:
            raise InvalidArgument("request_id is required: the user message being answered", "request_id")
        if req.run_number < 1:
            raise InvalidArgument(f"run_number must be 1 or more, got {req.run_number}", "run_number")
        non_negative(req.offset, "offset")
        v.text(req.text, "text", required=False, max_len=MAX_PARTIAL)
        if not await self.is_live_run(req.chat_id, req.run_number):
            raise FailedPrecondition(f"run {req.run_number} of chat {req.chat_id} is not its live run: only a live "
                                     "run publishes")
        piece = task_pb2.PartialMessage(chat_id=req.chat_id, request_id=req.request_id, offset=req.offset,
                                        text=req.text)
        return graph_pb2.PublishPartialMessageResponse(delivered=self.fanout.partial(piece))

    def forget_partials(self, chat_id: str) -> None:
        self.fanout.forget_chat(chat_id)

    # -- reconcile -----------------------------------------------------------------------------

    async def reconcile(self, req: graph_pb2.ReconcileRequest) -> graph_pb2.ReconcileResponse:
        Judged = tuple[TaskRow, ChatRuntimeRow | None, bool, str]

        def judge_all(session: Session, lock: bool) -> tuple[list[Judged], int]:
            stmt = sa.select(TaskRow).where(TaskRow.status == S.TASK_STATUS_IN_PROGRESS).order_by(TaskRow.id)
            if lock:
                stmt = stmt.with_for_update(key_share=True)
            tasks = list(session.scalars(stmt))
            ids = [t.id for t in tasks]
            rt_stmt = sa.select(ChatRuntimeRow).where(ChatRuntimeRow.chat_id.in_(ids))
            if lock:
                rt_stmt = rt_stmt.with_for_update()
            rts = {rt.chat_id: rt for rt in session.scalars(rt_stmt)} if ids else {}
            now = self.now()
            out: list[Judged] = []
            for t in tasks:
                rt = rts.get(t.id)
                record = reconcile.Record(assigned=t.assigned, has_runtime=rt is not None,
                                          supervisor_id=rt.supervisor_id if rt else "",
                                          lease_expires_at=rt.lease_expires_at if rt else None,
                                          resume_on_start=rt.resume_on_start if rt else False)
                reset, reason = reconcile.judge(record, now)
                out.append((t, rt, reset, reason))
            return out, len(tasks)

        def build(results: list[Judged], examined: int, applied: bool) -> graph_pb2.ReconcileResponse:
            resp = graph_pb2.ReconcileResponse(examined=examined)
            for t, _rt, reset, reason in results:
                target = resp.actions if reset else resp.kept
                target.add(task_id=t.id, from_status=S.TASK_STATUS_IN_PROGRESS,
                           to_status=S.TASK_STATUS_OPEN if reset else S.TASK_STATUS_IN_PROGRESS,
                           reason=reason, applied=applied and reset)
            return resp

        def dry() -> graph_pb2.ReconcileResponse:
            with self.read() as session:
                results, examined = judge_all(session, lock=False)
                return build(results, examined, applied=False)

        def apply(session: Session) -> graph_pb2.ReconcileResponse:
            results, examined = judge_all(session, lock=True)
            now = self.now()
            for t, rt, reset, reason in results:
                if not reset:
                    continue
                t.status = S.TASK_STATUS_OPEN
                t.updated_at = now
                t.version += 1
                self.log(session, t.id, "reconcile", f"reset IN_PROGRESS -> OPEN: {reason}", now)
                if rt is not None:
                    self.set_state(rt, R.RUNTIME_STATE_STOPPED, now)
                    rt.next_restart_at = None
                    rt.last_error = f"stopped by reconcile: {reason}; the chat's owner is gone"
                log.info("reconcile reset %s: %s", t.id, reason, extra=fields(task_id=t.id))
            session.flush()
            return build(results, examined, applied=True)

        if req.dry_run:
            return await self.run(dry)
        resp = await self.run(self.write, apply)
        for action in resp.actions:
            self.fanout.runtime_changed(action.task_id)
        return resp
