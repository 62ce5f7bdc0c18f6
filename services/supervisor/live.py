"""What this supervisor holds of each chat it owns (`ChatLive`), and the changes the lifecycle
writes to the graph (`Transition`, `RunStarted`, `RunEnded`).

Shared by the modules that act on chats — lifecycle (commands, restarts), ownership (adoption,
takeover, lost chats) and views (the live run's tail) — so none of them imports another.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from services.supervisor import policy
from services.supervisor.backend import RunHandle
from services.supervisor.clock import Timer
from services.supervisor.redact import Redactor
from wgs.common import chat_states
from wgs.v1 import plan_pb2, runtime_pb2, runtime_service_pb2, task_pb2

LIVE_TASK = task_pb2.TASK_STATUS_IN_PROGRESS


@dataclass(frozen=True)
class Transition:
    """A state change without a run event (spawn starting, stop without a run, restart, FAILED)."""

    restart_count: int | None = None
    next_restart_at: datetime | None = None
    last_error: str | None = None
    plan: plan_pb2.SpawnPlan | None = None
    resume_on_start: bool | None = None
    task_status: int | None = None
    add_tags: tuple[str, ...] = ()
    log_message: str = ""


@dataclass(frozen=True)
class RunStarted:
    handle: RunHandle
    plan: plan_pb2.SpawnPlan | None


@dataclass(frozen=True)
class RunEnded:
    item: runtime_service_pb2.RunExit


Change = Transition | RunStarted | RunEnded


@dataclass(eq=False)
class ChatLive:
    """What this supervisor holds of one chat it owns."""

    chat_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: int = chat_states.UNSPECIFIED  # the runtime state as last written or read
    run: RunHandle | None = None
    history: policy.History = field(default_factory=policy.History)
    timer: Timer | None = None
    redactor: Redactor = field(default_factory=Redactor)
    create_span: SpanContext | None = None  # the creating call, for links from later spans
    lost: bool = False  # taken over by another supervisor: never act on it again
    # Runs ended because recording their start failed (no answer: the graph restarting, a deadline):
    # the graph may have written one all the same, even after the caller gave up, and then shows it
    # RUNNING until its end is recorded. Cleared once a start is recorded.
    unconfirmed: list[RunHandle] = field(default_factory=list)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def creating_span(runtime: runtime_pb2.ChatRuntime) -> SpanContext | None:
    """The creating call's span, rebuilt from the ids stored with the runtime (survives restarts)."""
    try:
        trace_id, span_id = int(runtime.trace_id, 16), int(runtime.span_id, 16)
    except ValueError:
        return None
    ctx = SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return ctx if ctx.is_valid else None
