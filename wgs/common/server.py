"""Bootstrap shared by the three services: grpc.aio server, health, reflection, security, errors,
shutdown.

A service supplies a `Service` (its servicers plus start/stop hooks); `run_service` does the rest:
NOT_SERVING while starting and stopping, SERVING in between; SIGTERM/SIGINT stop accepting calls,
let in-flight calls finish within the grace period, run the service's stop hook and flush telemetry.

Every call passes two interceptors: ErrorInterceptor (outer: unparseable bytes and bad Timestamps →
INVALID_ARGUMENT, domain errors → their status, anything else → INTERNAL) and AuthInterceptor
(the token and the role table of wgs.common.auth). A service without a stack secret refuses to start
(unless WGS_AUTH=off); TLS comes from WGS_TLS_* (wgs.common.tls). docs/security.md has the model.
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
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from wgs.common import auth, clients, paths, telemetry, tls
from wgs.common.errors import ConfigError, InvalidArgument, PermissionDenied, Unauthenticated, WgsError
from wgs.common.logs import RateLimit, fields, setup_logging
from wgs.common.settings import CommonSettings, env_str, parse_hostport
from wgs.common.timeutil import check_timestamps

log = logging.getLogger("wgs.server")

Registrar = Callable[[grpc.aio.Server], None]
# An agent's run is live: (chat id, run number) → bool. Supplied by the graph (services/graph/authz.py).
AgentRunCheck = Callable[[str, int], Awaitable[bool]]


@dataclass
class Service:
    """What a service plugs into the bootstrap."""

    name: str  # "graph", "dispatch", "supervisor"
    service_names: list[str]  # full gRPC service names, e.g. "wgs.v1.GraphService"
    register: Registrar  # adds the servicers to the server
    start: Callable[[], Awaitable[None]] | None = None  # runs before SERVING (migrations, adoption)
    # told the address actually bound (host:port) before `start` (a supervisor advertises it to peers)
    bound: Callable[[str], None] | None = None
    # runs once new calls are refused, before the grace period: end long-lived streams here
    drain: Callable[[], Awaitable[None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None  # runs after the server stopped
    # Is an agent's run live? Without it agents are refused on this service (graph supplies it).
    agent_run_check: AgentRunCheck | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _internal_message(service: str, exc: BaseException) -> str:
    trace_id = telemetry.current_trace_id()
    where = f" (trace {trace_id})" if trace_id else ""
    return f"internal error in the {service} service: {type(exc).__name__}; see its log{where}"


# ---------------------------------------------------------------------------------------------
# Rebuilding method handlers (one place for the four call kinds and the two streaming styles)

Behavior = Callable[..., Any]
# Wraps a behavior: (inner behavior, streaming response?) → new behavior of the same style.
Wrap = Callable[[Behavior, bool], Behavior]


def _kind(handler: Any) -> tuple[str, Behavior]:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return kind, behavior
    raise ValueError("method handler without a behavior")  # pragma: no cover


def _rebuild(handler: Any, behavior: Behavior, deserializer: Callable[[bytes], Any] | None) -> Any:
    kind, _ = _kind(handler)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(behavior, request_deserializer=deserializer, response_serializer=handler.response_serializer)


def _wrap_behavior(behavior: Behavior, streams_responses: bool,
                   before: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
                   on_error: Callable[[Exception, grpc.aio.ServicerContext], Awaitable[None]]) -> Behavior:
    """`behavior` preceded by `before(request, context)` (which returns the request to pass on, or
    raises) and with every Exception handed to `on_error` (which ends the call with a status; for a
    unary response, what it returns is the call's response: None, discarded with a non-OK code)."""
    if streams_responses and inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                request = await before(request, context)
                async for item in behavior(request, context):
                    yield item
            except Exception as exc:
                await on_error(exc, context)

        return stream

    # Unary responses, or a streaming handler written as a coroutine that uses context.write()
    # (for example the stock health Watch): wrap it as a coroutine, not as a generator.
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = await before(request, context)
            return await behavior(request, context)
        except Exception as exc:
            return await on_error(exc, context)

    return call


class Unparseable:
    """What the request deserializer returns for bytes that are not a valid message (instead of
    raising, which grpc answers with UNKNOWN and a logged traceback)."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _message_type_name(deserializer: Callable[[bytes], Any]) -> str:
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(getattr(descriptor, "name", "request"))


def _safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = _message_type_name(deserializer)

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return Unparseable(type_name)

    return parse


async def _checked_requests(requests: AsyncIterator[Any], admit: Callable[[Any], Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield admit(request)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Clean rejections and errors for every method:

    - request bytes that do not parse → INVALID_ARGUMENT "cannot parse the <Type>" and one
      rate-limited WARNING line (never a traceback per request);
    - a request with an out-of-range Timestamp → INVALID_ARGUMENT naming the field;
    - WgsError → its status code with its message; anything else → INTERNAL, logged once.
    """

    def __init__(self, service: str, *, warn_interval: float = 60.0) -> None:
        self.service = service
        self._warnings = RateLimit(warn_interval)

    def _status(self, exc: Exception, method: str) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
        """The status for `exc`: code, message, trailing metadata (rich details, if any)."""
        if isinstance(exc, WgsError):
            if exc.details():  # e.g. google.rpc.BadRequest naming the field (grpc-status-details-bin)
                return exc.code, exc.message, tuple(rpc_status.to_status(exc.to_status()).trailing_metadata)
            return exc.code, exc.message, ()
        if type(exc) is NotImplementedError:  # a generated servicer base method (e.g. health List)
            return grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this server", ()
        log.exception("unhandled error in %s", method, extra=fields(method=method))
        return grpc.StatusCode.INTERNAL, _internal_message(self.service, exc), ()

    async def _abort(self, exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
        """End a streaming call with the status for `exc` (re-raising aborts already under way)."""
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        code, message, trailing = self._status(exc, method)
        await context.abort(code, message, trailing_metadata=trailing)

    def _answer(self, exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
        """End a unary-response call with the status for `exc` by setting it, not by raising: an
        exception would cost a formatted traceback in the tracing interceptor per refused call, the
        price of every RESOURCE_EXHAUSTED under overload. (grpc sends no message with a non-OK code.)"""
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        code, message, trailing = self._status(exc, method)
        if trailing:
            context.set_trailing_metadata(trailing)
        context.set_code(code)
        context.set_details(message)

    def _admit(self, request: Any, method: str, peer: str) -> Any:
        if isinstance(request, Unparseable):
            allowed, suppressed = self._warnings.allow("unparseable")
            if allowed:
                more = f" ({suppressed} more since the last such line)" if suppressed else ""
                log.warning("rejected an unparseable %s in %s from %s%s", request.type_name, method, peer, more,
                            extra=fields(method=method, peer=peer, suppressed=suppressed))
            raise InvalidArgument(f"cannot parse the {request.type_name}: the request bytes are not a valid "
                                  f"{request.type_name} message")
        if isinstance(request, Message):
            check_timestamps(request)
        return request

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        kind, behavior = _kind(handler)

        async def before(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if kind.startswith("stream_"):
                return _checked_requests(request, lambda r: self._admit(r, method, context.peer()))
            return self._admit(request, method, context.peer())

        streams = kind.endswith("_stream")

        async def on_error(exc: Exception, context: grpc.aio.ServicerContext) -> None:
            if streams:
                await self._abort(exc, context, method)
            else:
                self._answer(exc, context, method)

        wrapped = _wrap_behavior(behavior, streams, before, on_error)
        return _rebuild(handler, wrapped, _safe_deserializer(handler.request_deserializer))


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authentication (the bearer token) and authorization (wgs.common.auth.CALLS) of every call.

    Rejected calls are never parsed: UNAUTHENTICATED or PERMISSION_DENIED before the request is
    read. An agent's call is let through only after its request names its own chat and, when the
    service can tell (`agent_run_check`), its run is still live. Runs inside ErrorInterceptor, which
    turns the raised errors into statuses.
    """

    def __init__(self, service: str, server_auth: auth.ServerAuth, agent_run_check: AgentRunCheck | None = None,
                 *, warn_interval: float = 60.0) -> None:
        self.service = service
        self.auth = server_auth
        self.agent_run_check = agent_run_check
        self._warnings = RateLimit(warn_interval)

    def _warn(self, kind: str, method: str, message: str) -> None:
        allowed, suppressed = self._warnings.allow(kind)
        if allowed:
            more = f" ({suppressed} more since the last such line)" if suppressed else ""
            log.warning("rejected a call to %s: %s%s", method, message, more,
                        extra=fields(method=method, rejection=kind, suppressed=suppressed))

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        rule = auth.access_for(method)
        if rule is not None and rule.open:
            return await continuation(handler_call_details)
        try:
            who = self.auth.identify(handler_call_details.invocation_metadata)
            rule = auth.check_role(method, who)
        except (Unauthenticated, PermissionDenied) as exc:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            self._warn(exc.code.name.lower(), method, exc.message)
            return _rejecting(handler, exc)
        handler = await continuation(handler_call_details)
        if handler is None or who is None or rule is None or who.role != auth.AGENT or who.role in rule.roles:
            return handler
        return self._agent_checked(handler, method, who, rule)

    def _agent_checked(self, handler: Any, method: str, who: auth.Identity, rule: auth.Access) -> Any:
        kind, behavior = _kind(handler)
        if kind.startswith("stream_"):  # no agent rule on client-streaming calls: nothing to check against
            return _rejecting(handler, PermissionDenied(auth.deny_message(who, method, rule, "streaming requests")))

        async def before(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Unparseable):
                return request  # ErrorInterceptor answers it
            auth.check_agent_request(method, who, rule, request)
            if self.agent_run_check is None:
                raise PermissionDenied(auth.deny_message(
                    who, method, rule, f"the {self.service} service cannot verify agent runs"))
            if not await self.agent_run_check(who.chat_id, who.run):
                why = f"run #{who.run} of {who.chat_id} is not live (it exited or a newer run replaced it)"
                self._warn("stale_agent", method, why)
                raise PermissionDenied(auth.deny_message(who, method, rule, why))
            return request

        async def on_error(exc: Exception, context: grpc.aio.ServicerContext) -> None:
            raise exc  # ErrorInterceptor (outside) maps it

        return _rebuild(handler, _wrap_behavior(behavior, kind.endswith("_stream"), before, on_error),
                        handler.request_deserializer)


def _rejecting(handler: Any, exc: WgsError) -> Any:
    """A handler of the same kind that refuses the call with `exc` without reading the request.
    Streaming responses get an async generator: the OpenTelemetry interceptor outside iterates it."""
    kind, _ = _kind(handler)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise exc

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        raise exc
        yield  # pragma: no cover - makes this an async generator

    return _rebuild(handler, refuse_stream if kind.endswith("_stream") else refuse, None)


def _write_address_file(path: str, address: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 from the start, like every stack file
    with os.fdopen(fd, "w") as fh:
        fh.write(address + "\n")
    tmp.replace(target)


@dataclass(frozen=True)
class Security:
    """A service's authentication and transport settings, read once at start."""

    auth: auth.ServerAuth
    tls: tls.TlsConfig
    health_listen: str = ""

    @classmethod
    def from_env(cls, settings: CommonSettings) -> Security:
        """ConfigError (exit 2) without a stack secret (unless WGS_AUTH=off), on bad TLS files, or on
        a plaintext listener off loopback without WGS_ALLOW_INSECURE_LISTEN=1."""
        server_auth = auth.ServerAuth.from_env(settings.state_dir)
        tls_cfg = tls.TlsConfig.from_env()
        host, _ = parse_hostport("listen", settings.listen)
        tls.check_listen(f"WGS_{settings.service.upper()}_LISTEN", host, tls_cfg)
        health_listen = env_str(HEALTH_LISTEN_VAR, "")
        if health_listen:
            parse_hostport(HEALTH_LISTEN_VAR, health_listen)
        return cls(server_auth, tls_cfg, health_listen)


HEALTH_LISTEN_VAR = "WGS_HEALTH_LISTEN"
# The role each service presents on its own outgoing calls (derived from the stack secret).
OUTGOING_ROLE = {"supervisor": auth.SUPERVISOR}


def _bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        port = (server.add_secure_port(listen, credentials) if credentials is not None
                else server.add_insecure_port(listen))
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc} (is the port already in use?)") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {listen} (is the port already in use?)")
    return int(port)


SERVER_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 8 * 1024 * 1024)]


async def run_service(service: Service, settings: CommonSettings, security: Security | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    security = security or Security.from_env(settings)
    if security.auth.secret is None:
        log.warning("%s: authentication is OFF (%s=off): anyone who can reach %s may call every method",
                    service.name, auth.AUTH_VAR, settings.listen)
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(service.name), AuthInterceptor(service.name, security.auth,
                                                                      service.agent_run_check)],
        options=SERVER_OPTIONS,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    names = [*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    for name in ["", *service.service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    host, _ = parse_hostport("listen", settings.listen)
    credentials = tls.server_credentials(security.tls) if security.tls.serves_tls else None
    port = _bind(server, settings.listen, credentials)
    bound = f"{host}:{port}"
    probe_server: grpc.aio.Server | None = None
    if security.health_listen:
        # Kubernetes gRPC probes speak neither TLS nor tokens: a plaintext listener with health only.
        probe_server = grpc.aio.server(interceptors=[ErrorInterceptor(service.name)], options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probe_server)
        _bind(probe_server, security.health_listen, None)
    await server.start()
    if probe_server is not None:
        await probe_server.start()
    log.info("%s listening on %s (starting; %s, authentication %s)", service.name, bound, security.tls.describe(),
             "on" if security.auth.secret is not None else "OFF",
             extra=fields(address=bound, tls=security.tls.describe(), auth_source=security.auth.source,
                          health_listen=security.health_listen or None))

    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)

    try:
        if service.bound is not None:
            service.bound(bound)
        if service.start is not None:
            await service.start()
    except BaseException:
        await server.stop(0)
        if probe_server is not None:
            await probe_server.stop(0)
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
    if probe_server is not None:
        await probe_server.stop(0)
    if service.stop is not None:
        try:
            await service.stop()
        except Exception:
            log.exception("error in %s stop hook", service.name)
    log.info("%s stopped", service.name)
    telemetry.shutdown_tracing()


def _tighten_state_files(settings: CommonSettings) -> None:
    """Trace files hold every call's ids and attributes: 0600 in a 0700 directory."""
    traces = settings.state_dir / "traces"
    if traces.is_dir():
        paths.tighten(traces, paths.PRIVATE_DIR)
        for path in traces.glob("*.jsonl"):
            paths.tighten(path)


def main_for(service_name: str, build: Callable[[CommonSettings], Awaitable[Service]]) -> int:
    """Process entry point: configure, build the service, serve. Exit 2 on bad configuration."""
    try:
        settings = CommonSettings.from_env(service_name)
    except ConfigError as exc:
        print(f"wgs {service_name}: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(service_name, settings.log_level, settings.log_format)
    try:
        security = Security.from_env(settings)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        print(f"wgs {service_name}: configuration error: {exc}", file=sys.stderr)
        return 2
    _tighten_state_files(settings)
    telemetry.setup_tracing(service_name, settings.state_dir, instrument_grpc_server=True)
    role = OUTGOING_ROLE.get(service_name)
    if role is not None and security.auth.secret is not None:
        # Built before the service, so the channels it opens in build() present this token.
        clients.set_process_token(auth.mint_token(security.auth.secret, auth.Identity(role)))

    async def _run() -> None:
        svc = await build(settings)
        await run_service(svc, settings, security)

    try:
        asyncio.run(_run())
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        print(f"wgs {service_name}: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
