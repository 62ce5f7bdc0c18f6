"""Conversions from database rows to wgs.v1 messages (one place for each mapping)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import Row

from services.graph.db import ChatRuntimeRow, MessageRow, RunRow, SupervisorRow, TaskLogRow, TaskRow
from wgs.common.timeutil import set_ts, to_ts
from wgs.v1 import plan_pb2, runtime_pb2, runtime_service_pb2, task_pb2

M = TypeVar("M", bound=Message)


def message_to_json(msg: Message) -> str:
    """A message as stored in a JSON column (proto field names, compact)."""
    return _printed(type(msg), msg.SerializeToString(deterministic=True))  # type: ignore[arg-type]


@lru_cache(maxsize=1024)
def _printed(kind: type[Message], data: bytes) -> str:
    """json_format is pure Python (~0.3 ms for a plan), and a create stores the same plan twice
    (the chat, then its run 1); the same message always prints the same text."""
    return json_format.MessageToJson(kind.FromString(data), preserving_proto_field_name=True, indent=None)


def message_from_json(text: str, empty: M) -> M | None:
    if not text:
        return None
    data = _parsed(type(empty), text)  # type: ignore[arg-type]  # message classes are hashable
    empty.MergeFromString(data)
    if not data:
        empty.SetInParent()  # "{}" is a message all defaults, still present
    return empty


@lru_cache(maxsize=4096)
def _parsed(kind: type[Message], text: str) -> bytes:
    """A stored JSON column parsed, kept as wire bytes by its text. json_format is pure Python
    (~0.2 ms for a plan): parsing every chat's plan was a third of ListChatRecords' time; the
    same text always parses to the same message, so a list of unchanged chats parses nothing."""
    return json_format.Parse(text, kind(), ignore_unknown_fields=True).SerializeToString()


def plan_to_json(plan: plan_pb2.SpawnPlan) -> str:
    return message_to_json(plan)


def plan_from_json(text: str) -> plan_pb2.SpawnPlan | None:
    return message_from_json(text, plan_pb2.SpawnPlan())


def agent_status(row: ChatRuntimeRow) -> runtime_pb2.AgentStatus:
    """The stored agent status (an empty one before the first report)."""
    return message_from_json(row.agent_status_json, runtime_pb2.AgentStatus()) or runtime_pb2.AgentStatus()


def clear_waiting(row: ChatRuntimeRow) -> None:
    """A run started or ended: no agent is waiting for its endpoint any more."""
    if row.agent_status_json:
        status = agent_status(row)
        if status.HasField("waiting"):
            status.ClearField("waiting")
            row.agent_status_json = message_to_json(status)


def log_entry(row: TaskLogRow | Row[Any]) -> task_pb2.LogEntry:
    return task_pb2.LogEntry(timestamp=to_ts(row.timestamp), actor=row.actor, message=row.message)


def task(row: TaskRow | Row[Any], tags: Iterable[str], log: Sequence[TaskLogRow | Row[Any]] = ()) -> task_pb2.Task:
    """`row`: an ORM row or a plain (Core) row of the tasks table."""
    out = task_pb2.Task(
        id=row.id,
        title=row.title,
        description=row.description,
        status=row.status,  # type: ignore[arg-type]
        priority=row.priority,
        assigned=row.assigned,
        tags=sorted(set(tags)),
        model=row.model,
        executor=row.executor,
        endpoint=row.endpoint,
        command_argv=row.command_argv or (),
        working_dir=row.working_dir,
        version=row.version,
        request_id=row.request_id or "",
    )
    # Times set in place, not as Timestamp arguments (each one built and copied): lists convert
    # a thousand rows per call.
    set_ts(out.created_at, row.created_at)
    set_ts(out.started_at, row.started_at)
    set_ts(out.completed_at, row.completed_at)
    set_ts(out.updated_at, row.updated_at)
    if log:
        out.log.extend(log_entry(e) for e in log)
    if row.generation_json:
        message_from_json(row.generation_json, out.generation)
    return out


def run(row: RunRow | Row[Any]) -> runtime_pb2.Run:
    """`row`: an ORM row or a plain (Core) row of the chat_runs table."""
    out = runtime_pb2.Run(
        number=row.number,
        pid=row.pid,
        process_start_ticks=row.process_start_ticks,
        monitor_pid=row.monitor_pid,
        monitor_start_ticks=row.monitor_start_ticks,
        argv=row.argv or (),
        stderr_path=row.stderr_path,
        signal_name=row.signal_name,
        stderr_tail=row.stderr_tail,
        error=row.error,
        hostname=row.hostname,
        supervisor_id=row.supervisor_id,
        trace_id=row.trace_id,
        end=row.end,  # type: ignore[arg-type]
        end_detail=row.end_detail,
        leftovers_ended=row.leftovers_ended,
    )
    set_ts(out.started_at, row.started_at)
    set_ts(out.exited_at, row.exited_at)
    if row.exit_code is not None:
        out.exit_code = row.exit_code
    if row.signal is not None:
        out.signal = row.signal
    return out


def runtime(row: ChatRuntimeRow | Row[Any], runs: Sequence[RunRow | Row[Any]]) -> runtime_pb2.ChatRuntime:
    """`runs` in any order; the newest becomes current_run, up to 4 others previous_runs. `row` and
    `runs`: ORM rows or plain (Core) rows of their tables."""
    out = runtime_pb2.ChatRuntime(
        state=row.state,  # type: ignore[arg-type]
        restart_count=row.restart_count,
        last_error=row.last_error,
        trace_id=row.trace_id,
        span_id=row.span_id,
        supervisor_id=row.supervisor_id,
        version=row.version,
        resume_on_start=row.resume_on_start,
    )
    set_ts(out.next_restart_at, row.next_restart_at)
    set_ts(out.lease_expires_at, row.lease_expires_at)
    set_ts(out.state_changed_at, row.state_changed_at)
    if row.plan_json:
        message_from_json(row.plan_json, out.plan)
    if row.agent_status_json:
        message_from_json(row.agent_status_json, out.agent)
    if runs:
        ordered = sorted(runs, key=lambda r: r.number, reverse=True) if len(runs) > 1 else runs
        out.current_run.CopyFrom(run(ordered[0]))
        out.previous_runs.extend(run(r) for r in ordered[1:5])
    return out


def message(row: MessageRow) -> task_pb2.ChatMessage:
    return task_pb2.ChatMessage(
        chat_id=row.chat_id,
        seq=row.seq,
        role=row.role,  # type: ignore[arg-type]
        content=row.content,
        request_id=row.request_id or "",
        created_at=to_ts(row.created_at),
        trace_parent=row.trace_parent,
    )


def supervisor(row: SupervisorRow, owned_chats: int) -> runtime_service_pb2.SupervisorInfo:
    return runtime_service_pb2.SupervisorInfo(
        supervisor_id=row.id, advertise_address=row.advertise_address, heartbeat_at=to_ts(row.heartbeat_at),
        lease_expires_at=to_ts(row.lease_expires_at), free_capacity=row.free_capacity, live_chats=row.live_chats,
        max_live_chats=row.max_live_chats, memory_used_bytes=row.memory_used_bytes,
        memory_limit_bytes=row.memory_limit_bytes, owned_chats=owned_chats,
    )


# ---------------------------------------------------------------------------------------------
# ListChatRecords' cache


def hashable_columns(table: sa.FromClause) -> list[sa.ColumnElement[Any]]:
    """`table`'s columns for a select whose rows are hashable: JSON columns read as their text."""
    return [sa.cast(c, sa.Text).label(c.name) if isinstance(c.type, sa.JSON) else c for c in table.c]


class _Decoded:
    """A row read with `hashable_columns`, its JSON columns decoded (what the converters read)."""

    def __init__(self, row: Row[Any]) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._row, name)
        if name in ("command_argv", "argv"):  # the JSON columns of tasks and chat_runs
            return json.loads(value) if value else []
        return value


class RecordCache:
    """ChatRecords already converted, kept as wire bytes by the rows they were converted from.

    ListChatRecords reads every row of a page anyway; what cost the most was turning a thousand of
    them into messages each time (two thirds of the call, most of it protobuf field by field).
    The key is every column of the task, runtime and run rows plus the tags, and the record is a
    pure function of them, so a cached record is never stale: a changed chat has a new key (and
    its old entry ages out). Per process, bounded by `max_bytes` (least recently used out first);
    safe from the store's worker threads.
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _cost(data: bytes) -> int:
        return 2 * len(data) + 512  # the key holds about the same text again, plus the tuples

    def record(self, task_row: Row[Any], tags: Sequence[str], runtime_row: Row[Any],
               run_rows: Sequence[Row[Any]]) -> bytes:
        """The serialized ChatRecord of these rows (task and runs read with `hashable_columns`)."""
        # Plain tuples: hashed and compared in C (Row.__eq__ is Python).
        key = (tuple(task_row), tuple(tags), tuple(runtime_row), tuple(tuple(r) for r in run_rows))
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                return data
        record = runtime_service_pb2.ChatRecord(
            task=task(_Decoded(task_row), tags),  # type: ignore[arg-type]
            runtime=runtime(runtime_row, [_Decoded(r) for r in run_rows]))  # type: ignore[misc]
        data = record.SerializeToString()
        cost = self._cost(data)
        if cost > self.max_bytes:
            return data
        with self._lock:
            if key not in self._items:
                self._items[key] = data
                self._bytes += cost
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= self._cost(old)
        return data
