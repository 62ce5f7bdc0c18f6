"""What clients see of a chat: the Chat message built from the graph record (`to_chat`, pure), and
the read paths of ChatService (`ChatViews`: GetChat, ListChats, WatchChat, the chat's messages and
its run log), which change nothing.

Truthful now vs history: `Chat.pid` is set only while a run of the chat lives (the runs keep their
pids as history) — not once its supervisor's lease lapsed, as the run fenced itself by then
(`owner_notice` says so); the runtime's last_error is the graph's, which is cleared when a run starts (the
failure stays on the run in previous_runs). The stderr tail of a list comes from the records only
(kept when a run ends): no file is read per chat. Only GetChat reads the live run's file, off the
event loop. WatchChat streams the graph's record of each change (RuntimeService.WatchChatRecords),
so what it shows is what is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from services.supervisor import agentenv
from services.supervisor.backend import RunBackend
from services.supervisor.clients import GraphClient
from services.supervisor.clock import Clock
from services.supervisor.live import ChatLive
from services.supervisor.redact import Redactor
from wgs.common import chat_states, errors, paths, validation
from wgs.common.timeutil import from_ts
from wgs.v1 import chat_pb2, runtime_pb2, runtime_service_pb2, task_pb2

LOG_CHUNK = 64 * 1024


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


class ChatViews:
    """The read paths of ChatService. `held(chat_id)`: what this supervisor holds of the chat (its
    live run, for the live tail and to follow its log; its redactor, which knows the run's own
    credentials), None for a chat it does not own."""

    def __init__(self, graph: GraphClient, backend: RunBackend, clock: Clock,
                 held: Callable[[str], ChatLive | None]) -> None:
        self.graph = graph
        self.backend = backend
        self.clock = clock
        self._held = held

    def redactor(self, chat_id: str, runtime: runtime_pb2.ChatRuntime) -> Redactor:
        live = self._held(chat_id)
        if live is not None and live.redactor:
            return live.redactor
        return agentenv.redactor_for(runtime.plan)

    def view(self, task: task_pb2.Task, runtime: runtime_pb2.ChatRuntime, live_tail: str | None = None,
             out: chat_pb2.Chat | None = None) -> chat_pb2.Chat:
        return to_chat(task, runtime, redactor=self.redactor(task.id, runtime), live_tail=live_tail,
                       now=self.clock.now(), out=out)

    async def get_chat(self, chat_id: str) -> chat_pb2.Chat:
        validation.chat_id(chat_id)
        live = self._held(chat_id)
        handle = live.run if live is not None else None
        # The live run's tail is read (off the event loop) while the graph is asked, not after it.
        reading = asyncio.ensure_future(asyncio.to_thread(self.backend.tail, handle)) if handle is not None else None
        try:
            rec = await self.graph.record(chat_id)
        finally:
            tail = await reading if reading is not None else None
        if handle is None or live is None or live.run is not handle or not run_is_live(rec.runtime) \
                or rec.runtime.current_run.number != handle.number:
            tail = None  # the record's run is not the one read (it ended, or another started meanwhile)
        return self.view(rec.task, rec.runtime, live_tail=tail)

    async def list_chats(self, req: chat_pb2.ListChatsRequest) -> chat_pb2.ListChatsResponse:
        size = validation.page_size(req.page_size)
        resp = await self.graph.list_records(include_ended=req.include_ended, page_size=size,
                                             page_token=req.page_token)
        out = chat_pb2.ListChatsResponse(next_page_token=resp.next_page_token)
        for c in resp.chats:
            self.view(c.task, c.runtime, out=out.chats.add())  # filled in place, not built and copied
        return out

    async def watch_chat(self, chat_id: str) -> AsyncIterator[chat_pb2.Chat]:
        """The chat now, then each change of it as the graph records it (whoever made it: this
        supervisor, the agent's own reports, a Reconcile, another replica). "" watches every chat.

        The snapshot is the graph's first answer on the watch itself (include_current): read after
        the watch is registered there, so a change made between the two is never missed."""
        if chat_id:
            validation.chat_id(chat_id)
        changes = self.graph.watch_records(chat_id, include_current=True)
        try:
            if chat_id:
                rec = await anext(changes)
                yield await self._with_live_tail(rec)
            async for rec in changes:
                yield self.view(rec.task, rec.runtime)
        finally:
            await changes.aclose()

    async def _with_live_tail(self, rec: runtime_service_pb2.ChatRecord) -> chat_pb2.Chat:
        """The chat of a record, with the live run's stderr tail if this supervisor holds that run."""
        live = self._held(rec.task.id)
        handle = live.run if live is not None else None
        tail = None
        if handle is not None and run_is_live(rec.runtime) and rec.runtime.current_run.number == handle.number:
            tail = await asyncio.to_thread(self.backend.tail, handle)
        return self.view(rec.task, rec.runtime, live_tail=tail)

    async def list_messages(self, req: chat_pb2.ListChatMessagesRequest) -> chat_pb2.ListChatMessagesResponse:
        validation.chat_id(req.chat_id)
        if req.after_seq < 0:
            raise errors.InvalidArgument(f"after_seq must not be negative, got {req.after_seq}", "after_seq")
        size = validation.page_size(req.page_size)
        resp = await self.graph.list_messages(req.chat_id, req.after_seq, size, req.page_token)
        return chat_pb2.ListChatMessagesResponse(messages=list(resp.messages), next_page_token=resp.next_page_token)

    async def watch_messages(self, req: chat_pb2.WatchChatMessagesRequest
                             ) -> AsyncIterator[chat_pb2.WatchChatMessagesResponse]:
        validation.chat_id(req.chat_id)
        if req.after_seq < 0:
            raise errors.InvalidArgument(f"after_seq must not be negative, got {req.after_seq}", "after_seq")
        async for item in self.graph.watch_messages(req.chat_id, req.after_seq, req.include_partial):
            if item.HasField("partial"):
                yield chat_pb2.WatchChatMessagesResponse(partial=item.partial)
            else:
                yield chat_pb2.WatchChatMessagesResponse(message=item.message)

    async def stream_log(self, req: chat_pb2.StreamChatLogRequest) -> AsyncIterator[chat_pb2.StreamChatLogResponse]:
        """The run file of a chat, redacted; with follow, until the run ends."""
        validation.chat_id(req.chat_id)
        rec = await self.graph.record(req.chat_id)
        rt = rec.runtime
        runs = [r for r in (rt.current_run, *rt.previous_runs) if r.number]
        if req.run == 0:
            run = runs[0] if runs else None
        elif req.run == -1:
            run = runs[1] if len(runs) > 1 else None
        else:
            run = next((r for r in runs if r.number == req.run), None)
        if run is None:
            what = {0: "no run yet", -1: "no previous run"}.get(req.run, f"no run {req.run} (kept: "
                                                                          f"{', '.join(str(r.number) for r in runs)})")
            raise errors.NotFound(f"chat {req.chat_id} has {what}")
        redactor = self.redactor(req.chat_id, rt)
        path = self.backend.log_path(req.chat_id, run.number)
        live = self._held(req.chat_id)
        handle = live.run if live is not None and live.run is not None and live.run.number == run.number else None
        try:
            fh = await asyncio.to_thread(paths.open_regular, path)
        except OSError:
            yield chat_pb2.StreamChatLogResponse(data=redactor.text(run.stderr_tail).encode(), run_number=run.number,
                                                 ended=True, from_record=True)
            return
        try:
            pending = b""
            while True:
                data = await asyncio.to_thread(fh.read, LOG_CHUNK)
                if data:
                    pending += data
                    cut = pending.rfind(b"\n") + 1  # redact whole lines only (a secret never spans a cut)
                    if cut:
                        text = redactor.text(pending[:cut].decode("utf-8", "replace"))
                        pending = pending[cut:]
                        yield chat_pb2.StreamChatLogResponse(data=text.encode(), run_number=run.number)
                    continue
                if not req.follow or handle is None or handle.ended.is_set():
                    if pending:
                        yield chat_pb2.StreamChatLogResponse(
                            data=redactor.text(pending.decode("utf-8", "replace")).encode(), run_number=run.number)
                    if handle is not None and req.follow:
                        # The follower asks how it ended next: answer once the end is recorded.
                        try:
                            await asyncio.wait_for(handle.recorded_event.wait(), 10.0)
                        except TimeoutError:
                            pass
                    yield chat_pb2.StreamChatLogResponse(run_number=run.number, ended=bool(req.follow))
                    return
                try:
                    await asyncio.wait_for(handle.ended.wait(), 0.25)
                except TimeoutError:
                    pass
        finally:
            fh.close()
