"""Entry point of the graph service (`wgs serve graph`)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.graph import db, migrate, pgnotify
from services.graph.authz import GraphAuthz
from services.graph.records import ChatRecords
from services.graph.servicer import GraphServicer, RuntimeServicer
from services.graph.store import GraphStore
from wgs.common.server import Service, main_for
from wgs.common.settings import CommonSettings, env_str
from wgs.v1 import graph_pb2, graph_pb2_grpc, runtime_service_pb2, runtime_service_pb2_grpc

log = logging.getLogger("wgs.graph")

SERVICE_NAME = graph_pb2.DESCRIPTOR.services_by_name["GraphService"].full_name
RUNTIME_SERVICE_NAME = runtime_service_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name


async def build(settings: CommonSettings) -> Service:
    url = db.database_url(settings.state_dir, env_str(db.DATABASE_URL_VAR, ""))
    engine = db.create_engine(url)
    store = GraphStore(engine)
    records = ChatRecords(store)
    notifier: pgnotify.PgNotifier | None = None

    def register(server: grpc.aio.Server) -> None:
        graph_pb2_grpc.add_GraphServiceServicer_to_server(GraphServicer(store), server)
        runtime_service_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(records), server)

    async def start() -> None:
        # Schema first: the service reports SERVING only once the database is at head.
        await asyncio.to_thread(migrate.upgrade, engine)
        log.info("graph database ready (%s, revision %s)", url.render_as_string(hide_password=True),
                 migrate.head_revision())
        # Other graph replicas on the same PostgreSQL database wake this one's watchers (and back).
        nonlocal notifier
        notifier = await pgnotify.start_for(url, store.fanout)

    async def drain() -> None:
        # WatchMessages streams never end by themselves: end them at once with UNAVAILABLE
        # ("reconnect with after_seq=N") instead of holding the whole grace period.
        store.begin_shutdown()

    async def stop() -> None:
        if notifier is not None:
            await notifier.close()
        await store.close()

    return Service(name="graph", service_names=[SERVICE_NAME, RUNTIME_SERVICE_NAME], register=register, start=start,
                   drain=drain, stop=stop, agent_run_check=GraphAuthz(store).run_is_live,
                   extra={"store": store, "records": records})


def main() -> int:
    return main_for("graph", build)
