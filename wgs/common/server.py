"""Bootstrap shared by the three services: grpc.aio server, health, reflection, errors, shutdown.

A service supplies a `Service` (its servicers plus start/stop hooks); `run_service` does the rest:
NOT_SERVING while starting and stopping, SERVING in between; SIGTERM/SIGINT stop accepting calls,
let in-flight calls finish within the grace period, run the service's stop hook and flush telemetry.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from wgs.common import telemetry
from wgs.common.errors import ConfigError, WgsError
from wgs.common.logs import fields, setup_logging
from wgs.common.settings import CommonSettings, parse_hostport

log = logging.getLogger("wgs.server")

Registrar = Callable[[grpc.aio.Server], None]


@dataclass
class Service:
    """What a service plugs into the bootstrap."""

    name: str  # "graph", "dispatch", "supervisor"
    service_names: list[str]  # full gRPC service names, e.g. "wgs.v1.GraphService"
    register: Registrar  # adds the servicers to the server
    start: Callable[[], Awaitable[None]] | None = None  # runs before SERVING (migrations, adoption)
    # runs once new calls are refused, before the grace period: end long-lived streams here
    drain: Callable[[], Awaitable[None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None  # runs after the server stopped
    extra: dict[str, Any] = field(default_factory=dict)


def _internal_message(service: str, exc: BaseException) -> str:
    trace_id = telemetry.current_trace_id()
    where = f" (trace {trace_id})" if trace_id else ""
    return f"internal error in the {service} service: {type(exc).__name__}; see its log{where}"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps WgsError to its status code with its message; anything else to INTERNAL, logged once."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def _abort(self, exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
        """End the call with the status for `exc` (re-raising aborts already under way)."""
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        if isinstance(exc, WgsError):
            details = exc.details()
            if details:  # e.g. google.rpc.BadRequest naming the field (grpc-status-details-bin)
                status = rpc_status.to_status(exc.to_status())
                await context.abort(exc.code, exc.message, trailing_metadata=status.trailing_metadata)
            await context.abort(exc.code, exc.message)
        log.exception("unhandled error in %s", method, extra=fields(method=method))
        await context.abort(grpc.StatusCode.INTERNAL, _internal_message(self.service, exc))

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(request, context)
                except Exception as exc:
                    await self._abort(exc, context, method)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
            # A streaming handler written as a coroutine that uses context.write() (for example the
            # stock health Watch): wrap it as a coroutine, not as a generator.
            inner_writer = handler.unary_stream

            async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
                try:
                    await inner_writer(request, context)
                except Exception as exc:
                    await self._abort(exc, context, method)

            return grpc.unary_stream_rpc_method_handler(
                writer,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except Exception as exc:
                    await self._abort(exc, context, method)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _write_address_file(path: str, address: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 from the start, like every stack file
    with os.fdopen(fd, "w") as fh:
        fh.write(address + "\n")
    tmp.replace(target)


async def run_service(service: Service, settings: CommonSettings) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(service.name)],
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 8 * 1024 * 1024)],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    names = [*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    for name in ["", *service.service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    host, _ = parse_hostport("listen", settings.listen)
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {settings.listen}: {exc} (is the port already in use?)") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {settings.listen} (is the port already in use?)")
    bound = f"{host}:{port}"
    await server.start()
    log.info("%s listening on %s (starting)", service.name, bound, extra=fields(address=bound))

    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)

    try:
        if service.start is not None:
            await service.start()
    except BaseException:
        await server.stop(0)
        raise
    for name in ["", *service.service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if settings.address_file:
        _write_address_file(settings.address_file, bound)
    log.info("%s serving on %s", service.name, bound, extra=fields(address=bound, pid=os.getpid()))

    await stop_event.wait()
    log.info("%s stopping: refusing new calls, grace %.1fs", service.name, settings.shutdown_grace)
    await health_servicer.enter_graceful_shutdown()
    stopping = asyncio.ensure_future(server.stop(settings.shutdown_grace))
    await asyncio.sleep(0)  # let stop() refuse new calls before streams are ended
    if service.drain is not None:
        try:
            await service.drain()
        except Exception:
            log.exception("error in %s drain hook", service.name)
    await stopping
    if service.stop is not None:
        try:
            await service.stop()
        except Exception:
            log.exception("error in %s stop hook", service.name)
    log.info("%s stopped", service.name)
    telemetry.shutdown_tracing()


def main_for(service_name: str, build: Callable[[CommonSettings], Awaitable[Service]]) -> int:
    """Process entry point: configure, build the service, serve. Exit 2 on bad configuration."""
    try:
        settings = CommonSettings.from_env(service_name)
    except ConfigError as exc:
        print(f"wgs {service_name}: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(service_name, settings.log_level, settings.log_format)
    telemetry.setup_tracing(service_name, settings.state_dir, instrument_grpc_server=True)

    async def _run() -> None:
        svc = await build(settings)
        await run_service(svc, settings)

    try:
        asyncio.run(_run())
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        print(f"wgs {service_name}: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
