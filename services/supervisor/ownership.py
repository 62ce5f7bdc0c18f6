"""Ownership of chats: leases, claims, fencing, failover and adoption.

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
  atomic: one survivor wins each) and adopted.
- **Adoption** (`adopt`): resuming the supervision of a chat this process did not start — at start
  (its own chats), after a takeover or a failover claim: a live run proven ours is watched again; a
  run that ended meanwhile has its end recorded (what its monitor wrote, or what is known: leftovers
  ended, the lost owner) and the restart policy decides; a spawn or a backoff that was under way is
  resumed. What follows from a run's end (the decision, the record, the restart) is the lifecycle's,
  reached through `ChatOps`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Protocol

from services.supervisor import agentenv, policy
from services.supervisor.backend import ExitInfo, RunBackend, RunHandle, describe_leftovers
from services.supervisor.clients import GraphClient
from services.supervisor.clock import Clock, Timer
from services.supervisor.live import LIVE_TASK, Change, ChatLive, RunStarted, Transition, creating_span
from services.supervisor.settings import SupervisorSettings
from wgs.common import chat_states, errors
from wgs.common.logs import fields
from wgs.common.timeutil import from_ts
from wgs.v1 import runtime_pb2, runtime_service_pb2, task_pb2

log = logging.getLogger("wgs.supervisor.ownership")
adopt_log = logging.getLogger("wgs.supervisor")
RS = runtime_service_pb2
TAKEOVER_CONCURRENCY = 8  # chats of lost replicas claimed and adopted at once by one survivor


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


class ChatOps(Protocol):
    """What ownership needs of the lifecycle (implemented by lifecycle.Lifecycle)."""

    def live(self, chat_id: str) -> ChatLive:
        """The chat's entry (created if this supervisor held nothing of it yet)."""
        ...

    def held(self, chat_id: str) -> ChatLive | None:
        """The chat's entry if there is one (None: nothing held)."""
        ...

    def forget(self, chat_id: str) -> None:
        """Drop the chat's entry."""

    def held_chats(self) -> list[str]:
        """The chats this supervisor owns (RenewLeases asks which of them it lost)."""
        ...

    def capacity(self) -> Capacity: ...

    async def change_state(self, live: ChatLive, to_state: int, change: Change
                           ) -> tuple[task_pb2.Task | None, runtime_pb2.ChatRuntime]: ...

    async def record_end(self, live: ChatLive, handle: RunHandle, info: ExitInfo, *, task_status: int | None = None,
                         lost_detail: str = "", stay_stopped: bool = False) -> runtime_pb2.ChatRuntime:
        """Decide what follows a run's end, then record it (lock held)."""
        ...

    async def respawn(self, live: ChatLive, task: task_pb2.Task, runtime: runtime_pb2.ChatRuntime, *,
                      reason: str) -> tuple[task_pb2.Task, runtime_pb2.ChatRuntime]:
        """STARTING, plan, prove no earlier run lives, spawn (lock held)."""
        ...

    def schedule(self, live: ChatLive, decision: policy.Decision) -> None:
        """Arm the restart timer a BACKOFF decision asks for."""

    def on_run_exit(self, handle: RunHandle, info: ExitInfo) -> None:
        """The backend's exit callback for a watched run."""


class Ownership:
    def __init__(self, settings: SupervisorSettings, graph: GraphClient, backend: RunBackend, clock: Clock,
                 chats: ChatOps) -> None:
        self.s = settings
        self.graph = graph
        self.backend = backend
        self.clock = clock
        self.chats = chats
        self._timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self._takeover: asyncio.Future[int] | None = None
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
        cap = self.chats.capacity()
        try:
            resp = await self.graph.renew(RS.RenewLeasesRequest(
                lease_seconds=self.s.lease_seconds, advertise_address=self.s.advertise_address,
                free_capacity=max(0, cap.free), live_chats=cap.live_chats, max_live_chats=cap.max_live_chats,
                memory_used_bytes=cap.memory_used_bytes, memory_limit_bytes=cap.memory_limit_bytes,
                held_chat_ids=self.chats.held_chats()))
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
            await self.drop_lost(list(resp.lost_chat_ids))
        return True

    async def take_over_orphans(self) -> int:
        """Claim live chats whose owner's lease expired and adopt them, up to TAKEOVER_CONCURRENCY at a
        time (a lost replica's hundred chats are running again in seconds, not one after another);
        returns how many were taken over."""
        try:
            records = [r async for r in self.graph.all_records(lease_expired=True)]
        except errors.WgsError as exc:
            log.warning("failover scan failed: %s", exc.message)
            return 0
        random.shuffle(records)  # survivors scanning at once spread the chats between them
        orphans = [rec for rec in records
                   if rec.runtime.supervisor_id != self.me and rec.task.status == task_pb2.TASK_STATUS_IN_PROGRESS
                   and rec.runtime.state in (chat_states.STARTING, chat_states.RUNNING, chat_states.BACKOFF)]
        slots = asyncio.Semaphore(TAKEOVER_CONCURRENCY)
        taking = 0  # claimed here, not yet counted by capacity()
        taken = 0
        full = False

        async def take(rec: RS.ChatRecord) -> None:
            nonlocal taking, taken, full
            async with slots:
                if full or self.chats.capacity().free - taking <= 0:
                    if not full:
                        log.warning("failover: no capacity left for more chats of lost supervisors")
                    full = True
                    return
                taking += 1
                try:
                    try:
                        claimed = await self.claim(rec.task.id)
                    except errors.FailedPrecondition:
                        return  # another survivor was faster, or the owner came back
                    except errors.WgsError as exc:
                        log.warning("failover: could not claim %s: %s", rec.task.id, exc.message)
                        return
                    taken += 1
                    log.warning("failover: took over %s from lost supervisor %r", rec.task.id,
                                claimed.previous_supervisor_id,
                                extra=fields(chat_id=rec.task.id, previous_supervisor_id=claimed.previous_supervisor_id))
                    try:
                        await self.adopt_claimed(claimed)
                    except errors.WgsError as exc:
                        log.error("failover: could not adopt %s: %s", rec.task.id, exc.message,
                                  extra=fields(chat_id=rec.task.id))
                finally:
                    taking -= 1

        await asyncio.gather(*(take(rec) for rec in orphans))
        return taken

    @property
    def interval(self) -> float:
        return max(1.0, self.s.lease_seconds / 3)

    async def start(self) -> None:
        """Renew the leases (writing the fencing deadline) and adopt this supervisor's chats, then
        renew (and take over orphans) every lease/3, on the injected clock."""
        if not await self.renew():
            raise errors.Unavailable("cannot renew the leases at start: is the graph service reachable?")
        async for rec in self.graph.all_records(supervisor_id=self.me):
            live = self.chats.live(rec.task.id)
            try:
                async with live.lock:
                    await self.adopt(live, rec.task, rec.runtime)
            except errors.WgsError as exc:
                adopt_log.error("could not adopt %s: %s", rec.task.id, exc.message, extra=fields(chat_id=rec.task.id))
        self._schedule()

    def _schedule(self) -> None:
        if not self._closed:
            self._timer = self.clock.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._task = asyncio.ensure_future(self._round())

    async def _round(self) -> None:
        try:
            renewed = await self.renew()
        finally:
            self._schedule()  # the next renewal never waits for a takeover (it would fence our own runs)
        if renewed and (self._takeover is None or self._takeover.done()):
            self._takeover = asyncio.ensure_future(self.take_over_orphans())

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._task, self._takeover):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    # -- lost chats, takeover, adoption --------------------------------------------------------

    async def drop_lost(self, chat_ids: list[str]) -> None:
        """Chats another supervisor took over while this one could not renew: never act on them again."""
        for chat_id in chat_ids:
            live = self.chats.held(chat_id)
            if live is None:
                continue
            live.lost = True
            live.cancel_timer()
            handle = live.run
            if handle is not None:
                # Normally already fenced by its monitor; never leave a second agent running.
                handle.stop_reason = "the chat was taken over by another supervisor"
                handle.recorded = True
                live.run = None
                await self.backend.stop(handle, self.s.stop_grace)
            self.chats.forget(chat_id)

    async def adopt_claimed(self, claimed: RS.ClaimChatResponse) -> None:
        """Adopt a chat claimed from a lost supervisor (failover)."""
        live = self.chats.live(claimed.task.id)
        async with live.lock:
            live.lost = False
            await self.adopt(live, claimed.task, claimed.runtime, previous=claimed)

    async def take_over(self, live: ChatLive) -> None:
        """Claim a chat whose owner's lease expired, before acting on it, and adopt it (lock held);
        the graph refuses with FAILED_PRECONDITION while that owner's lease is valid."""
        claimed = await self.claim(live.chat_id)
        live.lost = False
        adopt_log.info("took over %s from supervisor %r", live.chat_id, claimed.previous_supervisor_id,
                       extra=fields(chat_id=live.chat_id, previous_supervisor_id=claimed.previous_supervisor_id))
        await self.adopt(live, claimed.task, claimed.runtime, previous=claimed)

    def handle_from_record(self, chat_id: str, run: runtime_pb2.Run) -> RunHandle:
        return RunHandle(chat_id=chat_id, number=run.number, pid=run.pid, start_ticks=run.process_start_ticks,
                         monitor_pid=run.monitor_pid, monitor_start_ticks=run.monitor_start_ticks,
                         log_path=self.backend.log_path(chat_id, run.number), argv=list(run.argv),
                         started_at=from_ts(run.started_at) or self.clock.now(), hostname=run.hostname,
                         trace_id=run.trace_id)

    async def adopt(self, live: ChatLive, task: task_pb2.Task, rt: runtime_pb2.ChatRuntime, *,
                    previous: RS.ClaimChatResponse | None = None) -> None:
        """Resume supervising a chat this process did not start (lock held, chat owned)."""
        chats = self.chats
        live.state = rt.state
        live.redactor = agentenv.redactor_for(rt.plan)
        live.history = policy.History(restart_count=rt.restart_count)
        if live.create_span is None:
            live.create_span = creating_span(rt)
        lost_owner = ""
        if previous is not None and previous.previous_supervisor_id != self.me:
            expired = from_ts(previous.previous_lease_expired_at)
            lost_owner = (f"supervisor {previous.previous_supervisor_id!r} was lost (its lease expired at "
                          f"{expired.isoformat(timespec='seconds') if expired else 'an unknown time'})")
        cur = rt.current_run
        live_in_task = task.status == LIVE_TASK
        if rt.HasField("current_run") and cur.pid > 0 and not cur.HasField("exited_at"):
            handle = self.backend.adopt(task.id, cur) if cur.hostname == self.backend.hostname else None
            if handle is not None and self.backend.watch(handle, chats.on_run_exit):
                live.run = handle
                adopt_log.info("adopted %s run %d: agent pid %d (monitor %d)", task.id, cur.number, cur.pid,
                               cur.monitor_pid, extra=fields(chat_id=task.id, pid=cur.pid, run=cur.number))
                if rt.state != chat_states.RUNNING:
                    # e.g. Reconcile marked it STOPPED while this supervisor was away: the agent lives.
                    await chats.change_state(live, chat_states.STARTING, Transition(
                        task_status=LIVE_TASK if not live_in_task else None,
                        log_message="the agent is alive: adopted after a supervisor restart"))
                    await chats.change_state(live, chat_states.RUNNING, RunStarted(handle, None))
                elif not live_in_task or lost_owner:
                    await chats.change_state(live, chat_states.RUNNING, Transition(
                        task_status=LIVE_TASK if not live_in_task else None,
                        log_message=f"adopted by supervisor {self.me}" + (f" ({lost_owner})" if lost_owner else "")))
                return
            # The recorded run is not alive (or not checkable here): how did it end?
            ended = self.handle_from_record(task.id, cur)
            info = self.backend.collect_exit(ended) if cur.hostname == self.backend.hostname else None
            leftovers = await self.backend.end_leftovers(task.id, [cur], self.s.stop_grace)
            notes = []
            if lost_owner:
                notes.append(f"{lost_owner}; the end of run {cur.number} (on host {cur.hostname or '?'}) is unknown; "
                             f"the chat now runs on supervisor {self.me}")
            if leftovers:
                notes.append(f"{describe_leftovers(leftovers)} before restart")
            elif info is not None and info.unknown and not lost_owner:
                # Its monitor died without a record (as a live supervisor says it, see Lifecycle):
                # what lives of the run was checked — nothing (a supervisor killed after ending it).
                notes.append(f"no process of run {cur.number} was left")
            if info is None or (info.unknown and lost_owner):  # its monitor was not ours to know
                info = ExitInfo(None, None, self.clock.now(), error="exit status unknown", unknown=True)
            adopt_log.info("%s run %d ended while its supervisor was away: %s%s", task.id, cur.number,
                           info.describe(), f" ({'; '.join(notes)})" if notes else "",
                           extra=fields(chat_id=task.id, run=cur.number))
            detail = "; ".join([info.error or info.describe(), *notes]) if (notes or info.unknown) else ""
            runtime = await chats.record_end(live, ended, info, lost_detail=detail,
                                             stay_stopped=rt.state == chat_states.STOPPED,
                                             task_status=LIVE_TASK if not live_in_task and rt.state != chat_states.STOPPED
                                             else None)
            if runtime.state == chat_states.STOPPED and runtime.resume_on_start and live_in_task:
                await chats.respawn(live, task, runtime, reason="resumed: it was stopped by a shutdown")
            return
        if rt.state == chat_states.STARTING and live_in_task:
            # Created (or restarted) but the supervisor went away before the spawn was recorded.
            await chats.respawn(live, task, rt, reason="spawn resumed after a supervisor restart"
                                + (f" ({lost_owner})" if lost_owner else ""))
        elif rt.state == chat_states.BACKOFF and live_in_task:
            due = from_ts(rt.next_restart_at)
            delay = max(0.0, (due - self.clock.now()).total_seconds()) if due else 0.0
            chats.schedule(live, policy.Decision(chat_states.BACKOFF, delay, live.history, ""))
        elif rt.state == chat_states.STOPPED and rt.resume_on_start and live_in_task:
            await chats.respawn(live, task, rt, reason="resumed: it ran before the supervisor's shutdown")
