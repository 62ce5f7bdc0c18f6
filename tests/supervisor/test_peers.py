"""Placement and owner lookup (services/supervisor/peers.py) against the real graph records, in-process.

Replicas announce themselves as they do in production: by renewing their leases with their
address and capacity (RuntimeService.RenewLeases); the peer list is what the graph then says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from services.supervisor.clients import GraphClient
from services.supervisor.peers import Peers, advertised
from tests.supervisor.inprocess import DirectStub, World, make_world
from wgs.common import errors
from wgs.v1 import runtime_pb2
from wgs.v1 import runtime_service_pb2 as rs


class _Channel:
    """Stands in for a channel to a peer: nothing is called through it here (no network)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def unary_unary(self, *a: object, **kw: object) -> None:
        return None

    unary_stream = stream_unary = stream_stream = unary_unary

    async def close(self) -> None:
        pass


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path)
    yield w
    await w.store.close()


def peers_for(world: World, me: str) -> tuple[Peers, list[str]]:
    opened: list[str] = []

    def channel(address: str) -> grpc.aio.Channel:
        opened.append(address)
        return _Channel(address)  # type: ignore[return-value]

    graph = GraphClient(DirectStub(object()), world.graph_runtime, me)  # type: ignore[arg-type]
    clock = {"t": 0.0}
    peers = Peers(me, graph, now=world.clock.now, monotonic=lambda: clock["t"], channel=channel)
    return peers, opened


async def announce(world: World, sid: str, free: int, address: str | None = None) -> None:
    await world.records.renew_leases(rs.RenewLeasesRequest(
        supervisor_id=sid, lease_seconds=30, advertise_address=address if address is not None else f"{sid}:50053",
        free_capacity=free, max_live_chats=100))


async def test_a_new_chat_goes_to_the_replica_with_the_most_free_capacity(world: World) -> None:
    await announce(world, "sup-a", 10)
    await announce(world, "sup-b", 30)
    await announce(world, "sup-c", 20)
    peers, opened = peers_for(world, "sup-a")
    placed = [await peers.place(my_free=10) for _ in range(12)]
    names = [p[0] if p else "here" for p in placed]
    # sup-b until it is down to sup-c's room, then both in turn, until they are down to ours; ties stay here
    assert names[:10] == ["sup-b"] * 10
    assert sorted(names[10:12]) == ["sup-b", "sup-c"]
    assert set(opened) == {"sup-b:50053", "sup-c:50053"}  # one channel per peer, reused


async def test_ties_and_a_full_cluster_stay_here(world: World) -> None:
    await announce(world, "sup-a", 5)
    await announce(world, "sup-b", 5)
    await announce(world, "sup-c", 9, address="")  # no address: cannot be reached, never chosen
    peers, _ = peers_for(world, "sup-a")
    assert await peers.place(my_free=5) is None
    assert await peers.place(my_free=0) is not None  # we are full: the peer with room takes it


async def test_the_owner_is_looked_up_only_while_its_lease_holds(world: World) -> None:
    await announce(world, "sup-b", 5)
    peers, _ = peers_for(world, "sup-a")
    rt = runtime_pb2.ChatRuntime(supervisor_id="sup-b")
    rt.lease_expires_at.FromDatetime(world.clock.now() + timedelta(seconds=20))
    found = await peers.owner(rt)
    assert found is not None and found[0] == "sup-b"
    assert await peers.owner(runtime_pb2.ChatRuntime(supervisor_id="sup-a")) is None  # ours
    rt.lease_expires_at.FromDatetime(world.clock.now() - timedelta(seconds=1))
    assert await peers.owner(rt) is None  # lapsed: this replica takes it over instead
    ghost = runtime_pb2.ChatRuntime(supervisor_id="sup-x")  # valid lease, but never announced an address
    ghost.lease_expires_at.FromDatetime(world.clock.now() + timedelta(seconds=20))
    with pytest.raises(errors.Unavailable, match="has not advertised an address"):
        await peers.owner(ghost)


def test_the_advertised_address_is_reachable_by_peers() -> None:
    assert advertised("", "127.0.0.1:43121") == "127.0.0.1:43121"  # the port actually bound
    assert advertised("wgs-supervisor-1.wgs-supervisor:50053", "0.0.0.0:50053") == \
        "wgs-supervisor-1.wgs-supervisor:50053"
    host = advertised("", "0.0.0.0:50053")
    assert not host.startswith("0.0.0.0") and host.endswith(":50053")  # a wildcard is not an address
