"""Process entry point of the supervisor (`wgs serve supervisor`)."""

from __future__ import annotations

import grpc

from services.supervisor.clients import DispatchClient, GraphClient
from services.supervisor.lifecycle import Lifecycle
from services.supervisor.local_backend import LocalProcessBackend
from services.supervisor.peers import Peers, advertised
from services.supervisor.servicer import ChatServicer, SupervisorServicer
from services.supervisor.settings import SupervisorSettings
from wgs.common import auth
from wgs.common.clients import aio_channel
from wgs.common.server import Service, main_for
from wgs.common.settings import CommonSettings, target
from wgs.v1 import (
    chat_pb2_grpc,
    dispatch_pb2_grpc,
    graph_pb2_grpc,
    runtime_service_pb2_grpc,
    supervisor_pb2_grpc,
)

SERVICE_NAME = "wgs.v1.ChatService"
ADMIN_SERVICE_NAME = "wgs.v1.SupervisorService"


async def build(settings: CommonSettings) -> Service:
    """Read the settings now (bad values stop the process with exit 2); adopt chats before SERVING."""
    sup = SupervisorSettings.from_env(settings.state_dir)
    graph_channel = aio_channel(target("graph"))
    dispatch_channel = aio_channel(target("dispatch"))
    graph = GraphClient(graph_pb2_grpc.GraphServiceStub(graph_channel),  # type: ignore[arg-type]
                        runtime_service_pb2_grpc.RuntimeServiceStub(graph_channel),  # type: ignore[arg-type]
                        sup.supervisor_id)
    dispatch = DispatchClient(dispatch_pb2_grpc.DispatchServiceStub(dispatch_channel))  # type: ignore[arg-type]
    backend = LocalProcessBackend(sup.state_dir, sup.supervisor_id, max_log_bytes=sup.max_log_bytes,
                                  stop_grace=sup.stop_grace,
                                  warm_monitors=sup.max_concurrent_creates)  # one per create allowed at once
    secret = auth.stack_secret(sup.state_dir)

    def agent_credentials(chat_id: str, run_number: int) -> dict[str, str]:
        """The run's own token: its chat only, while this run lives (wgs.common.auth)."""
        if secret is None:  # WGS_AUTH=off
            return {}
        return {auth.TOKEN_VAR: auth.mint_agent_token(secret, chat_id, run_number)}

    lifecycle = Lifecycle(sup, graph, dispatch, backend, agent_credentials=agent_credentials)
    peers = Peers(sup.supervisor_id, graph, now=lifecycle.clock.now)

    def bound(address: str) -> None:
        lifecycle.advertise(advertised(sup.advertise_address, address))

    def register(server: grpc.aio.Server) -> None:
        chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(lifecycle, peers), server)
        supervisor_pb2_grpc.add_SupervisorServiceServicer_to_server(SupervisorServicer(lifecycle), server)

    async def stop() -> None:
        await lifecycle.close()
        await peers.close()
        await graph_channel.close()
        await dispatch_channel.close()

    return Service(name="supervisor", service_names=[SERVICE_NAME, ADMIN_SERVICE_NAME], register=register,
                   bound=bound, start=lifecycle.start, stop=stop, extra={"manager": lifecycle})


def main() -> int:
    return main_for("supervisor", build)
