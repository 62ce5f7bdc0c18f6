"""Process entry point of the dispatch service (`wgs serve dispatch`)."""

from __future__ import annotations

import grpc

from services.dispatch.config import store_from_env
from services.dispatch.servicer import DispatchServicer
from wgs.common.server import Service, main_for
from wgs.common.settings import CommonSettings
from wgs.v1 import dispatch_pb2_grpc

SERVICE_NAME = "wgs.v1.DispatchService"


async def build(settings: CommonSettings) -> Service:
    """Load the config now, so a bad config stops the process before it serves (ConfigError → exit 2)."""
    del settings  # the config path comes from WGS_CONFIG / WGS_STATE_DIR
    store = store_from_env()
    servicer = DispatchServicer(store)

    def register(server: grpc.aio.Server) -> None:
        dispatch_pb2_grpc.add_DispatchServiceServicer_to_server(servicer, server)

    return Service(name="dispatch", service_names=[SERVICE_NAME], register=register, extra={"config": store})


def main() -> int:
    return main_for("dispatch", build)
