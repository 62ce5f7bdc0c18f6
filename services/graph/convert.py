"""Conversions from database rows to wgs.v1 messages (one place for each mapping)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from services.graph.db import ChatRuntimeRow, MessageRow, RunRow, SupervisorRow, TaskLogRow, TaskRow
from wgs.common.timeutil import to_ts
from wgs.v1 import plan_pb2, runtime_pb2, runtime_service_pb2, task_pb2

M = TypeVar("M", bound=Message)


def message_to_json(msg: Message) -> str:
    """A message as stored in a JSON column (proto field names, compact)."""
    return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=None)


def message_from_json(text: str, empty: M) -> M | None:
    if not text:
        return None
    return json_format.Parse(text, empty, ignore_unknown_fields=True)


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
        generation=message_from_json(row.generation_json, plan_pb2.GenerationOverrides()),
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
        end=row.end,  # type: ignore[arg-type]
        end_detail=row.end_detail,
        leftovers_ended=row.leftovers_ended,
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
        resume_on_start=row.resume_on_start,
    )
    if row.agent_status_json:
        out.agent.CopyFrom(agent_status(row))
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
        trace_parent=row.trace_parent,
    )


def supervisor(row: SupervisorRow, owned_chats: int) -> runtime_service_pb2.SupervisorInfo:
    return runtime_service_pb2.SupervisorInfo(
        supervisor_id=row.id, advertise_address=row.advertise_address, heartbeat_at=to_ts(row.heartbeat_at),
        lease_expires_at=to_ts(row.lease_expires_at), free_capacity=row.free_capacity, live_chats=row.live_chats,
        max_live_chats=row.max_live_chats, memory_used_bytes=row.memory_used_bytes,
        memory_limit_bytes=row.memory_limit_bytes, owned_chats=owned_chats,
    )
