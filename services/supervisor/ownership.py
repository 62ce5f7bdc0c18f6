"""Ownership of chats: leases, claims, fencing and failover.

The graph decides who owns a chat (its lease); this module keeps this supervisor's leases alive and
acts on what follows from them:

- **Renewal** every lease/3, carrying this replica's heartbeat (advertise address, capacity), and
  learning which chats it does not own any more (taken over while it could not renew): those are
  dropped at once, never resumed.
- **Fencing.** After each successful renewal the backend is told the wall-clock deadline by which
  the next one must succeed: `last success + lease - margin`. Past it, every run ends itself (its
  run monitor does it, so a frozen or partitioned supervisor is fenced too), before any other
  supervisor can claim the chat (which needs the lease to have expired in the graph).
- **Failover.** Every renewal period the chats whose owner's lease expired are claimed (ClaimChat is
  atomic: one survivor wins each) and handed to the lifecycle to be adopted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.supervisor.backend import RunBackend
from services.supervisor.clients import GraphClient
from services.supervisor.clock import Clock, Timer
from services.supervisor.settings import SupervisorSettings
from wgs.common import chat_states, errors
from wgs.common.logs import fields
from wgs.v1 import runtime_service_pb2, task_pb2

log = logging.getLogger("wgs.supervisor.ownership")
RS = runtime_service_pb2


@dataclass(frozen=True)
class Capacity:
    live_chats: int
    max_live_chats: int
    free: int
    memory_used_bytes: int = 0
    memory_limit_bytes: int = 0


def fencing_margin(settings: SupervisorSettings) -> float:
    """How long before the lease lapses runs end themselves: time to end a run plus clock slack."""
    return min(settings.lease_seconds / 2, settings.stop_grace + 3.0)


class Ownership:
    def __init__(self, settings: SupervisorSettings, graph: GraphClient, backend: RunBackend, clock: Clock, *,
                 held: Callable[[], list[str]], capacity: Callable[[], Capacity],
                 on_lost: Callable[[list[str]], Awaitable[None]],
                 on_orphan: Callable[[RS.ClaimChatResponse], Awaitable[None]]) -> None:
        self.s = settings
        self.graph = graph
        self.backend = backend
        self.clock = clock
        self._held = held
        self._capacity = capacity
        self._on_lost = on_lost
        self._on_orphan = on_orphan
        self._timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.last_renewal: float | None = None  # wall-clock time of the last successful renewal

    @property
    def me(self) -> str:
        return self.s.supervisor_id

    async def claim(self, chat_id: str) -> RS.ClaimChatResponse:
        return await self.graph.claim(chat_id, self.s.lease_seconds)

    async def renew(self) -> bool:
        """One renewal (and heartbeat); True if it succeeded."""
        sent = self.clock.now().timestamp()
        cap = self._capacity()
        try:
            resp = await self.graph.renew(RS.RenewLeasesRequest(
                lease_seconds=self.s.lease_seconds, advertise_address=self.s.advertise_address,
                free_capacity=max(0, cap.free), live_chats=cap.live_chats, max_live_chats=cap.max_live_chats,
                memory_used_bytes=cap.memory_used_bytes, memory_limit_bytes=cap.memory_limit_bytes,
                held_chat_ids=self._held()))
        except errors.WgsError as exc:
            left = (self.last_renewal or sent) + self.s.lease_seconds - fencing_margin(self.s) - sent
            log.warning("lease renewal failed: %s; runs fence themselves in %.0fs unless a renewal succeeds",
                        exc.message, max(0.0, left))
            return False
        self.last_renewal = sent
        self.backend.set_lease_deadline(sent + self.s.lease_seconds - fencing_margin(self.s))
        if resp.lost_chat_ids:
            log.error("chats taken over by another supervisor while this one could not renew its leases: %s; "
                      "dropping them", ", ".join(resp.lost_chat_ids), extra=fields(chats=list(resp.lost_chat_ids)))
            await self._on_lost(list(resp.lost_chat_ids))
        return True

    async def take_over_orphans(self) -> int:
        """Claim live chats whose owner's lease expired; returns how many were taken over."""
        taken = 0
        try:
            records = [r async for r in self.graph.all_records(lease_expired=True)]
        except errors.WgsError as exc:
            log.warning("failover scan failed: %s", exc.message)
            return 0
        random.shuffle(records)  # survivors scanning at once spread the chats between them
        for rec in records:
            if rec.runtime.supervisor_id == self.me or rec.task.status != task_pb2.TASK_STATUS_IN_PROGRESS:
                continue
            if rec.runtime.state not in (chat_states.STARTING, chat_states.RUNNING, chat_states.BACKOFF):
                continue
            if self._capacity().free <= 0:
                log.warning("failover: no capacity left for more chats of lost supervisors")
                break
            try:
                claimed = await self.claim(rec.task.id)
            except errors.FailedPrecondition:
                continue  # another survivor was faster, or the owner came back
            except errors.WgsError as exc:
                log.warning("failover: could not claim %s: %s", rec.task.id, exc.message)
                continue
            taken += 1
            log.warning("failover: took over %s from lost supervisor %r", rec.task.id, claimed.previous_supervisor_id,
                        extra=fields(chat_id=rec.task.id, previous_supervisor_id=claimed.previous_supervisor_id))
            try:
                await self._on_orphan(claimed)
            except errors.WgsError as exc:
                log.error("failover: could not adopt %s: %s", rec.task.id, exc.message,
                          extra=fields(chat_id=rec.task.id))
        return taken

    @property
    def interval(self) -> float:
        return max(1.0, self.s.lease_seconds / 3)

    def start(self) -> None:
        """Renew (and take over orphans) every lease/3, on the injected clock."""
        self._schedule()

    def _schedule(self) -> None:
        if not self._closed:
            self._timer = self.clock.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._task = asyncio.ensure_future(self._round())

    async def _round(self) -> None:
        try:
            if await self.renew():
                await self.take_over_orphans()
        finally:
            self._schedule()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
