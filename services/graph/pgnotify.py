"""Wake-ups across graph replicas on PostgreSQL: LISTEN/NOTIFY.

Each graph process keeps its watchers in memory (Fanout). With several graph replicas on one
PostgreSQL database, a message stored through replica B must wake the WatchMessages stream an agent
holds on replica A, and a runtime change recorded through B the WatchChatRecords streams on A.
This module carries those events between the replicas:

- **Out.** Every event of this process (`Fanout.broadcast`: a stored message, a runtime change, a
  reply piece, a finished reply) is queued and sent, in order, on one dedicated connection as
  `pg_notify(CHANNEL, payload)`. Events queued together go out in one statement.
- **In.** A second connection LISTENs on CHANNEL and hands every event of another replica to
  `Fanout.deliver_remote`. The wake-up carries no data a watcher trusts: watchers re-read the
  database; only reply pieces (never stored) travel in the payload.
- **Nothing lost silently.** While either connection is down, events may be missed. So once the
  listener is (re)connected, every watcher of this process is woken to re-read ("resync"), and once
  the sender is reconnected after a failure it sends a resync to the other replicas. Either
  connection is retried with capped backoff, and each loss and recovery is logged once.

PostgreSQL caps a payload at 8,000 bytes: a reply piece larger than that is sent as several pieces
with consecutive offsets. SQLite has no replicas: `start_for` returns None there and the fan-out
stays in-process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from services.graph.fanout import Fanout
from wgs.v1 import task_pb2

log = logging.getLogger("wgs.graph.pgnotify")

CHANNEL = "wgs_graph_events"
MAX_PAYLOAD = 7_900  # bytes; PostgreSQL refuses payloads of 8,000 bytes or more
MAX_BATCH = 200  # events per pg_notify statement
MAX_QUEUED = 20_000  # events waiting for the sender; beyond it they are dropped and the replicas resync
RETRY_INITIAL = 0.2
RETRY_MAX = 5.0

Connect = Callable[[], Awaitable[Any]]  # returns an autocommit psycopg.AsyncConnection


def conninfo(url: sa.engine.URL) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def encode(origin: str, kind: str, chat_id: str, piece: task_pb2.PartialMessage | None) -> list[str]:
    """The payloads of one event (several for a reply piece too large for one)."""
    base: dict[str, Any] = {"o": origin, "k": kind, "c": chat_id}
    if piece is None:
        return [json.dumps(base, separators=(",", ":"))]
    base["r"] = piece.request_id
    if kind != "partial":
        return [json.dumps(base, separators=(",", ":"))]
    out: list[str] = []
    text, offset = piece.text, piece.offset
    while True:
        # Grow the chunk while it fits (JSON escaping can make a character cost up to 12 bytes).
        size = len(text)
        while True:
            payload = json.dumps({**base, "n": offset, "t": text[:size]}, separators=(",", ":"))
            if len(payload.encode()) <= MAX_PAYLOAD or size <= 1:
                break
            size = max(1, size * MAX_PAYLOAD // len(payload.encode()) - 1)
        out.append(payload)
        text, offset = text[size:], offset + size
        if not text:
            return out


def decode(payload: str) -> tuple[str, str, str, task_pb2.PartialMessage | None] | None:
    """(origin, kind, chat_id, piece) of a payload, or None if it is not one of ours."""
    try:
        data = json.loads(payload)
        origin, kind, chat_id = str(data["o"]), str(data["k"]), str(data["c"])
        piece = None
        if "r" in data:
            piece = task_pb2.PartialMessage(chat_id=chat_id, request_id=str(data["r"]),
                                            offset=int(data.get("n", 0)), text=str(data.get("t", "")))
    except (ValueError, KeyError, TypeError):
        return None
    return origin, kind, chat_id, piece


class PgNotifier:
    """Bridges one process's Fanout to the other replicas'. Start with `start()`, end with `close()`."""

    def __init__(self, fanout: Fanout, connect: Connect, *, origin: str | None = None) -> None:
        self.fanout = fanout
        self._connect = connect
        self.origin = origin or uuid.uuid4().hex
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self._closed = False
        self._overflowed = False
        self.received = 0  # events of other replicas delivered here
        self.sent = 0

    # -- the Fanout side ------------------------------------------------------------------------

    def broadcast(self, kind: str, chat_id: str, piece: task_pb2.PartialMessage | None) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= MAX_QUEUED:
            self._overflowed = True  # the sender is stuck: the others resync once it is not
            return
        for payload in encode(self.origin, kind, chat_id, piece):
            self._queue.put_nowait(payload)

    def deliver(self, payload: str) -> None:
        decoded = decode(payload)
        if decoded is None:
            log.warning("ignored a notification on %s that is not a graph event", CHANNEL)
            return
        origin, kind, chat_id, piece = decoded
        if origin == self.origin:
            return  # this process's own event: already delivered locally
        self.received += 1
        if kind == "resync":
            self.fanout.resync()
        else:
            self.fanout.deliver_remote(kind, chat_id, piece)

    # -- life -----------------------------------------------------------------------------------

    async def start(self, wait: float = 10.0) -> None:
        """Start both loops; returns once listening (or after `wait` seconds, still retrying)."""
        self.fanout.broadcast = self.broadcast
        self._tasks = [asyncio.create_task(self._listen(), name="pgnotify-listen"),
                       asyncio.create_task(self._send(), name="pgnotify-send")]
        try:
            await asyncio.wait_for(self._listening.wait(), wait)
        except TimeoutError:
            log.warning("not yet listening for other graph replicas' events on %s; still trying", CHANNEL)

    async def close(self) -> None:
        self._closed = True
        self.fanout.broadcast = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def _resync_payload(self) -> str:
        return json.dumps({"o": self.origin, "k": "resync", "c": ""}, separators=(",", ":"))

    # -- loops ----------------------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = RETRY_INITIAL
        failed = False
        while True:
            conn = None
            try:
                conn = await self._connect()
                await conn.execute(f"LISTEN {CHANNEL}")
                self._listening.set()
                if failed:
                    log.warning("listening for other graph replicas' events again")
                    failed = False
                delay = RETRY_INITIAL
                # Events may have been missed before LISTEN took effect: every watcher re-reads.
                self.fanout.resync()
                async for notify in conn.notifies():
                    self.deliver(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._listening.clear()
                if not failed:
                    log.error("lost the listen connection for other graph replicas' events (%s: %s); watchers "
                              "here miss their writes until it is back — reconnecting", type(exc).__name__, exc)
                    failed = True
            finally:
                if conn is not None:
                    await _close_quietly(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _send(self) -> None:
        delay = RETRY_INITIAL
        failed = False
        pending: list[str] = []
        while True:
            conn = None
            try:
                conn = await self._connect()
                if failed:
                    # Events of this process were dropped while the connection was down.
                    pending = [self._resync_payload()]
                    log.warning("sending events to other graph replicas again (they resync)")
                    failed = False
                delay = RETRY_INITIAL
                while True:
                    if not pending:
                        pending.append(await self._queue.get())
                    if self._overflowed:
                        self._overflowed = False
                        pending.append(self._resync_payload())
                    while len(pending) < MAX_BATCH and not self._queue.empty():
                        pending.append(self._queue.get_nowait())
                    calls = ", ".join(f"pg_notify(%(ch)s, %(p{i})s)" for i in range(len(pending)))
                    params: dict[str, str] = {"ch": CHANNEL, **{f"p{i}": p for i, p in enumerate(pending)}}
                    await conn.execute(f"SELECT {calls}", params)
                    self.sent += len(pending)
                    pending = []
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                dropped = len(pending) + self._queue.qsize()
                pending = []
                while not self._queue.empty():
                    self._queue.get_nowait()
                if not failed:
                    log.error("cannot send events to other graph replicas (%s: %s); %d dropped, they resync when "
                              "the connection is back", type(exc).__name__, exc, dropped)
                    failed = True
            finally:
                if conn is not None:
                    await _close_quietly(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # closing a broken connection: nothing to do
        pass


def psycopg_connect(url: sa.engine.URL) -> Connect:
    async def connect() -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True,
                                                     application_name="wgs-graph-events", connect_timeout=5)

    return connect


async def start_for(url: sa.engine.URL, fanout: Fanout) -> PgNotifier | None:
    """A running notifier for a PostgreSQL database; None for SQLite (one process, no replicas)."""
    if url.get_backend_name() != "postgresql":
        return None
    notifier = PgNotifier(fanout, psycopg_connect(url))
    await notifier.start()
    return notifier
