"""ExitRecorder (services/supervisor/runs.py): exits recorded in batches, two batches under way at
once, each chat's exits in order and never in two batches at the same time; retried while the
graph is unavailable. Against a fake graph whose answers the test holds back. And TailReader: the
output tails of runs that ended together read in one call."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.supervisor import runs
from services.supervisor.backend import RunHandle
from services.supervisor.runs import ExitRecorder, TailReader
from wgs.common import errors
from wgs.v1 import runtime_pb2
from wgs.v1 import runtime_service_pb2 as rs


def exit_of(chat: str, run: int = 1) -> rs.RunExit:
    return rs.RunExit(chat_id=chat, run=runtime_pb2.Run(number=run, pid=1000 + run, exit_code=1))


class Graph:
    """RecordRunExited as the supervisor's graph client calls it: each call waits until the test
    lets it go (or `delay` passes); every call and what was under way with it is kept."""

    def __init__(self, delay: tuple[float, float] | None = None, seed: int = 0) -> None:
        self.delay = delay  # None: until released; else a random time in this range
        self.rng = random.Random(seed)
        self.calls: list[list[tuple[str, int]]] = []
        self.under_way: list[list[tuple[str, int]]] = []
        self.most_at_once = 0
        self.overlaps: list[tuple[set[str], set[str]]] = []
        self.release: asyncio.Queue[None] = asyncio.Queue()
        self.fail: list[errors.WgsError] = []  # raised by the next calls, in order
        self.refuse: set[str] = set()  # chats whose exit the graph refuses (per-exit error)

    async def runs_exited(self, exits: list[rs.RunExit]) -> list[rs.RunExitResult]:
        batch = [(e.chat_id, e.run.number) for e in exits]
        self.calls.append(batch)
        chats = {c for c, _ in batch}
        for other in self.under_way:
            if chats & {c for c, _ in other}:
                self.overlaps.append((chats, {c for c, _ in other}))
        self.under_way.append(batch)
        self.most_at_once = max(self.most_at_once, len(self.under_way))
        try:
            if self.delay is None:
                await self.release.get()
            else:
                await asyncio.sleep(self.rng.uniform(*self.delay))
            if self.fail:
                raise self.fail.pop(0)
        finally:
            self.under_way.remove(batch)
        return [rs.RunExitResult(chat_id=e.chat_id, error_code=9, error_message=f"{e.chat_id} refused")
                if e.chat_id in self.refuse else
                rs.RunExitResult(chat_id=e.chat_id, runtime=runtime_pb2.ChatRuntime(restart_count=e.run.number))
                for e in exits]


async def until(cond: Any, what: str) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


async def test_two_batches_go_at_once_and_a_chat_waits_for_the_batch_holding_its_earlier_exit() -> None:
    graph = Graph()
    rec = ExitRecorder(graph)  # type: ignore[arg-type]
    first = [asyncio.ensure_future(rec.record(exit_of(c))) for c in ("a", "b")]
    await until(lambda: len(graph.calls) == 1, "the first batch")
    # While the first batch is under way: a's next exit, and exits of other chats.
    second = [asyncio.ensure_future(rec.record(exit_of(c, 2))) for c in ("a", "c", "d")]
    await until(lambda: len(graph.calls) == 2, "the second batch")
    assert graph.calls == [[("a", 1), ("b", 1)], [("c", 2), ("d", 2)]]  # a's run 2 is held back
    assert rec.busy_chats() == {"a", "b", "c", "d"}
    third = asyncio.ensure_future(rec.record(exit_of("e", 3)))
    await asyncio.sleep(0.02)
    assert len(graph.calls) == 2  # two under way: e waits for a free place
    graph.release.put_nowait(None)  # the first batch is answered
    await until(lambda: len(graph.calls) == 3, "the third batch")
    assert graph.calls[2] == [("a", 2), ("e", 3)]  # a's later exit only now, and the queue in order
    assert [f.result().restart_count for f in first] == [1, 1]
    for _ in range(2):
        graph.release.put_nowait(None)
    assert [f.restart_count for f in await asyncio.gather(*second, third)] == [2, 2, 2, 3]
    assert graph.most_at_once == 2 and not graph.overlaps and not rec.busy_chats()


async def test_a_chat_is_at_most_once_in_a_batch() -> None:
    graph = Graph(delay=(0.0, 0.0))
    rec = ExitRecorder(graph)  # type: ignore[arg-type]
    done = await asyncio.gather(*(rec.record(exit_of(c, n)) for n in (1, 2, 3) for c in ("a", "b")))
    assert [r.restart_count for r in done] == [1, 1, 2, 2, 3, 3]
    for batch in graph.calls:
        assert len({c for c, _ in batch}) == len(batch)
    for chat in ("a", "b"):
        assert [n for batch in graph.calls for c, n in batch if c == chat] == [1, 2, 3]


async def test_many_exits_of_many_chats_keep_each_chats_order_and_never_overlap() -> None:
    graph = Graph(delay=(0.01, 0.02), seed=7)  # longer than the batch window
    rec = ExitRecorder(graph)  # type: ignore[arg-type]
    rng = random.Random(3)
    order: dict[str, list[int]] = {}
    waiting = []
    for i in range(1500):
        chat = f".chat-{rng.randrange(400)}"
        order.setdefault(chat, []).append(i)
        waiting.append(asyncio.ensure_future(rec.record(exit_of(chat, i))))
        if rng.random() < 0.05:
            await asyncio.sleep(rng.uniform(0, 0.004))
    results = await asyncio.gather(*waiting)
    assert [r.restart_count for r in results] == list(range(1500))
    assert not graph.overlaps and graph.most_at_once == 2
    assert all(len(b) <= runs.BATCH_MAX and len({c for c, _ in b}) == len(b) for b in graph.calls)
    sent: dict[str, list[int]] = {}
    for batch in graph.calls:
        for chat, n in batch:
            sent.setdefault(chat, []).append(n)
    assert sent == order


async def test_a_batch_is_retried_whole_while_the_graph_is_unavailable_and_its_chats_stay_held(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "RETRY_DELAYS", (0.01, 0.01))
    graph = Graph()
    graph.fail = [errors.Unavailable("graph down"), errors.Unavailable("graph down")]
    rec = ExitRecorder(graph)  # type: ignore[arg-type]
    first = asyncio.ensure_future(rec.record(exit_of("a")))
    graph.release.put_nowait(None)
    await until(lambda: len(graph.calls) == 2, "the retry")
    later = asyncio.ensure_future(rec.record(exit_of("a", 2)))  # a's batch is still being retried
    other = asyncio.ensure_future(rec.record(exit_of("b", 2)))
    await until(lambda: len(graph.calls) == 3, "b's batch")
    assert graph.calls == [[("a", 1)], [("a", 1)], [("b", 2)]]
    graph.release.put_nowait(None)  # the retry fails again; the third attempt is the last
    await until(lambda: len(graph.calls) == 4, "the third attempt")
    assert graph.calls[3] == [("a", 1)]
    for _ in range(3):
        graph.release.put_nowait(None)
    assert (await first).restart_count == 1 and (await other).restart_count == 2
    assert (await later).restart_count == 2 and graph.calls[4] == [("a", 2)]
    assert not graph.overlaps


async def test_an_unavailable_graph_is_given_up_on_after_the_retries_and_a_refused_exit_fails_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "RETRY_DELAYS", (0.001,))
    graph = Graph(delay=(0.0, 0.0))
    graph.fail = [errors.Unavailable("graph down"), errors.Unavailable("graph down")]
    rec = ExitRecorder(graph)  # type: ignore[arg-type]
    with pytest.raises(errors.Unavailable):
        await rec.record(exit_of("a"))
    graph.refuse = {"b"}
    b, c = await asyncio.gather(rec.record(exit_of("b")), rec.record(exit_of("c")), return_exceptions=True)
    assert isinstance(b, errors.WgsError) and "b refused" in str(b)
    assert isinstance(c, runtime_pb2.ChatRuntime)
    assert not rec.busy_chats()


class Files:
    """A backend's tails(): each call kept; held until the test lets it go (a worker thread waits)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.go = threading.Event()
        self.error: Exception | None = None

    def tails(self, handles: list[RunHandle]) -> list[str]:
        self.calls.append([h.chat_id for h in handles])
        self.go.wait(5)
        if self.error is not None:
            raise self.error
        return [f"tail of {h.chat_id}" for h in handles]


def handle(chat: str) -> RunHandle:
    return RunHandle(chat_id=chat, number=1, pid=1, start_ticks=1, monitor_pid=2, monitor_start_ticks=2,
                     log_path=Path("/nonexistent") / chat / "run-1.log", argv=[], started_at=datetime.now(UTC),
                     hostname="h")


async def test_tails_asked_for_together_are_read_in_one_call_and_later_ones_in_the_next() -> None:
    files = Files()
    reader = TailReader(files)  # type: ignore[arg-type]
    first = [asyncio.ensure_future(reader.read(handle(c))) for c in ("a", "b", "c")]
    await until(lambda: len(files.calls) == 1, "the first read")
    later = [asyncio.ensure_future(reader.read(handle(c))) for c in ("d", "e")]
    await asyncio.sleep(0.02)
    assert files.calls == [["a", "b", "c"]]  # one read under way at a time
    files.go.set()
    assert await asyncio.gather(*first, *later) == [f"tail of {c}" for c in "abcde"]
    assert files.calls == [["a", "b", "c"], ["d", "e"]]
    files.error = OSError("disk gone")
    results = await asyncio.gather(reader.read(handle("f")), reader.read(handle("g")), return_exceptions=True)
    assert [str(r) for r in results] == ["disk gone", "disk gone"] and files.calls[-1] == ["f", "g"]
    files.error = None
    assert await reader.read(handle("h")) == "tail of h"  # still reading after an error
