"""What clients see of a chat: the Chat message built from the graph record, and the event bus
that streams changes to WatchChat.

Truthful now vs history: `Chat.pid` is set only while a run of the chat lives (the runs keep their
pids as history) — not once its supervisor's lease lapsed, as the run fenced itself by then
(`owner_notice` says so); the runtime's last_error is the graph's, which is cleared when a run starts (the
failure stays on the run in previous_runs). The stderr tail of a list comes from the records only
(kept when a run ends): no file is read per chat. Only GetChat reads the live run's file, off the
event loop. WatchChat streams the graph's record of each change (RuntimeService.WatchChatRecords),
so what it shows is what is recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.supervisor.redact import Redactor
from wgs.common import chat_states, validation
from wgs.common.timeutil import from_ts
from wgs.v1 import chat_pb2, runtime_pb2, task_pb2


def chat_name(task: task_pb2.Task) -> str:
    return task.title.removeprefix("Chat: ") if task.title.startswith("Chat: ") else ""


def is_deleted(task: task_pb2.Task) -> bool:
    return task.status == task_pb2.TASK_STATUS_ABANDONED


def is_archived(task: task_pb2.Task) -> bool:
    return validation.ARCHIVED_TAG in task.tags


def run_is_live(runtime: runtime_pb2.ChatRuntime) -> bool:
    """Whether the record says the current run lives (started, not exited, state RUNNING)."""
    run = runtime.current_run
    return (runtime.HasField("current_run") and run.pid > 0 and not run.HasField("exited_at")
            and runtime.state == chat_states.RUNNING)


def owner_notice(runtime: runtime_pb2.ChatRuntime, now: datetime) -> str:
    """What to say when the chat's supervisor let its lease lapse while the chat was live."""
    if runtime.state not in (chat_states.STARTING, chat_states.RUNNING, chat_states.BACKOFF):
        return ""
    lease = runtime.lease_expires_at
    if lease.seconds > now.timestamp() or not runtime.supervisor_id:  # valid: no datetime built (lists ask 1,000 times)
        return ""
    expired = from_ts(lease)
    if expired is None or expired > now:
        return ""
    return (f"supervisor {runtime.supervisor_id!r} has not renewed its lease since it lapsed at "
            f"{expired.isoformat(timespec='seconds')} (lost, frozen or cut off); its agent ended itself before then, "
            "and another replica takes the chat over")


def to_chat(task: task_pb2.Task, runtime: runtime_pb2.ChatRuntime, *, redactor: Redactor,
            live_tail: str | None = None, now: datetime | None = None,
            out: chat_pb2.Chat | None = None) -> chat_pb2.Chat:
    """The Chat of a graph record. `live_tail`: the live run's output tail (GetChat only). `out`: an
    empty Chat to fill (e.g. an element of a list response) instead of a new one to be copied."""
    chat = chat_pb2.Chat() if out is None else out
    chat.id = task.id
    chat.name = chat_name(task)
    chat.title = task.title
    chat.status = task.status
    chat.tags.extend(task.tags)
    chat.model = task.model
    chat.executor = task.executor
    chat.endpoint = task.endpoint
    chat.command.extend(task.command_argv)
    chat.runtime.CopyFrom(runtime)
    chat.trace_id = runtime.trace_id
    if task.HasField("created_at"):
        chat.created_at.CopyFrom(task.created_at)
    if task.HasField("generation"):
        chat.generation.CopyFrom(task.generation)
    chat.owner_notice = owner_notice(runtime, now or datetime.now(UTC))
    if run_is_live(runtime) and not chat.owner_notice:
        chat.pid = runtime.current_run.pid
    tail = live_tail if live_tail else runtime.current_run.stderr_tail
    if tail:
        chat.stderr_tail = redactor.text(tail)
    return chat
