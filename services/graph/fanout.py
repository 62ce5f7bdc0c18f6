"""In-process fan-out of chat message events to WatchMessages streams.

A stored message wakes the chat's watchers, which then read the new rows themselves (the database
is the truth; the wake-up carries nothing). Pieces of replies being generated (PublishPartialMessage)
are not stored: they are handed to the watchers that asked for them, and the text so far of each
reply in flight is kept so a watcher that joins mid-reply first gets everything said so far. The
piece map is bounded (MAX_INFLIGHT replies) and a reply's text is dropped once its final message is
stored or its run ended.

Other graph replicas' events arrive through `deliver_remote` (PostgreSQL LISTEN/NOTIFY, see
pgnotify.py); events of this process are passed to `broadcast` so the other replicas see them, and
`resync` wakes every watcher to re-read when some of those events may have been missed.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from wgs.v1 import task_pb2

MAX_INFLIGHT = 10_000  # replies whose text so far is kept for late watchers
MAX_QUEUED = 10_000  # pieces queued for one slow watcher before the oldest are dropped


@dataclass(eq=False)
class RecordWatcher:
    """A WatchChatRecords stream: the ids of chats whose runtime changed, coalesced."""

    chat_id: str  # "" for every chat
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    changed: dict[str, None] = field(default_factory=dict)  # ordered set
    # Changes may have been missed (another replica's events were lost): for a watcher of every
    # chat, the stream re-sends the record of each chat.
    resync: bool = False


@dataclass(eq=False)
class Watcher:
    chat_id: str
    include_partial: bool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # A message was stored since the watcher last read the database. A wake-up for reply pieces
    # alone leaves it unset: pieces are handed over without a query (one per piece and watcher
    # otherwise, which made the database the bottleneck of streaming).
    stored: bool = True
    partials: deque[task_pb2.PartialMessage] = field(default_factory=lambda: deque(maxlen=MAX_QUEUED))


Broadcast = Callable[[str, str, task_pb2.PartialMessage | None], None]


class Fanout:
    def __init__(self) -> None:
        self._watchers: dict[str, set[Watcher]] = defaultdict(set)
        self._record_watchers: dict[str, set[RecordWatcher]] = defaultdict(set)
        self._inflight: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.broadcast: Broadcast | None = None  # (kind, chat_id, piece) to other replicas

    def watch(self, chat_id: str, include_partial: bool) -> Watcher:
        w = Watcher(chat_id, include_partial)
        self._watchers[chat_id].add(w)
        if include_partial:
            for (chat, request_id), text in self._inflight.items():
                if chat == chat_id and text:
                    w.partials.append(task_pb2.PartialMessage(chat_id=chat, request_id=request_id, offset=0,
                                                              text=text))
        return w

    def unwatch(self, w: Watcher) -> None:
        watchers = self._watchers.get(w.chat_id)
        if watchers is not None:
            watchers.discard(w)
            if not watchers:
                del self._watchers[w.chat_id]

    def watching(self, chat_id: str) -> int:
        return len(self._watchers.get(chat_id, ()))

    # -- events of this process -------------------------------------------------------------

    def message_stored(self, chat_id: str) -> None:
        self._wake(chat_id)
        if self.broadcast is not None:
            self.broadcast("message", chat_id, None)

    def partial(self, piece: task_pb2.PartialMessage) -> int:
        delivered = self._partial(piece)
        if self.broadcast is not None:
            self.broadcast("partial", piece.chat_id, piece)
        return delivered

    def finish_partial(self, chat_id: str, request_id: str) -> None:
        self._inflight.pop((chat_id, request_id), None)
        if self.broadcast is not None:
            self.broadcast("finish", chat_id, task_pb2.PartialMessage(chat_id=chat_id, request_id=request_id))

    def forget_chat(self, chat_id: str) -> None:
        for key in [k for k in self._inflight if k[0] == chat_id]:
            del self._inflight[key]

    def watch_records(self, chat_id: str) -> RecordWatcher:
        w = RecordWatcher(chat_id)
        self._record_watchers[chat_id].add(w)
        return w

    def unwatch_records(self, w: RecordWatcher) -> None:
        watchers = self._record_watchers.get(w.chat_id)
        if watchers is not None:
            watchers.discard(w)
            if not watchers:
                del self._record_watchers[w.chat_id]

    def runtime_changed(self, chat_id: str) -> None:
        """A chat's runtime record changed: wake its record watchers (and those of every chat)."""
        self._runtime_changed(chat_id)
        if self.broadcast is not None:
            self.broadcast("runtime", chat_id, None)

    def _runtime_changed(self, chat_id: str) -> None:
        for key in (chat_id, ""):
            for w in self._record_watchers.get(key, ()):
                w.changed[chat_id] = None
                w.wake.set()

    def resync(self) -> None:
        """Events of other replicas may have been missed: every watcher re-reads the database."""
        for watchers in self._watchers.values():
            for w in watchers:
                w.stored = True
                w.wake.set()
        for record_watchers in self._record_watchers.values():
            for rw in record_watchers:
                if rw.chat_id:
                    rw.changed[rw.chat_id] = None
                else:
                    rw.resync = True
                rw.wake.set()

    def wake_all(self) -> None:
        for watchers in self._watchers.values():
            for w in watchers:
                w.wake.set()
        for record_watchers in self._record_watchers.values():
            for rw in record_watchers:
                rw.wake.set()

    # -- events of other replicas -----------------------------------------------------------

    def deliver_remote(self, kind: str, chat_id: str, piece: task_pb2.PartialMessage | None) -> None:
        if kind == "message":
            self._wake(chat_id)
        elif kind == "partial" and piece is not None:
            self._partial(piece)
        elif kind == "finish" and piece is not None:
            self._inflight.pop((chat_id, piece.request_id), None)
        elif kind == "runtime":
            self._runtime_changed(chat_id)

    # -- internals --------------------------------------------------------------------------

    def _wake(self, chat_id: str) -> None:
        for w in self._watchers.get(chat_id, ()):
            w.stored = True
            w.wake.set()

    def _partial(self, piece: task_pb2.PartialMessage) -> int:
        key = (piece.chat_id, piece.request_id)
        so_far = self._inflight.pop(key, "")
        # A piece at an earlier offset restarts the reply from there (the agent retried).
        self._inflight[key] = so_far[: piece.offset] + piece.text if piece.offset <= len(so_far) else so_far
        while len(self._inflight) > MAX_INFLIGHT:
            self._inflight.popitem(last=False)
        delivered = 0
        for w in self._watchers.get(piece.chat_id, ()):
            if w.include_partial:
                w.partials.append(piece)
                w.wake.set()
                delivered += 1
        return delivered
