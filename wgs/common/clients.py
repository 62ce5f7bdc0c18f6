"""gRPC channels and stubs for calling the wgs services, with credentials, deadlines and safe retries.

Every channel made here presents a token (`authorization: Bearer …` on each call) and uses TLS when
the WGS_TLS_* variables say so (wgs.common.tls). The token is, in order: the `token=` argument, the
process token (`set_process_token`: a service's own, derived from the stack secret at start), or
WGS_TOKEN / WGS_TOKEN_FILE (agents, users of the CLI). Without any, calls carry no credentials.

Retries (service config) apply only to idempotent methods; every call must still pass a deadline
(`timeout=`); `deadline()` gives the configured default.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import Any

import grpc

from wgs.common import auth, tls
from wgs.common.settings import rpc_timeout
from wgs.v1 import chat_pb2_grpc, dispatch_pb2_grpc, graph_pb2_grpc

IDEMPOTENT_METHODS = {
    # AppendMessage and CreateChatTask are idempotent by their request_id (the supervisor always sends
    # one); RecordRunStarted/Exited by the run number (a repeated record of the same end is a no-op).
    "wgs.v1.GraphService": ["GetTask", "ListTasks", "ListMessages", "AppendMessage"],
    "wgs.v1.RuntimeService": [
        "GetChatRecord", "ListChatRecords", "RenewLeases", "CreateChatTask", "RecordRunStarted", "RecordRunExited",
        "ListSupervisors",
    ],
    "wgs.v1.DispatchService": ["PlanSpawn"],
    "wgs.v1.ChatService": ["GetChat", "ListChats", "ListChatMessages"],
}


def _service_config() -> str:
    names = [{"service": svc, "method": m} for svc, methods in IDEMPOTENT_METHODS.items() for m in methods]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


# A channel whose server is down tries to reconnect after a backoff that grows 1.6x per failure up to
# 120 s (gRPC's default): after a 10 s graph outage the supervisor went on failing every call for ~6 s
# more with the graph serving again, longer the longer the outage. Our servers are a restart away
# (the stack keeper, kubelet), and a reconnect attempt costs little: try at least once a second.
RECONNECT_BACKOFF_MAX_MS = 1000

CHANNEL_OPTIONS = [
    ("grpc.service_config", _service_config()),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
]

_process_token: str | None = None


def set_process_token(token: str | None) -> None:
    """The token every channel of this process presents unless given one (a service's own)."""
    global _process_token
    _process_token = token


def call_token(token: str | None = None) -> str | None:
    """The token a new channel presents: `token`, else the process token, else WGS_TOKEN(_FILE)."""
    return token or _process_token or auth.env_token()


def deadline() -> float:
    return rpc_timeout()


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `token` (for callers that pass `metadata=` themselves)."""
    return ((auth.METADATA_KEY, f"{auth.SCHEME} {token}"),)


def _with_token(metadata: Any, token: str) -> list[tuple[str, Any]]:
    items = [(k, v) for k, v in (metadata or ()) if k.lower() != auth.METADATA_KEY]
    return [*items, *auth_metadata(token)]


# ---------------------------------------------------------------------------------------------
# asyncio channels


class _AioBearer:
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(d.method, d.timeout, grpc.aio.Metadata(*_with_token(d.metadata, self._token)),
                                          d.credentials, d.wait_for_ready)


# grpc.aio files each interceptor under the first call kind it implements: one class per kind.
class _AioBearerUnaryUnary(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioBearerUnaryStream(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioBearerStreamUnary(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AioBearerStreamStream(_AioBearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def _aio_interceptors(token: str) -> list[Any]:
    return [cls(token) for cls in (_AioBearerUnaryUnary, _AioBearerUnaryStream, _AioBearerStreamUnary,
                                   _AioBearerStreamStream)]


def aio_channel(target: str, *, token: str | None = None) -> grpc.aio.Channel:
    """An asyncio channel to a wgs service, with TLS per WGS_TLS_* and the token of `call_token`."""
    cfg = tls.TlsConfig.from_env()
    creds = tls.channel_credentials(cfg)
    options = [*CHANNEL_OPTIONS, *tls.channel_options(cfg)]
    chosen = call_token(token)
    interceptors = _aio_interceptors(chosen) if chosen else None
    if creds is not None:
        return grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


# ---------------------------------------------------------------------------------------------
# blocking channels


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _SyncBearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: Any) -> _CallDetails:
        return _CallDetails(d.method, d.timeout, _with_token(d.metadata, self._token), d.credentials,
                            getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


class _Channel(grpc.Channel):
    """A blocking channel with the bearer interceptor that still works as a context manager
    (grpc.intercept_channel's result does not)."""

    def __init__(self, inner: grpc.Channel, token: str) -> None:
        self._inner = inner
        self._intercepted = grpc.intercept_channel(inner, _SyncBearer(token))

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self._inner.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        self._inner.unsubscribe(callback)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.stream_stream(method, *args, **kwargs)

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sync_channel(target: str, *, token: str | None = None) -> grpc.Channel:
    """A blocking channel to a wgs service, with TLS per WGS_TLS_* and the token of `call_token`."""
    cfg = tls.TlsConfig.from_env()
    creds = tls.channel_credentials(cfg)
    options = [*CHANNEL_OPTIONS, *tls.channel_options(cfg)]
    if creds is not None:
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    chosen = call_token(token)
    return _Channel(channel, chosen) if chosen else channel


def graph_stub(channel: grpc.aio.Channel) -> graph_pb2_grpc.GraphServiceStub:
    return graph_pb2_grpc.GraphServiceStub(channel)


def dispatch_stub(channel: grpc.aio.Channel) -> dispatch_pb2_grpc.DispatchServiceStub:
    return dispatch_pb2_grpc.DispatchServiceStub(channel)


def chat_stub(channel: grpc.aio.Channel) -> chat_pb2_grpc.ChatServiceStub:
    return chat_pb2_grpc.ChatServiceStub(channel)
