"""Conversions from database rows to wgs.v1 messages (one place for each mapping)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf import json_format

from services.graph.db import ChatRuntimeRow, MessageRow, RunRow, TaskLogRow, TaskRow
from wgs.common.timeutil import to_ts
from wgs.v1 import plan_pb2, runtime_pb2, task_pb2


def plan_to_json(plan: plan_pb2.SpawnPlan) -> str:
    return json_format.MessageToJson(plan, preserving_proto_field_name=True, indent=None)


def plan_from_json(text: str) -> plan_pb2.SpawnPlan | None:
    if not text:
        return None
    return json_format.Parse(text, plan_pb2.SpawnPlan(), ignore_unknown_fields=True)


def log_entry(row: TaskLogRow) -> task_pb2.LogEntry:
    return task_pb2.LogEntry(timestamp=to_ts(row.timestamp), actor=row.actor, message=row.message)


def task(row: TaskRow, tags: Iterable[str], log: Sequence[TaskLogRow] = ()) -> task_pb2.Task:
    return task_pb2.Task(
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
        command_argv=list(row.command_argv or []),
        working_dir=row.working_dir,
        created_at=to_ts(row.created_at),
        started_at=to_ts(row.started_at),
        completed_at=to_ts(row.completed_at),
        updated_at=to_ts(row.updated_at),
        version=row.version,
        log=[log_entry(e) for e in log],
        request_id=row.request_id or "",
    )


def run(row: RunRow) -> runtime_pb2.Run:
    out = runtime_pb2.Run(
        number=row.number,
        pid=row.pid,
        process_start_ticks=row.process_start_ticks,
        monitor_pid=row.monitor_pid,
        monitor_start_ticks=row.monitor_start_ticks,
        argv=list(row.argv or []),
        stderr_path=row.stderr_path,
        started_at=to_ts(row.started_at),
        exited_at=to_ts(row.exited_at),
        signal_name=row.signal_name,
        stderr_tail=row.stderr_tail,
        error=row.error,
        hostname=row.hostname,
        supervisor_id=row.supervisor_id,
        trace_id=row.trace_id,
    )
    if row.exit_code is not None:
        out.exit_code = row.exit_code
    if row.signal is not None:
        out.signal = row.signal
    return out


def runtime(row: ChatRuntimeRow, runs: Sequence[RunRow]) -> runtime_pb2.ChatRuntime:
    """`runs` in any order; the newest becomes current_run, up to 4 others previous_runs."""
    ordered = sorted(runs, key=lambda r: r.number, reverse=True)
    out = runtime_pb2.ChatRuntime(
        state=row.state,  # type: ignore[arg-type]
        restart_count=row.restart_count,
        next_restart_at=to_ts(row.next_restart_at),
        last_error=row.last_error,
        plan=plan_from_json(row.plan_json),
        trace_id=row.trace_id,
        span_id=row.span_id,
        supervisor_id=row.supervisor_id,
        lease_expires_at=to_ts(row.lease_expires_at),
        state_changed_at=to_ts(row.state_changed_at),
        version=row.version,
    )
    if ordered:
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
    )
