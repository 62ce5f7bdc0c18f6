"""Process entry point of the supervisor (`wgs serve supervisor`)."""

from __future__ import annotations

import grpc

from services.supervisor.chats import ChatManager, SupervisorSettings
from services.supervisor.servicer import ChatServicer
from wgs.common.clients import aio_channel, dispatch_stub, graph_stub
from wgs.common.server import Service, main_for
from wgs.common.settings import CommonSettings, target
from wgs.v1 import chat_pb2_grpc

SERVICE_NAME = "wgs.v1.ChatService"


async def build(settings: CommonSettings) -> Service:
    """Read the settings now (bad values stop the process with exit 2); adopt chats before SERVING."""
    sup = SupervisorSettings.from_env(settings.state_dir)
    graph_channel = aio_channel(target("graph"))
    dispatch_channel = aio_channel(target("dispatch"))
    manager = ChatManager(sup, graph_stub(graph_channel), dispatch_stub(dispatch_channel))
    servicer = ChatServicer(manager)

    def register(server: grpc.aio.Server) -> None:
        chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)

    async def stop() -> None:
        await manager.close()
        await graph_channel.close()
        await dispatch_channel.close()

    return Service(name="supervisor", service_names=[SERVICE_NAME], register=register, start=manager.start,
                   stop=stop, extra={"manager": manager})


def main() -> int:
    return main_for("supervisor", build)
