"""Admission control for CreateChat: refuse fast what the machine cannot serve, never queue until
deadlines expire.

- **Concurrency.** At most `max_concurrent` creates spawn at once. A create waits for a slot only
  while waiting can still help: no longer than `queue_seconds`, never past the caller's deadline,
  and not at all when `max_waiting` creates already wait. Otherwise it is RESOURCE_EXHAUSTED at once,
  with a google.rpc.RetryInfo hint, before anything is written. A slot is held by the create's
  work (`Ticket`), not by the call: a create that runs on after its caller gave up still counts.
- **Memory.** A new chat is refused (RESOURCE_EXHAUSTED naming the limit and the use) when the
  container's cgroup memory in use plus what one chat costs would pass its limit (less a reserve),
  so the kernel never OOM-kills the pod and every chat in it.

The memory figures come from cgroup files (v2 `memory.max`/`memory.current`, v1
`memory.limit_in_bytes`/`memory.usage_in_bytes`), less the inactive file cache of `memory.stat`
(the kubelet's working set), read through `MemoryProbe`, injectable for tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from wgs.common.errors import ResourceExhausted
from wgs.common.logs import fields

UNLIMITED = 1 << 62  # cgroup v1 reports "no limit" as a huge number
RESERVE_FRACTION = 0.05  # headroom kept below the limit (page cache, bursts)
MEMORY_READ_SECONDS = 0.25  # how old a cgroup memory reading may be
REFUSAL_LOG_SECONDS = 10.0  # at most one "refused N creates" line this often
log = logging.getLogger("wgs.supervisor")


@dataclass(frozen=True)
class Memory:
    used: int  # the container cgroup's working set in bytes (0: unknown)
    limit: int  # its limit (0: none)


def _stat_value(path: Path, key: str) -> int:
    """One counter of a cgroup memory.stat file (0 if absent)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _working_set(usage: int | None, stat: Path, inactive_key: str) -> int:
    """usage - inactive file pages, as the kubelet counts a container's memory for eviction and as the
    kernel can reclaim before it OOM-kills: the page cache of run logs does not count against chats."""
    if not usage:
        return 0
    return max(0, usage - _stat_value(stat, inactive_key))


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return 0
    try:
        value = int(text)
    except ValueError:
        return None
    return 0 if value >= UNLIMITED else value


def own_cgroup_memory(proc_self_cgroup: Path = Path("/proc/self/cgroup"),
                      root: Path = Path("/sys/fs/cgroup")) -> Memory:
    """Memory use and limit of this process's cgroup (v2 unified, else v1 memory controller)."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return Memory(0, 0)
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        rel = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            base = root / rel
            limit = _read_int(base / "memory.max")
            used = _read_int(base / "memory.current")
            if limit is not None or used is not None:
                return Memory(_working_set(used, base / "memory.stat", "inactive_file"), limit or 0)
        if "memory" in controllers.split(","):
            base = root / "memory" / rel
            limit = _read_int(base / "memory.limit_in_bytes")
            used = _read_int(base / "memory.usage_in_bytes")
            if limit is not None or used is not None:
                return Memory(_working_set(used, base / "memory.stat", "total_inactive_file"), limit or 0)
    return Memory(0, 0)


MemoryProbe = Callable[[], Memory]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


class Admission:
    def __init__(self, *, max_concurrent: int, queue_seconds: float, chat_bytes: int,
                 memory: MemoryProbe = own_cgroup_memory, max_waiting: int | None = None) -> None:
        self.max_concurrent = max_concurrent
        self.queue_seconds = queue_seconds
        self.chat_bytes = chat_bytes
        self._probe = memory
        self.max_waiting = max_waiting if max_waiting is not None else 4 * max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._waiting = 0
        self._busy = 0
        self._recent: list[float] = []  # durations of recent creates, for the wait estimate
        self._read: tuple[float, Memory] | None = None  # (when, what) of the last cgroup read
        self._admitted_since_read = 0
        self._refusals = 0
        self._refusals_logged_at = -REFUSAL_LOG_SECONDS

    def memory(self) -> Memory:
        """The container's memory: read from the cgroup at most every MEMORY_READ_SECONDS (each
        CreateChat asks twice; under a storm the file reads were a good part of a refusal's cost),
        counting each create admitted since the read as `chat_bytes` more in use."""
        now = time.monotonic()
        if self._read is None or now - self._read[0] >= MEMORY_READ_SECONDS:
            self._read = (now, self._probe())
            self._admitted_since_read = 0
        mem = self._read[1]
        if not mem.used:
            return mem
        return Memory(used=mem.used + self._admitted_since_read * self.chat_bytes, limit=mem.limit)

    def estimate(self) -> float:
        """Typical seconds one create holds a slot (median of recent ones; 50 ms before any)."""
        if not self._recent:
            return 0.05
        return sorted(self._recent)[len(self._recent) // 2]

    def check_memory(self) -> None:
        mem = self.memory()
        if mem.limit <= 0 or self.chat_bytes <= 0:
            return
        allowed = int(mem.limit * (1 - RESERVE_FRACTION))
        if mem.used + self.chat_bytes > allowed:
            raise ResourceExhausted(
                f"not enough memory for another chat: the supervisor's container uses {_mib(mem.used)} of its "
                f"{_mib(mem.limit)} limit and a chat needs about {_mib(self.chat_bytes)} (WGS_CHAT_MEMORY_BYTES); "
                "stop or delete chats, or give the supervisor more memory (or another replica)", retry_after=30.0)

    def refuse_if_busy(self, time_remaining: float | None = None) -> float:
        """RESOURCE_EXHAUSTED (with a retry hint) at once if no slot can be had in time: every slot is
        taken and `max_waiting` creates wait already, or the expected wait is longer than the caller
        can or should wait. Otherwise the longest wait allowed (0: a slot is free). Cheap: called
        first, before anything else is looked at."""
        if not self._slots.locked():
            return 0.0
        wait = min(self.queue_seconds, time_remaining if time_remaining is not None else self.queue_seconds)
        queued_ahead = self._waiting // self.max_concurrent + 1
        expected = queued_ahead * self.estimate()
        if self._waiting >= self.max_waiting or wait <= 0 or expected > wait:
            self._refused()
            raise ResourceExhausted(
                f"the supervisor is busy: {self._busy} chats are being created and {self._waiting} wait; "
                f"retry in {max(expected, 0.1):.1f}s", retry_after=max(expected, 0.1))
        return wait

    def _refused(self) -> None:
        """Count a refusal; one log line per REFUSAL_LOG_SECONDS says how many (refusals are not
        traced one by one: wgs.common.telemetry.ThinRefusals)."""
        self._refusals += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSAL_LOG_SECONDS:
            log.warning("admission: refused %d CreateChat call(s) since the last such line: %d creating "
                        "(WGS_MAX_CONCURRENT_CREATES=%d), %d waiting, a create takes ~%.2fs", self._refusals,
                        self._busy, self.max_concurrent, self._waiting, self.estimate(),
                        extra=fields(refused=self._refusals, creating=self._busy, waiting=self._waiting))
            self._refusals, self._refusals_logged_at = 0, now

    async def acquire(self, time_remaining: float | None = None) -> Ticket:
        """Take a create slot, waiting only while waiting can help; RESOURCE_EXHAUSTED (with a retry
        hint) otherwise. The slot is held until `Ticket.release()` — by the work, not by the caller:
        a create that runs on after its caller gave up still counts against the limit."""
        if self._slots.locked():
            wait = self.refuse_if_busy(time_remaining)
            self._waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), wait)
            except TimeoutError:
                self._refused()
                raise ResourceExhausted(
                    f"the supervisor is busy: no create slot freed within {wait:.1f}s; retry in "
                    f"{self.estimate():.1f}s", retry_after=max(self.estimate(), 0.1)) from None
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        self._busy += 1
        self._admitted_since_read += 1
        return Ticket(self)

    def _release(self, started: float) -> None:
        self._busy -= 1
        self._slots.release()
        self._recent.append(time.monotonic() - started)
        del self._recent[:-50]

    @asynccontextmanager
    async def slot(self, time_remaining: float | None = None) -> AsyncIterator[None]:
        """Hold a create slot for the block; RESOURCE_EXHAUSTED if none can be had in time."""
        ticket = await self.acquire(time_remaining)
        try:
            yield
        finally:
            ticket.release()


class Ticket:
    """One held create slot; `release()` (idempotent, also usable as a done-callback) frees it."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._started = time.monotonic()
        self._held = True

    def release(self, *_: object) -> None:
        if self._held:
            self._held = False
            self._admission._release(self._started)
