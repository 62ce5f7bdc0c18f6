"""Two graph replicas on one PostgreSQL database wake each other's watchers (LISTEN/NOTIFY).

An agent holds WatchMessages on one graph pod while the user's message is stored through another;
a supervisor watches chat records on one pod while another records the run's exit. Real processes,
real PostgreSQL; the payload codec is tested without a database.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from services.graph import pgnotify
from services.graph.fanout import Fanout
from tests import harness
from tests.harness import authed_channel, start_service
from wgs.common.auth import SUPERVISOR
from wgs.v1 import graph_pb2 as g
from wgs.v1 import graph_pb2_grpc, runtime_pb2, runtime_service_pb2_grpc, task_pb2
from wgs.v1 import runtime_service_pb2 as rs

T = 10  # deadline of every unary call, seconds
WAIT = 20  # how long a watcher may take to see another replica's write before the test fails


# -- the payload codec, without a database ---------------------------------------------------------


def test_a_large_reply_piece_is_split_into_payloads_postgresql_accepts_and_joins_back() -> None:
    text = "é€🙂\"\\\n" * 3000 + "end"  # multi-byte and escaped characters: JSON grows them
    piece = task_pb2.PartialMessage(chat_id=".chat-7", request_id="r1", offset=5, text=text)
    payloads = pgnotify.encode("me", "partial", ".chat-7", piece)
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    joined, offset = "", 5
    for p in payloads:
        decoded = pgnotify.decode(p)
        assert decoded is not None
        origin, kind, chat, part = decoded
        assert (origin, kind, chat) == ("me", "partial", ".chat-7") and part is not None
        assert part.offset == offset and part.request_id == "r1"
        joined += part.text
        offset += len(part.text)
    assert joined == text


def test_own_events_are_skipped_foreign_ones_delivered_and_garbage_ignored() -> None:
    fanout = Fanout()
    notifier = pgnotify.PgNotifier(fanout, connect=None, origin="me")  # type: ignore[arg-type]
    watcher = fanout.watch(".chat-1", include_partial=True)
    watcher.stored = False
    watcher.wake.clear()
    notifier.deliver(pgnotify.encode("me", "message", ".chat-1", None)[0])
    assert not watcher.wake.is_set()
    notifier.deliver("not json")
    notifier.deliver(json.dumps({"unexpected": 1}))
    assert not watcher.wake.is_set() and notifier.received == 0
    notifier.deliver(pgnotify.encode("other", "message", ".chat-1", None)[0])
    assert watcher.wake.is_set() and watcher.stored and notifier.received == 1
    piece = task_pb2.PartialMessage(chat_id=".chat-1", request_id="r", offset=0, text="hel")
    notifier.deliver(pgnotify.encode("other", "partial", ".chat-1", piece)[0])
    assert list(watcher.partials) == [piece]


def test_a_resync_wakes_every_watcher_to_read_again() -> None:
    fanout = Fanout()
    msgs = fanout.watch(".chat-1", include_partial=False)
    msgs.stored = False
    one = fanout.watch_records(".chat-2")
    every = fanout.watch_records("")
    fanout.resync()
    assert msgs.stored and msgs.wake.is_set()
    assert list(one.changed) == [".chat-2"] and one.wake.is_set()
    assert every.resync and every.wake.is_set()


# -- two graph processes on one PostgreSQL database -------------------------------------------------

needs_postgresql = pytest.mark.skipif(not os.environ.get("WGS_TEST_DATABASE_URL"),
                                      reason="several graph replicas need a shared PostgreSQL server")


class Replica:
    def __init__(self, proc: harness.ServiceProcess) -> None:
        self.proc = proc
        self.channel = authed_channel(proc.address, SUPERVISOR)
        self.stub = graph_pb2_grpc.GraphServiceStub(self.channel)
        self.rt = runtime_service_pb2_grpc.RuntimeServiceStub(self.channel)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Replica, Replica, str]]:
    with harness.fresh_database("postgresql", tmp_path) as url:
        procs = [start_service("graph", tmp_path / f"graph-{i}", env={"WGS_DATABASE_URL": url}) for i in range(2)]
        reps = [Replica(p) for p in procs]
        try:
            yield reps[0], reps[1], url
        finally:
            for r in reps:
                r.channel.close()
            for p in procs:
                assert p.terminate() == 0, p.stderr()


def _drain(stream: Any, into: queue.Queue[Any]) -> threading.Thread:
    def run() -> None:
        try:
            for item in stream:
                into.put(item)
        except grpc.RpcError as exc:
            into.put(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _next(q: queue.Queue[Any], what: str) -> Any:
    try:
        item = q.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError(f"{what}: not seen within {WAIT}s") from None
    if isinstance(item, grpc.RpcError):
        raise AssertionError(f"{what}: the stream ended: {item.code()} {item.details()}")
    return item


def _chat(rep: Replica) -> str:
    return str(rep.rt.CreateChatTask(rs.CreateChatTaskRequest(supervisor_id="sup-a", lease_seconds=30),
                                     timeout=T).task.id)


def _user(rep: Replica, chat: str, text: str) -> None:
    rep.stub.AppendMessage(g.AppendMessageRequest(chat_id=chat, role=task_pb2.MESSAGE_ROLE_USER, content=text),
                           timeout=T)


@needs_postgresql
def test_a_message_stored_through_one_replica_reaches_a_watcher_on_the_other(
        replicas: tuple[Replica, Replica, str]) -> None:
    a, b, _ = replicas
    chat = _chat(a)
    got: queue.Queue[Any] = queue.Queue()
    stream = a.stub.WatchMessages(g.WatchMessagesRequest(chat_id=chat), timeout=120)
    _drain(stream, got)
    _user(a, chat, "through a")  # the stream is open once it delivers what a stored itself
    assert _next(got, "a's own message").message.content == "through a"
    for i in range(3):
        _user(b, chat, f"through b {i}")
        assert _next(got, f"b's message {i}").message.content == f"through b {i}"
    stream.cancel()


@needs_postgresql
def test_runtime_changes_recorded_through_one_replica_reach_record_watchers_on_the_other(
        replicas: tuple[Replica, Replica, str]) -> None:
    a, b, _ = replicas
    chat = _chat(a)
    got: queue.Queue[Any] = queue.Queue()
    stream = a.rt.WatchChatRecords(rs.WatchChatRecordsRequest(chat_id=""), timeout=120)
    _drain(stream, got)
    other = _chat(a)  # a's own change: the watch is live
    assert _next(got, "a's own change").chat.task.id == other
    b.rt.TransitionChat(rs.TransitionChatRequest(
        chat_id=chat, supervisor_id="sup-a", from_state=runtime_pb2.RUNTIME_STATE_STARTING,
        to_state=runtime_pb2.RUNTIME_STATE_STOPPED), timeout=T)
    seen = _next(got, "the change recorded through b").chat
    assert seen.task.id == chat and seen.runtime.state == runtime_pb2.RUNTIME_STATE_STOPPED
    stream.cancel()


@needs_postgresql
def test_a_watcher_sees_writes_made_while_its_replica_could_not_listen(
        replicas: tuple[Replica, Replica, str]) -> None:
    """The listen connection dies (a PostgreSQL restart, a failover, an idle-connection killer): the
    replica reconnects, and its watchers re-read — nothing written meanwhile is missed."""
    a, b, url = replicas
    chat = _chat(a)
    got: queue.Queue[Any] = queue.Queue()
    stream = a.stub.WatchMessages(g.WatchMessagesRequest(chat_id=chat), timeout=120)
    _drain(stream, got)
    _user(a, chat, "first")
    assert _next(got, "first").message.content == "first"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'wgs-graph-events' AND datname = current_database()")).scalar()
        assert killed == 4  # each replica's listen and send connections
    finally:
        engine.dispose()
    _user(b, chat, "while a was not listening")
    assert _next(got, "the message written during the outage").message.content == "while a was not listening"
    _user(b, chat, "after")
    assert _next(got, "after the reconnection").message.content == "after"
    stream.cancel()
    assert "lost the listen connection" in a.proc.stderr()
