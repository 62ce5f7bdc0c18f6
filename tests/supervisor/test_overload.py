"""Overload is shed, never leaked (real graph, dispatch and supervisor processes).

- A create whose caller gives up (deadline, cancel) either completes and is recorded, or leaves no
  process: afterwards every agent process of the state dir is the live run of a recorded chat.
- While such an abandoned create runs on, it keeps its admission slot: with one slot, the next create
  is refused at once with RESOURCE_EXHAUSTED and a google.rpc.RetryInfo, never admitted beside it.
- Deletes are not shed: a chat can be deleted while creates are being refused.

To hold a create inside the supervisor deterministically, the test holds the graph database's write
lock from outside (SQLite `BEGIN IMMEDIATE`; PostgreSQL `LOCK TABLE tasks IN EXCLUSIVE MODE`): reads
go on (placement, lists), the create's first write waits until the lock is let go.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.harness import fresh_database, test_database_urls
from tests.supervisor.conftest import Stack, _stack
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2

R = runtime_pb2
SLEEPER = ["/bin/sleep", "600"]


@pytest.fixture(params=test_database_urls())
def one_slot(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A stack whose supervisor spawns one chat at a time and lets a create wait 0.3 s at most."""
    with fresh_database(request.param, tmp_path) as db_url:
        yield from _stack(tmp_path, db_url, {"WGS_MAX_CONCURRENT_CREATES": "1", "WGS_CREATE_QUEUE_SECONDS": "0.3"})


@contextmanager
def graph_writes_held(db_url: str) -> Iterator[None]:
    """Hold the graph database's write lock (reads go on) until the block ends."""
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE tasks IN EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


def agents_of(state: Path) -> dict[int, str]:
    """Live agent processes started for this state dir: pid -> the chat id in their environment."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] in "ZX":
            continue
        values = dict(e.split(b"=", 1) for e in env if b"=" in e)
        chat_id = values.get(b"WGS_CHAT_ID")
        if chat_id and values.get(b"WGS_STATE_DIR") == str(state).encode():
            found[int(entry)] = chat_id.decode()
    return found


def all_chats(stub: chat_pb2_grpc.ChatServiceStub) -> list[chat_pb2.Chat]:
    out: list[chat_pb2.Chat] = []
    token = ""
    while True:
        resp = stub.ListChats(chat_pb2.ListChatsRequest(include_ended=True, page_size=500, page_token=token),
                              timeout=30)
        out.extend(resp.chats)
        token = resp.next_page_token
        if not token:
            return out


def wait_all(stub: chat_pb2_grpc.ChatServiceStub, pred: Callable[[dict[str, chat_pb2.Chat]], bool],
             timeout: float = 30.0) -> dict[str, chat_pb2.Chat]:
    """Follow WatchChat of every chat (snapshot, then changes) until pred holds for the chats seen."""
    chats: dict[str, chat_pb2.Chat] = {}
    try:
        for resp in stub.WatchChat(chat_pb2.WatchChatRequest(), timeout=timeout):
            chats[resp.chat.id] = resp.chat
            if pred(chats):
                return chats
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    states = {c: R.RuntimeState.Name(x.runtime.state) for c, x in chats.items()}
    raise AssertionError(f"condition not reached within {timeout}s; chats seen: {states}")


def retry_delay(exc: grpc.RpcError) -> float | None:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToMilliseconds() / 1000
    return None


def assert_every_agent_is_a_recorded_live_run(stub: chat_pb2_grpc.ChatServiceStub, state: Path) -> None:
    """Every agent process of the state dir is the current run of a RUNNING chat, and vice versa.

    A run is recorded with its pid once its monitor has forked it; until the child has exec'd the
    agent, /proc shows the monitor's environment, without the chat id: scan again (bounded) until
    every recorded agent has exec'd."""
    chats = all_chats(stub)
    running = {c.id: c.runtime.current_run.pid for c in chats if c.runtime.state == R.RUNTIME_STATE_RUNNING}
    deadline = time.monotonic() + 10
    agents = agents_of(state)
    while {chat: pid for pid, chat in agents.items()} != running and time.monotonic() < deadline:
        time.sleep(0.05)
        agents = agents_of(state)
    assert {chat: pid for pid, chat in agents.items()} == running, (agents, running)
    assert len(agents) == len(running)


def test_an_abandoned_create_is_recorded_and_keeps_its_slot_meanwhile(one_slot: Stack) -> None:
    stub = one_slot.chat()
    with graph_writes_held(one_slot.db_url):
        with pytest.raises(grpc.RpcError) as gone:  # the caller gives up while its create waits on the graph
            stub.CreateChat(chat_pb2.CreateChatRequest(name="abandoned", command=SLEEPER), timeout=2.0)
        assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The abandoned create still runs (and spawns once the graph answers): it keeps the only slot,
        # so the next create is refused at once with a retry hint instead of being spawned beside it.
        with pytest.raises(grpc.RpcError) as busy:
            stub.CreateChat(chat_pb2.CreateChatRequest(name="second", command=SLEEPER), timeout=30)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, busy.value.details()
        assert "busy" in (busy.value.details() or "")
        delay = retry_delay(busy.value)
        assert delay is not None and delay > 0
        # Reads are answered meanwhile (nothing recorded yet: the create's first write waits).
        assert all_chats(stub) == []
    chats = wait_all(stub, lambda cs: any(c.runtime.state == R.RUNTIME_STATE_RUNNING for c in cs.values()))
    (chat,) = chats.values()
    assert chat.name == "abandoned" and chat.runtime.current_run.pid > 0
    assert_every_agent_is_a_recorded_live_run(stub, one_slot.state_dir)
    # Once it is done, its slot is free again.
    again = stub.CreateChat(chat_pb2.CreateChatRequest(name="third", command=SLEEPER), timeout=30).chat
    assert again.runtime.state == R.RUNTIME_STATE_RUNNING


def test_a_storm_of_callers_giving_up_leaves_no_agent_unknown(one_slot: Stack) -> None:
    """Creates with deadlines from 1 ms to 100 ms and callers cancelling: every outcome is a clear
    status, and afterwards each agent process belongs to a recorded RUNNING chat (and each RUNNING
    chat has its agent)."""
    stub = one_slot.chat()
    deadlines = [0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1]
    calls = []
    for i in range(70):
        calls.append(stub.CreateChat.future(chat_pb2.CreateChatRequest(name=f"storm-{i}", command=SLEEPER),
                                            timeout=deadlines[i % len(deadlines)] if i % 5 else 10))
        if i % 5 == 4:
            calls[-2].cancel()  # a caller that cancels mid-flight
    codes: dict[str, int] = {}
    ok: set[str] = set()
    for call in calls:
        try:
            ok.add(call.result().chat.id)
            code = grpc.StatusCode.OK
        except grpc.FutureCancelledError:
            code = grpc.StatusCode.CANCELLED
        except grpc.RpcError as exc:
            code = exc.code()
        codes[code.name] = codes.get(code.name, 0) + 1
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"}, codes
    # With one slot, this create is admitted only once every create admitted before it is done.
    last = stub.CreateChat(chat_pb2.CreateChatRequest(name="after", command=SLEEPER), timeout=60).chat
    chats = wait_all(stub, lambda cs: last.id in cs and all(
        c.runtime.state != R.RUNTIME_STATE_STARTING for c in cs.values()))
    assert ok <= set(chats)
    assert_every_agent_is_a_recorded_live_run(stub, one_slot.state_dir)


def test_a_chat_can_be_deleted_while_creates_are_refused(one_slot: Stack) -> None:
    stub = one_slot.chat()
    chat = stub.CreateChat(chat_pb2.CreateChatRequest(name="keep", command=SLEEPER), timeout=30).chat
    pid = chat.runtime.current_run.pid
    with graph_writes_held(one_slot.db_url):
        pending = stub.CreateChat.future(chat_pb2.CreateChatRequest(name="held", command=SLEEPER), timeout=60)
        busy = None
        while busy is None:  # until the held create has its slot, the probe may itself be admitted
            try:
                probe = stub.CreateChat(chat_pb2.CreateChatRequest(name="probe", command=SLEEPER), timeout=1)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    busy = exc
                    break
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
            else:
                raise AssertionError(f"a create was admitted while the graph's writes were held: {probe}")
        deleting = stub.DeleteChat.future(chat_pb2.DeleteChatRequest(chat_id=chat.id), timeout=60)
    deleted = deleting.result().chat
    assert deleted.runtime.state == R.RUNTIME_STATE_STOPPED
    assert pending.result().chat.runtime.state == R.RUNTIME_STATE_RUNNING
    assert pid not in agents_of(one_slot.state_dir)
    wait_all(stub, lambda cs: all(c.runtime.state != R.RUNTIME_STATE_STARTING for c in cs.values()))
    assert_every_agent_is_a_recorded_live_run(stub, one_slot.state_dir)
