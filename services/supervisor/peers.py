"""Replicas: where a chat's owner is reached, where a new chat goes, and how a call gets there.

Every supervisor replica answers every ChatService call. A call that acts on a chat (send, stop,
restart, interrupt, the run file, a live stderr tail) must run where the chat's agent runs, so a
replica that does not own the chat forwards the call to the owner — if the owner's lease is valid
(a replica whose lease lapsed counts as lost: the caller's replica takes the chat over instead).
Reads that need no owner (lists, messages, watches) are answered where they arrive.

A new chat goes to the replica with the most free capacity, as the replicas reported it with their
last lease renewal, less the chats sent to each since (ties stay here: no hop). Forwarded calls keep
their deadline and trace context (the gRPC client instrumentation carries it) and present this
replica's own credentials after the caller's were checked here; they carry `wgs-forwarded-by`, so
the receiving replica answers itself and a call never travels twice.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from services.supervisor.clients import GraphClient
from wgs.common import errors
from wgs.common.clients import aio_channel
from wgs.common.logs import fields
from wgs.common.timeutil import from_ts
from wgs.v1 import chat_pb2_grpc, runtime_pb2, runtime_service_pb2

log = logging.getLogger("wgs.supervisor.peers")
RS = runtime_service_pb2

FORWARDED_BY = "wgs-forwarded-by"
REFRESH_SECONDS = 2.0  # how stale the replica list may be before a placement or a lookup re-reads it


def advertised(configured: str, bound: str) -> str:
    """The address peers reach this replica at: the configured one, else the bound listen address
    (a wildcard host replaced by this host's name, a port 0 by the port actually bound)."""
    chosen = configured or bound
    host, sep, port = chosen.rpartition(":")
    if not sep:
        return chosen
    if port == "0" and configured:
        port = bound.rpartition(":")[2]
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.getfqdn()
    return f"{host}:{port}"


def forwarded_by(context: grpc.aio.ServicerContext | None) -> str:
    """The replica that forwarded this call here, "" if it came from a client."""
    if context is None:
        return ""
    for key, value in context.invocation_metadata() or ():
        if key == FORWARDED_BY:
            return value if isinstance(value, str) else value.decode()
    return ""


@dataclass
class _Peer:
    info: RS.SupervisorInfo
    sent_since_heartbeat: int = 0  # creates placed on it since the capacity it last reported

    @property
    def free(self) -> int:
        return self.info.free_capacity - self.sent_since_heartbeat


@dataclass
class Peers:
    """The live replicas (as their lease renewals recorded them) and a ChatService stub to each."""

    me: str
    graph: GraphClient
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic
    channel: Callable[[str], grpc.aio.Channel] = aio_channel
    _peers: dict[str, _Peer] = field(default_factory=dict)
    _read_at: float | None = None
    _stubs: dict[str, tuple[grpc.aio.Channel, chat_pb2_grpc.ChatServiceStub]] = field(default_factory=dict)

    async def refresh(self, *, force: bool = False) -> None:
        now = self.monotonic()
        if not force and self._read_at is not None and now - self._read_at < REFRESH_SECONDS:
            return
        infos = await self.graph.supervisors()
        fresh: dict[str, _Peer] = {}
        for info in infos:
            old = self._peers.get(info.supervisor_id)
            keep = old is not None and old.info.heartbeat_at == info.heartbeat_at
            fresh[info.supervisor_id] = _Peer(info, old.sent_since_heartbeat if keep and old else 0)
        self._peers = fresh
        self._read_at = now

    def stub(self, address: str) -> chat_pb2_grpc.ChatServiceStub:
        entry = self._stubs.get(address)
        if entry is None:
            ch = self.channel(address)
            entry = self._stubs[address] = (ch, chat_pb2_grpc.ChatServiceStub(ch))
        return entry[1]

    async def alone(self) -> bool:
        """No other live replica has advertised an address (or the list cannot be read): answer here."""
        try:
            await self.refresh()
        except errors.WgsError:
            return True
        return not any(p.info.supervisor_id != self.me and p.info.advertise_address for p in self._peers.values())

    async def place(self, my_free: int) -> tuple[str, chat_pb2_grpc.ChatServiceStub] | None:
        """The peer a new chat should go to (id, stub), or None to create it here."""
        try:
            await self.refresh()
        except errors.WgsError as exc:  # no list, no placement: create here
            log.warning("replica list unavailable, creating here: %s", exc.message)
            return None
        best: _Peer | None = None
        for peer in self._peers.values():
            if peer.info.supervisor_id == self.me or not peer.info.advertise_address:
                continue
            if peer.free > my_free and (best is None or peer.free > best.free):
                best = peer
        if best is None:
            return None
        best.sent_since_heartbeat += 1
        return best.info.supervisor_id, self.stub(best.info.advertise_address)

    async def owner(self, runtime: runtime_pb2.ChatRuntime) -> tuple[str, chat_pb2_grpc.ChatServiceStub] | None:
        """The live peer that owns the chat (id, stub), or None when this replica should answer:
        it owns the chat, or nobody does, or the owner's lease lapsed (it is taken over here)."""
        owner = runtime.supervisor_id
        if not owner or owner == self.me:
            return None
        expires = from_ts(runtime.lease_expires_at)
        if expires is None or expires <= self.now():
            return None
        peer = self._peers.get(owner)
        if peer is None or not peer.info.advertise_address:
            await self.refresh(force=True)
            peer = self._peers.get(owner)
        if peer is None or not peer.info.advertise_address:
            raise errors.Unavailable(
                f"chat is owned by supervisor {owner!r} (lease valid until "
                f"{expires.isoformat(timespec='seconds')}), which has not advertised an address; it is taken over "
                "when that lease lapses", retry_after=max(1.0, (expires - self.now()).total_seconds()))
        return owner, self.stub(peer.info.advertise_address)

    def unreachable(self, owner: str, runtime: runtime_pb2.ChatRuntime, exc: grpc.aio.AioRpcError
                    ) -> errors.Unavailable:
        """The error for a call whose owning replica could not be reached while its lease is valid."""
        expires = from_ts(runtime.lease_expires_at)
        until = expires.isoformat(timespec="seconds") if expires else "unknown"
        wait = max(1.0, (expires - self.now()).total_seconds()) if expires else 5.0
        peer = self._peers.get(owner)
        where = peer.info.advertise_address if peer is not None else "?"
        log.warning("owner %s of a chat unreachable at %s: %s", owner, where, exc.details(),
                    extra=fields(supervisor_id=owner, address=where))
        self._read_at = None  # re-read the list next time: it may have moved
        return errors.Unavailable(
            f"the chat's supervisor {owner!r} ({where}) cannot be reached ({exc.code().name}: {exc.details()}); "
            f"its lease is valid until {until}, after which another replica takes the chat over — retry then",
            retry_after=wait)

    async def close(self) -> None:
        for ch, _ in self._stubs.values():
            await ch.close()
        self._stubs.clear()
