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
import socket
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.graph import convert
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
from wgs.common import procfs
from wgs.common import validation as v
from wgs.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from wgs.common.logs import fields
from wgs.common.timeutil import from_ts, to_ts, utcnow
from wgs.v1 import graph_pb2, plan_pb2, runtime_pb2, task_pb2

log = logging.getLogger("wgs.graph.store")

T = TypeVar("T")

S = task_pb2  # statuses and roles
R = runtime_pb2  # runtime states

TERMINAL = {S.TASK_STATUS_DONE, S.TASK_STATUS_FAILED, S.TASK_STATUS_ABANDONED}
EXIT_STATES = {R.RUNTIME_STATE_BACKOFF, R.RUNTIME_STATE_EXITED, R.RUNTIME_STATE_FAILED, R.RUNTIME_STATE_STOPPED}
DEFAULT_PRIORITY = 10
CHAT_PRIORITY = 50
RUNS_KEPT = 5
LOG_ENTRIES_RETURNED = 200
MAX_TAGS = 64
MAX_ACTOR = 200
MAX_SUPERVISOR_ID = 200
MAX_EXECUTOR = 64
MAX_HOSTNAME = 255
MAX_ERROR = 8 * 1024
MAX_STDERR_TAIL = 64 * 1024
MAX_LEASE_SECONDS = 3600
MAX_WRITE_ATTEMPTS = 8
WATCH_POLL_SECONDS = 1.0
WATCH_BATCH = 1000
TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
SPAN_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class _Conflict(Exception):
    """A compare-and-swap lost to a concurrent writer: rerun the whole transaction."""


# ---------------------------------------------------------------------------------------------
# Validation of fields specific to the graph (generic rules live in wgs.common.validation).


def _status(value: int, field: str) -> int:
    if value == S.TASK_STATUS_UNSPECIFIED or value not in S.TaskStatus.values():
        raise InvalidArgument(f"{field} must be a task status such as TASK_STATUS_OPEN, got {value}")
    return value


def _role(value: int) -> int:
    if value == S.MESSAGE_ROLE_UNSPECIFIED or value not in S.MessageRole.values():
        raise InvalidArgument(f"role must be a message role such as MESSAGE_ROLE_USER, got {value}")
    return value


def _state(value: int, field: str = "state") -> int:
    if value == R.RUNTIME_STATE_UNSPECIFIED or value not in R.RuntimeState.values():
        raise InvalidArgument(f"{field} must be a runtime state such as RUNTIME_STATE_RUNNING, got {value}")
    return value


def _label(value: str, field: str, *, required: bool, max_len: int) -> str:
    """A one-line identifier-like string (supervisor id, actor, hostname): no control characters."""
    if required and not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is too long: {len(value)} characters, at most {max_len}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidArgument(f"{field} must not contain control characters (newlines, tabs, NUL)")
    return value


def _supervisor_id(value: str, field: str = "supervisor_id") -> str:
    return _label(value, field, required=True, max_len=MAX_SUPERVISOR_ID)


def _lease(value: int) -> int:
    if not 1 <= value <= MAX_LEASE_SECONDS:
        raise InvalidArgument(f"lease_seconds must be between 1 and {MAX_LEASE_SECONDS}, got {value}")
    return value


def _trace_id(value: str, field: str = "trace_id") -> str:
    if value and not TRACE_ID_RE.match(value):
        raise InvalidArgument(f"{field} must be 32 lowercase hex digits or empty, got {value[:40]!r}")
    return value


def _span_id(value: str, field: str = "span_id") -> str:
    if value and not SPAN_ID_RE.match(value):
        raise InvalidArgument(f"{field} must be 16 lowercase hex digits or empty, got {value[:40]!r}")
    return value


def _tags(values: Sequence[str], field: str) -> list[str]:
    if len(values) > MAX_TAGS:
        raise InvalidArgument(f"{field} has {len(values)} tags, at most {MAX_TAGS}")
    return sorted({v.tag(t, f"{field} entry") for t in values})


def _non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative, got {value}")
    return value


def _encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _decode_token(token: str, check: Callable[[str], bool]) -> str:
    bad = InvalidArgument("page_token is not valid: pass next_page_token from the previous response unchanged")
    if len(token) > 400:
        raise bad
    try:
        value = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise bad from None
    if not check(value):
        raise bad
    return value


def _validate_run(run: runtime_pb2.Run) -> None:
    if not 1 <= run.number <= 2**31 - 1:
        raise InvalidArgument(f"run.number must be 1 or more, got {run.number}")
    for name in ("pid", "process_start_ticks", "monitor_pid", "monitor_start_ticks"):
        _non_negative(getattr(run, name), f"run.{name}")
    v.argv(list(run.argv), "run.argv")
    v.text(run.stderr_path, "run.stderr_path", required=False, max_len=v.MAX_PATH)
    v.text(run.stderr_tail, "run.stderr_tail", required=False, max_len=MAX_STDERR_TAIL)
    v.text(run.error, "run.error", required=False, max_len=MAX_ERROR)
    _label(run.signal_name, "run.signal_name", required=False, max_len=32)
    _label(run.hostname, "run.hostname", required=False, max_len=MAX_HOSTNAME)
    _label(run.supervisor_id, "run.supervisor_id", required=False, max_len=MAX_SUPERVISOR_ID)
    _trace_id(run.trace_id, "run.trace_id")
    if run.HasField("signal") and not 1 <= run.signal <= 128:
        raise InvalidArgument(f"run.signal must be a signal number (1-128), got {run.signal}")


def _plan_for(plan: plan_pb2.SpawnPlan | None, chat_id: str) -> None:
    """A plan stored with a chat must be that chat's plan (a mix-up would show the wrong argv)."""
    if plan is not None and plan.chat_id and plan.chat_id != chat_id:
        raise InvalidArgument(f"plan.chat_id {plan.chat_id[:40]!r} does not match chat_id {chat_id!r}")


def _iso(value: datetime | None) -> str:
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


class GraphStore:
    """All graph operations. Async methods run the sync transaction on a worker thread."""

    def __init__(self, engine: Engine, *, hostname: str | None = None, max_workers: int = 8,
                 watch_poll_seconds: float = WATCH_POLL_SECONDS,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self._clock = clock
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self.hostname = hostname or socket.gethostname()
        self.watch_poll_seconds = watch_poll_seconds
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="graph-db")
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._closing = asyncio.Event()

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        # Carry the caller's context (the current span) into the worker thread, so the database
        # spans are children of the RPC that caused them.
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, partial(ctx.run, fn, *args))

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run fn in one write transaction, retrying (bounded) on contention and races."""
        delay = 0.01
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            try:
                with Session(self._write_engine, expire_on_commit=False) as session, session.begin():
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

    def begin_shutdown(self) -> None:
        self._closing.set()
        self._notify_all()

    def _notify(self, chat_id: str) -> None:
        for ev in self._watchers.get(chat_id, ()):
            ev.set()

    def _notify_all(self) -> None:
        for evs in self._watchers.values():
            for ev in evs:
                ev.set()

    # -- shared helpers (inside a transaction) ---------------------------------------------------

    def _now(self) -> datetime:
        return self._clock()

    @staticmethod
    def _tags_of(session: Session, ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        if ids:
            rows = session.execute(sa.select(TaskTag.task_id, TaskTag.tag).where(TaskTag.task_id.in_(ids)))
            for task_id, tag in rows:
                out[task_id].append(tag)
        return out

    @staticmethod
    def _runs_of(session: Session, ids: Sequence[str]) -> dict[str, list[RunRow]]:
        out: dict[str, list[RunRow]] = defaultdict(list)
        if ids:
            for row in session.scalars(sa.select(RunRow).where(RunRow.chat_id.in_(ids))):
                out[row.chat_id].append(row)
        return out

    @staticmethod
    def _log(session: Session, task_id: str, actor: str, message: str, now: datetime) -> TaskLogRow:
        entry = TaskLogRow(task_id=task_id, timestamp=now, actor=actor, message=message)
        session.add(entry)
        return entry

    def _task_pb(self, session: Session, row: TaskRow, *, with_log: bool) -> task_pb2.Task:
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
        return convert.task(row, self._tags_of(session, [row.id])[row.id], entries)

    def _runtime_pb(self, session: Session, rt: ChatRuntimeRow) -> runtime_pb2.ChatRuntime:
        return convert.runtime(rt, self._runs_of(session, [rt.chat_id])[rt.chat_id])

    @staticmethod
    def _get_task(session: Session, task_id: str, *, lock: bool = False) -> TaskRow:
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
    def _get_runtime(session: Session, chat_id: str, *, lock: bool = False) -> ChatRuntimeRow:
        GraphStore._get_task(session, chat_id)
        stmt = sa.select(ChatRuntimeRow).where(ChatRuntimeRow.chat_id == chat_id)
        if lock:
            stmt = stmt.with_for_update()
        rt = session.scalars(stmt).one_or_none()
        if rt is None:
            raise FailedPrecondition(f"chat {chat_id} has no runtime record")
        return rt

    def _owned_runtime(self, session: Session, chat_id: str, supervisor_id: str) -> ChatRuntimeRow:
        rt = self._get_runtime(session, chat_id, lock=True)
        if rt.supervisor_id != supervisor_id:
            raise FailedPrecondition(
                f"chat {chat_id} is owned by supervisor {rt.supervisor_id!r}, not {supervisor_id!r}; "
                f"ClaimChat first (possible once the owner's lease expires, at {_iso(rt.lease_expires_at)})"
            )
        return rt

    @staticmethod
    def _set_state(rt: ChatRuntimeRow, state: int, now: datetime) -> None:
        if rt.state != state:
            rt.state = state
            rt.state_changed_at = now
        rt.version += 1

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
    def _next_counter(session: Session, name: str) -> int:
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
                raise InvalidArgument(f"id {req.id[:40]!r}: ids starting with '.' are reserved for chats")
            v.task_id(req.id)
        v.text(req.title, "title", required=True, max_len=v.MAX_TITLE)
        v.text(req.description, "description", required=False, max_len=v.MAX_DESCRIPTION)
        status = S.TASK_STATUS_OPEN if req.status == S.TASK_STATUS_UNSPECIFIED else _status(req.status, "status")
        tags = _tags(req.tags, "tags")
        if v.CHAT_LOOP_TAG in tags:
            raise InvalidArgument(f"tag {v.CHAT_LOOP_TAG!r} is reserved for chats (use CreateChatTask)")
        v.text(req.model, "model", required=False, max_len=v.MAX_MODEL)
        _label(req.executor, "executor", required=False, max_len=MAX_EXECUTOR)
        v.text(req.endpoint, "endpoint", required=False, max_len=v.MAX_ENDPOINT)
        v.request_id(req.request_id)

        def op(session: Session) -> graph_pb2.CreateTaskResponse:
            if req.request_id:
                existing = session.scalars(sa.select(TaskRow).where(TaskRow.request_id == req.request_id)).first()
                if existing is not None:
                    return graph_pb2.CreateTaskResponse(task=self._task_pb(session, existing, with_log=True),
                                                        created=False)
            if req.id:
                task_id = req.id
                if session.get(TaskRow, task_id) is not None:
                    raise AlreadyExists(f"task {task_id!r} already exists")
            else:
                while True:
                    task_id = f"task-{self._next_counter(session, 'task')}"
                    if session.get(TaskRow, task_id) is None:
                        break
            now = self._now()
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
            self._log(session, task_id, "graph", "task created", now)
            session.flush()
            return graph_pb2.CreateTaskResponse(task=self._task_pb(session, row, with_log=True), created=True)

        return await self._run(self._write, op)

    async def get_task(self, req: graph_pb2.GetTaskRequest) -> graph_pb2.GetTaskResponse:
        v.task_id(req.id)

        def op() -> graph_pb2.GetTaskResponse:
            with self._read() as session:
                return graph_pb2.GetTaskResponse(task=self._task_pb(session, self._get_task(session, req.id),
                                                                    with_log=True))

        return await self._run(op)

    async def list_tasks(self, req: graph_pb2.ListTasksRequest) -> graph_pb2.ListTasksResponse:
        statuses = [_status(s, "statuses entry") for s in req.statuses]
        if req.tag:
            v.tag(req.tag)
        size = v.page_size(req.page_size)
        after = ""
        if req.page_token:
            after = _decode_token(req.page_token, lambda s: bool(v.TASK_ID_RE.match(s) or v.CHAT_ID_RE.match(s)))

        def op() -> graph_pb2.ListTasksResponse:
            with self._read() as session:
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
                tags = self._tags_of(session, [r.id for r in rows])
                return graph_pb2.ListTasksResponse(
                    tasks=[convert.task(r, tags[r.id]) for r in rows],
                    next_page_token=_encode_token(rows[-1].id) if more else "",
                )

        return await self._run(op)

    async def update_task(self, req: graph_pb2.UpdateTaskRequest) -> graph_pb2.UpdateTaskResponse:
        v.task_id(req.id)
        _non_negative(req.expected_version, "expected_version")
        u = req.update
        if u.HasField("title"):
            v.text(u.title, "update.title", required=True, max_len=v.MAX_TITLE)
        if u.HasField("description"):
            v.text(u.description, "update.description", required=False, max_len=v.MAX_DESCRIPTION)
        if u.HasField("status"):
            _status(u.status, "update.status")
        if u.HasField("assigned"):
            _label(u.assigned, "update.assigned", required=False, max_len=200)
        if u.HasField("model"):
            v.text(u.model, "update.model", required=False, max_len=v.MAX_MODEL)
        if u.HasField("executor"):
            _label(u.executor, "update.executor", required=False, max_len=MAX_EXECUTOR)
        if u.HasField("endpoint"):
            v.text(u.endpoint, "update.endpoint", required=False, max_len=v.MAX_ENDPOINT)
        add_tags = _tags(u.add_tags, "update.add_tags")
        remove_tags = _tags(u.remove_tags, "update.remove_tags")
        if set(add_tags) & set(remove_tags):
            raise InvalidArgument("update.add_tags and update.remove_tags must not name the same tag")
        v.text(req.log_message, "log_message", required=False, max_len=v.MAX_LOG_MESSAGE)
        actor = _label(req.actor, "actor", required=False, max_len=MAX_ACTOR) or "api"
        is_chat = v.is_chat_id(req.id)
        if v.CHAT_LOOP_TAG in add_tags and not is_chat:
            raise InvalidArgument(f"tag {v.CHAT_LOOP_TAG!r} is reserved for chats")
        if v.CHAT_LOOP_TAG in remove_tags and is_chat:
            raise InvalidArgument(f"tag {v.CHAT_LOOP_TAG!r} cannot be removed from a chat")

        def op(session: Session) -> graph_pb2.UpdateTaskResponse:
            row = self._get_task(session, req.id)
            if req.expected_version and row.version != req.expected_version:
                raise self._version_mismatch(req.id, row.version, req.expected_version)
            now = self._now()
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
            current_tags = set(self._tags_of(session, [row.id])[row.id])
            to_add = [t for t in add_tags if t not in current_tags]
            to_remove = [t for t in remove_tags if t in current_tags]
            if not values and not to_add and not to_remove and not req.log_message:
                return graph_pb2.UpdateTaskResponse(task=self._task_pb(session, row, with_log=True))
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
                self._log(session, row.id, actor, req.log_message, now)
            elif "status" in values:
                self._log(session, row.id, actor,
                          f"status {S.TaskStatus.Name(old_status)} -> {S.TaskStatus.Name(u.status)}", now)
            session.flush()
            session.expire(row)
            fresh = self._get_task(session, req.id)
            return graph_pb2.UpdateTaskResponse(task=self._task_pb(session, fresh, with_log=True))

        return await self._run(self._write, op)

    @staticmethod
    def _version_mismatch(task_id: str, current: int | None, expected: int) -> Aborted:
        return Aborted(
            f"task {task_id} was changed concurrently: current version is {current}, expected "
            f"{expected}; re-read the task and retry"
        )

    async def append_task_log(self, req: graph_pb2.AppendTaskLogRequest) -> graph_pb2.AppendTaskLogResponse:
        v.task_id(req.id)
        actor = _label(req.actor, "actor", required=False, max_len=MAX_ACTOR) or "api"
        v.text(req.message, "message", required=True, max_len=v.MAX_LOG_MESSAGE)

        def op(session: Session) -> graph_pb2.AppendTaskLogResponse:
            self._get_task(session, req.id)
            entry = self._log(session, req.id, actor, req.message, self._now())
            session.flush()
            return graph_pb2.AppendTaskLogResponse(entry=convert.log_entry(entry))

        return await self._run(self._write, op)

    # -- chats ---------------------------------------------------------------------------------

    async def create_chat_task(self, req: graph_pb2.CreateChatTaskRequest) -> graph_pb2.CreateChatTaskResponse:
        v.text(req.name, "name", required=False, max_len=v.MAX_NAME)
        if "\n" in req.name or "\r" in req.name:
            raise InvalidArgument("name must be a single line")
        v.text(req.model, "model", required=False, max_len=v.MAX_MODEL)
        _label(req.executor, "executor", required=False, max_len=MAX_EXECUTOR)
        v.text(req.endpoint, "endpoint", required=False, max_len=v.MAX_ENDPOINT)
        argv = v.argv(list(req.command_argv), "command_argv")
        v.text(req.working_dir, "working_dir", required=False, max_len=v.MAX_PATH)
        v.request_id(req.request_id)
        supervisor = _supervisor_id(req.supervisor_id)
        lease = _lease(req.lease_seconds)
        cap = _non_negative(req.max_live_chats, "max_live_chats")
        _trace_id(req.trace_id)
        _span_id(req.span_id)

        def existing_response(session: Session, row: TaskRow) -> graph_pb2.CreateChatTaskResponse:
            if row.chat_number is None:
                raise AlreadyExists(
                    f"request_id {req.request_id!r} was already used to create task {row.id!r}, which is not a chat"
                )
            rt = self._get_runtime(session, row.id)
            return graph_pb2.CreateChatTaskResponse(
                task=self._task_pb(session, row, with_log=True), runtime=self._runtime_pb(session, rt), created=False
            )

        def op(session: Session) -> graph_pb2.CreateChatTaskResponse:
            if req.request_id:
                existing = session.scalars(sa.select(TaskRow).where(TaskRow.request_id == req.request_id)).first()
                if existing is not None:
                    return existing_response(session, existing)
            # The counter row lock (first statement that writes) serializes creators, so the count
            # below sees every chat committed before us: the cap cannot be overshot by a race.
            number = self._next_counter(session, "chat")
            if cap:
                live = session.scalar(
                    sa.select(sa.func.count()).select_from(TaskRow).where(
                        TaskRow.chat_number.is_not(None), TaskRow.status == S.TASK_STATUS_IN_PROGRESS
                    )
                ) or 0
                if live >= cap:
                    raise ResourceExhausted(
                        f"{live} chats are live and the cap is {cap} (WGS_MAX_LIVE_CHATS); stop, archive or "
                        "delete a chat first, or raise the cap"
                    )
            chat_id = f"{v.CHAT_PREFIX}{number}"
            now = self._now()
            row = TaskRow(
                id=chat_id, chat_number=number, title=f"Chat: {req.name}" if req.name.strip() else f"Chat {number}",
                description="", status=S.TASK_STATUS_IN_PROGRESS, priority=CHAT_PRIORITY, assigned="",
                model=req.model, executor=req.executor, endpoint=req.endpoint, command_argv=argv,
                working_dir=req.working_dir, request_id=req.request_id or None, created_at=now,
                started_at=now, completed_at=None, updated_at=now, version=1,
            )
            session.add(row)
            session.flush()
            session.add(TaskTag(task_id=chat_id, tag=v.CHAT_LOOP_TAG))
            rt = ChatRuntimeRow(
                chat_id=chat_id, state=R.RUNTIME_STATE_STARTING, restart_count=0, next_restart_at=None,
                last_error="", plan_json="", trace_id=req.trace_id, span_id=req.span_id, supervisor_id=supervisor,
                lease_expires_at=now + timedelta(seconds=lease), state_changed_at=now, version=1,
            )
            session.add(rt)
            what = " ".join(argv) if argv else (req.model or "default model")
            self._log(session, chat_id, "graph", f"chat created by supervisor {supervisor} ({what})", now)
            session.flush()
            return graph_pb2.CreateChatTaskResponse(
                task=self._task_pb(session, row, with_log=True), runtime=convert.runtime(rt, []), created=True
            )

        return await self._run(self._write, op)

    async def get_chat_record(self, req: graph_pb2.GetChatRecordRequest) -> graph_pb2.GetChatRecordResponse:
        v.chat_id(req.chat_id)

        def op() -> graph_pb2.GetChatRecordResponse:
            with self._read() as session:
                row = self._get_task(session, req.chat_id)
                rt = self._get_runtime(session, req.chat_id)
                return graph_pb2.GetChatRecordResponse(
                    task=self._task_pb(session, row, with_log=True), runtime=self._runtime_pb(session, rt)
                )

        return await self._run(op)

    async def list_chat_records(self, req: graph_pb2.ListChatRecordsRequest) -> graph_pb2.ListChatRecordsResponse:
        if req.supervisor_id:
            _supervisor_id(req.supervisor_id)
        states = [_state(s, "states entry") for s in req.states]
        size = v.page_size(req.page_size)
        after = -1
        if req.page_token:
            after = int(_decode_token(req.page_token, lambda s: bool(re.fullmatch(r"[0-9]{1,18}", s))))

        def op() -> graph_pb2.ListChatRecordsResponse:
            with self._read() as session:
                stmt = (
                    sa.select(TaskRow, ChatRuntimeRow)
                    .join(ChatRuntimeRow, ChatRuntimeRow.chat_id == TaskRow.id)
                    .where(TaskRow.chat_number.is_not(None), TaskRow.chat_number > after)
                    .order_by(TaskRow.chat_number)
                    .limit(size + 1)
                )
                if not req.include_ended:
                    stmt = stmt.where(
                        TaskRow.status != S.TASK_STATUS_ABANDONED,
                        ~sa.exists().where(TaskTag.task_id == TaskRow.id, TaskTag.tag == v.ARCHIVED_TAG),
                    )
                if req.supervisor_id:
                    stmt = stmt.where(ChatRuntimeRow.supervisor_id == req.supervisor_id)
                if states:
                    stmt = stmt.where(ChatRuntimeRow.state.in_(states))
                rows = [(t, rt) for t, rt in session.execute(stmt)]
                more = len(rows) > size
                rows = rows[:size]
                ids = [t.id for t, _ in rows]
                tags = self._tags_of(session, ids)
                runs = self._runs_of(session, ids)
                last = rows[-1][0].chat_number if rows else None
                return graph_pb2.ListChatRecordsResponse(
                    chats=[
                        graph_pb2.ChatRecord(task=convert.task(t, tags[t.id]), runtime=convert.runtime(rt, runs[t.id]))
                        for t, rt in rows
                    ],
                    next_page_token=_encode_token(str(last)) if more and last is not None else "",
                )

        return await self._run(op)

    # -- messages ------------------------------------------------------------------------------

    async def append_message(self, req: graph_pb2.AppendMessageRequest) -> graph_pb2.AppendMessageResponse:
        v.chat_id(req.chat_id)
        role = _role(req.role)
        v.text(req.content, "content", required=True, max_len=v.MAX_MESSAGE)
        v.request_id(req.request_id)

        def op(session: Session) -> graph_pb2.AppendMessageResponse:
            self._get_task(session, req.chat_id, lock=True)  # serializes appends to this chat
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
                             request_id=req.request_id or None, created_at=self._now())
            session.add(row)
            session.flush()
            return graph_pb2.AppendMessageResponse(message=convert.message(row), created=True)

        resp = await self._run(self._write, op)
        if resp.created:
            self._notify(req.chat_id)
        return resp

    def _messages(self, chat_id: str, after_seq: int, limit: int) -> list[task_pb2.ChatMessage]:
        with self._read() as session:
            self._get_task(session, chat_id)
            rows = session.scalars(
                sa.select(MessageRow)
                .where(MessageRow.chat_id == chat_id, MessageRow.seq > after_seq)
                .order_by(MessageRow.seq)
                .limit(limit)
            )
            return [convert.message(r) for r in rows]

    async def list_messages(self, req: graph_pb2.ListMessagesRequest) -> graph_pb2.ListMessagesResponse:
        v.chat_id(req.chat_id)
        _non_negative(req.after_seq, "after_seq")
        limit = v.page_size(req.limit, default=1000, field="limit")
        msgs = await self._run(self._messages, req.chat_id, req.after_seq, limit)
        return graph_pb2.ListMessagesResponse(messages=msgs)

    async def watch_messages(
        self, req: graph_pb2.WatchMessagesRequest
    ) -> AsyncGenerator[task_pb2.ChatMessage, None]:
        """Stored messages after after_seq, then each new one; ends with Unavailable on shutdown.

        Appends in this process wake the watcher at once; a re-query every watch_poll_seconds
        catches writers in other processes.
        """
        v.chat_id(req.chat_id)
        last = _non_negative(req.after_seq, "after_seq")
        wake = asyncio.Event()
        self._watchers[req.chat_id].add(wake)
        try:
            while True:
                wake.clear()  # before the query: an append after it sets the event again
                if self._closing.is_set():
                    raise Unavailable(
                        f"the graph service is shutting down; reconnect and watch {req.chat_id} "
                        f"again with after_seq={last}"
                    )
                batch = await self._run(self._messages, req.chat_id, last, WATCH_BATCH)
                for msg in batch:
                    last = msg.seq
                    yield msg
                if len(batch) == WATCH_BATCH:
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), timeout=self.watch_poll_seconds)
                except TimeoutError:
                    pass
        finally:
            watchers = self._watchers.get(req.chat_id)
            if watchers is not None:
                watchers.discard(wake)
                if not watchers:
                    del self._watchers[req.chat_id]

    # -- runtime -------------------------------------------------------------------------------

    @staticmethod
    def _upsert_run(session: Session, chat_id: str, run: runtime_pb2.Run, supervisor: str,
                    now: datetime, *, started: bool) -> RunRow:
        row = session.scalars(
            sa.select(RunRow).where(RunRow.chat_id == chat_id, RunRow.number == run.number)
        ).one_or_none()
        if row is None:
            row = RunRow(chat_id=chat_id, number=run.number)
            session.add(row)
        if started or row.pid == 0:
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
        else:
            row.exited_at = None
            row.exit_code = None
            row.signal = None
            row.signal_name = ""
            row.stderr_tail = ""
            row.error = run.error
        return row

    async def record_run_started(self, req: graph_pb2.RecordRunStartedRequest) -> graph_pb2.RecordRunStartedResponse:
        v.chat_id(req.chat_id)
        supervisor = _supervisor_id(req.supervisor_id)
        if not req.HasField("run"):
            raise InvalidArgument("run is required (at least its number and pid)")
        _validate_run(req.run)
        state = R.RUNTIME_STATE_RUNNING if req.state == R.RUNTIME_STATE_UNSPECIFIED else _state(req.state)
        _plan_for(req.plan if req.HasField("plan") else None, req.chat_id)

        def op(session: Session) -> graph_pb2.RecordRunStartedResponse:
            rt = self._owned_runtime(session, req.chat_id, supervisor)
            now = self._now()
            self._upsert_run(session, req.chat_id, req.run, supervisor, now, started=True)
            self._set_state(rt, state, now)
            rt.next_restart_at = None
            if req.HasField("plan"):
                rt.plan_json = convert.plan_to_json(req.plan)
            where = f" on {req.run.hostname}" if req.run.hostname else ""
            self._log(session, req.chat_id, supervisor, f"run {req.run.number} started: pid {req.run.pid}{where}", now)
            session.flush()
            self._prune_runs(session, req.chat_id)
            return graph_pb2.RecordRunStartedResponse(runtime=self._runtime_pb(session, rt))

        return await self._run(self._write, op)

    async def record_run_exited(self, req: graph_pb2.RecordRunExitedRequest) -> graph_pb2.RecordRunExitedResponse:
        v.chat_id(req.chat_id)
        supervisor = _supervisor_id(req.supervisor_id)
        if not req.HasField("run"):
            raise InvalidArgument("run is required (its number plus exit_code, signal or error)")
        _validate_run(req.run)
        state = _state(req.state)
        if state not in EXIT_STATES:
            raise InvalidArgument(
                f"state must be BACKOFF, EXITED, FAILED or STOPPED after a run ended, got {R.RuntimeState.Name(state)}"
            )
        _non_negative(req.restart_count, "restart_count")
        v.text(req.last_error, "last_error", required=False, max_len=MAX_ERROR)
        _plan_for(req.plan if req.HasField("plan") else None, req.chat_id)

        def op(session: Session) -> graph_pb2.RecordRunExitedResponse:
            rt = self._owned_runtime(session, req.chat_id, supervisor)
            now = self._now()
            run = self._upsert_run(session, req.chat_id, req.run, supervisor, now, started=False)
            self._set_state(rt, state, now)
            rt.restart_count = req.restart_count
            rt.next_restart_at = from_ts(req.next_restart_at) if req.HasField("next_restart_at") else None
            rt.last_error = req.last_error
            if req.HasField("plan"):
                rt.plan_json = convert.plan_to_json(req.plan)
            if run.exit_code is not None:
                how = f"exited with code {run.exit_code}"
            elif run.signal is not None:
                how = f"was killed by {run.signal_name or 'signal ' + str(run.signal)}"
            else:
                how = "ended"
            if run.error:
                how += f" ({run.error})" if run.pid else f": failed to start: {run.error}"
            self._log(session, req.chat_id, supervisor,
                      f"run {run.number} {how}; state {R.RuntimeState.Name(state)}", now)
            session.flush()
            self._prune_runs(session, req.chat_id)
            return graph_pb2.RecordRunExitedResponse(runtime=self._runtime_pb(session, rt))

        return await self._run(self._write, op)

    async def update_chat_runtime(
        self, req: graph_pb2.UpdateChatRuntimeRequest
    ) -> graph_pb2.UpdateChatRuntimeResponse:
        v.chat_id(req.chat_id)
        supervisor = _supervisor_id(req.supervisor_id)
        state = _state(req.state)
        if req.HasField("restart_count"):
            _non_negative(req.restart_count, "restart_count")
        if req.HasField("last_error"):
            v.text(req.last_error, "last_error", required=False, max_len=MAX_ERROR)
        _plan_for(req.plan if req.HasField("plan") else None, req.chat_id)

        def op(session: Session) -> graph_pb2.UpdateChatRuntimeResponse:
            rt = self._owned_runtime(session, req.chat_id, supervisor)
            now = self._now()
            self._set_state(rt, state, now)
            if req.HasField("restart_count"):
                rt.restart_count = req.restart_count
            rt.next_restart_at = from_ts(req.next_restart_at) if req.HasField("next_restart_at") else None
            if req.HasField("last_error"):
                rt.last_error = req.last_error
            if req.HasField("plan"):
                rt.plan_json = convert.plan_to_json(req.plan)
            session.flush()
            return graph_pb2.UpdateChatRuntimeResponse(runtime=self._runtime_pb(session, rt))

        return await self._run(self._write, op)

    async def renew_leases(self, req: graph_pb2.RenewLeasesRequest) -> graph_pb2.RenewLeasesResponse:
        supervisor = _supervisor_id(req.supervisor_id)
        lease = _lease(req.lease_seconds)

        def op(session: Session) -> graph_pb2.RenewLeasesResponse:
            expires = self._now() + timedelta(seconds=lease)
            result = session.execute(
                sa.update(ChatRuntimeRow).where(ChatRuntimeRow.supervisor_id == supervisor)
                .values(lease_expires_at=expires),
                execution_options={"synchronize_session": False},
            )
            return graph_pb2.RenewLeasesResponse(renewed=result.rowcount,  # type: ignore[attr-defined]
                                                 lease_expires_at=to_ts(expires))

        return await self._run(self._write, op)

    async def claim_chat(self, req: graph_pb2.ClaimChatRequest) -> graph_pb2.ClaimChatResponse:
        v.chat_id(req.chat_id)
        supervisor = _supervisor_id(req.supervisor_id)
        lease = _lease(req.lease_seconds)

        def op(session: Session) -> graph_pb2.ClaimChatResponse:
            rt = self._get_runtime(session, req.chat_id, lock=True)
            now = self._now()
            previous = rt.supervisor_id
            expired = rt.lease_expires_at is None or rt.lease_expires_at <= now
            if previous != supervisor and not expired:
                raise FailedPrecondition(
                    f"chat {req.chat_id} is owned by supervisor {previous!r} whose lease is valid until "
                    f"{_iso(rt.lease_expires_at)}; it can be claimed once that lease expires"
                )
            old_lease = rt.lease_expires_at
            rt.supervisor_id = supervisor
            rt.lease_expires_at = now + timedelta(seconds=lease)
            rt.version += 1
            if previous != supervisor:
                self._log(session, req.chat_id, supervisor,
                          f"claimed by supervisor {supervisor} from {previous} (its lease expired at "
                          f"{_iso(old_lease)})", now)
            session.flush()
            return graph_pb2.ClaimChatResponse(runtime=self._runtime_pb(session, rt),
                                               previous_supervisor_id=previous)

        return await self._run(self._write, op)

    # -- reconcile -----------------------------------------------------------------------------

    def _judge(self, task: TaskRow, rt: ChatRuntimeRow | None, runs: list[RunRow],
               now: datetime) -> tuple[bool, str]:
        """(reset?, reason). Reset only with proof that the owner is gone."""
        if rt is None:
            who = f"assigned to {task.assigned!r}, but " if task.assigned else ""
            return False, f"{who}no owner recorded (no lease, no run): left alone"
        if rt.lease_expires_at is not None:
            if rt.lease_expires_at > now:
                return False, f"lease of supervisor {rt.supervisor_id!r} valid until {_iso(rt.lease_expires_at)}"
            return True, f"lease of supervisor {rt.supervisor_id!r} expired at {_iso(rt.lease_expires_at)}"
        current = max(runs, key=lambda r: r.number, default=None)
        if current is None or current.pid <= 0:
            return False, "no lease and no running agent recorded: left alone"
        if current.exited_at is not None:
            return False, f"no lease recorded and run {current.number} already exited: left alone"
        if current.hostname != self.hostname:
            return False, (f"run {current.number} runs on host {current.hostname!r}, not this host "
                           f"({self.hostname!r}): cannot check its pid, left alone")
        ticks = procfs.start_ticks(current.pid)
        if ticks is None:
            return True, f"agent pid {current.pid} of run {current.number} on {self.hostname} is gone"
        if current.process_start_ticks and ticks != current.process_start_ticks:
            return True, (f"pid {current.pid} of run {current.number} on {self.hostname} now belongs to another "
                          f"process (start ticks {ticks}, recorded {current.process_start_ticks})")
        return False, f"agent pid {current.pid} of run {current.number} is alive on {self.hostname}"

    async def reconcile(self, req: graph_pb2.ReconcileRequest) -> graph_pb2.ReconcileResponse:
        def judge_all(session: Session, lock: bool) -> tuple[list[tuple[TaskRow, ChatRuntimeRow | None, bool, str]],
                                                                int]:
            stmt = sa.select(TaskRow).where(TaskRow.status == S.TASK_STATUS_IN_PROGRESS).order_by(TaskRow.id)
            if lock:
                stmt = stmt.with_for_update(key_share=True)
            tasks = list(session.scalars(stmt))
            ids = [t.id for t in tasks]
            rt_stmt = sa.select(ChatRuntimeRow).where(ChatRuntimeRow.chat_id.in_(ids))
            if lock:
                rt_stmt = rt_stmt.with_for_update()
            rts = {rt.chat_id: rt for rt in session.scalars(rt_stmt)} if ids else {}
            runs = self._runs_of(session, ids)
            now = self._now()
            out = []
            for t in tasks:
                rt = rts.get(t.id)
                reset, reason = self._judge(t, rt, runs[t.id], now)
                out.append((t, rt, reset, reason))
            return out, len(tasks)

        def build(results: list[tuple[TaskRow, ChatRuntimeRow | None, bool, str]], examined: int,
                  applied: bool) -> graph_pb2.ReconcileResponse:
            resp = graph_pb2.ReconcileResponse(examined=examined)
            for t, _rt, reset, reason in results:
                target = resp.actions if reset else resp.kept
                target.add(task_id=t.id, from_status=S.TASK_STATUS_IN_PROGRESS,
                           to_status=S.TASK_STATUS_OPEN if reset else S.TASK_STATUS_IN_PROGRESS,
                           reason=reason, applied=applied and reset)
            return resp

        def dry() -> graph_pb2.ReconcileResponse:
            with self._read() as session:
                results, examined = judge_all(session, lock=False)
                return build(results, examined, applied=False)

        def apply(session: Session) -> graph_pb2.ReconcileResponse:
            results, examined = judge_all(session, lock=True)
            now = self._now()
            for t, rt, reset, reason in results:
                if not reset:
                    continue
                t.status = S.TASK_STATUS_OPEN
                t.updated_at = now
                t.version += 1
                self._log(session, t.id, "reconcile", f"reset IN_PROGRESS -> OPEN: {reason}", now)
                if rt is not None:
                    self._set_state(rt, R.RUNTIME_STATE_STOPPED, now)
                    rt.next_restart_at = None
                    rt.last_error = f"stopped by reconcile: {reason}; the chat's owner is gone"
                log.info("reconcile reset %s: %s", t.id, reason, extra=fields(task_id=t.id))
            session.flush()
            return build(results, examined, applied=True)

        if req.dry_run:
            return await self._run(dry)
        return await self._run(self._write, apply)

    # -- authorization (services/graph/authz.py) -------------------------------------------------

    async def latest_run(self, chat_id: str) -> tuple[int, bool] | None:
        """(number of the chat's latest run, or 0 before the first; has it exited?), or None if the
        chat has no runtime record. Read on each agent call, to tell whether its run still lives."""

        def op() -> tuple[int, bool] | None:
            with self._read() as session:
                if session.scalar(sa.select(ChatRuntimeRow.state).where(ChatRuntimeRow.chat_id == chat_id)) is None:
                    return None
                row = session.execute(
                    sa.select(RunRow.number, RunRow.exited_at).where(RunRow.chat_id == chat_id)
                    .order_by(RunRow.number.desc()).limit(1)
                ).first()
                return (0, True) if row is None else (int(row[0]), row[1] is not None)

        return await self._run(op)
