"""The error interceptor every service uses: domain errors keep their status and words; anything
unexpected becomes INTERNAL with a readable message (never a traceback), for unary and streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from wgs.common.errors import NotFound
from wgs.common.server import ErrorInterceptor

SERVICE = "test.Svc"


def _handlers() -> grpc.GenericRpcHandler:
    async def not_found(request: bytes, context: Any) -> bytes:
        raise NotFound("chat .chat-9 does not exist")

    async def crash(request: bytes, context: Any) -> bytes:
        raise KeyError("secret-internal-detail")

    async def stream_crash(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        raise RuntimeError("boom")

    async def writer_not_found(request: bytes, context: Any) -> None:
        await context.write(b"first")
        raise NotFound("gone")

    ident = {"request_deserializer": None, "response_serializer": None}
    return grpc.method_handlers_generic_handler(SERVICE, {
        "NotFound": grpc.unary_unary_rpc_method_handler(not_found, **ident),
        "Crash": grpc.unary_unary_rpc_method_handler(crash, **ident),
        "StreamCrash": grpc.unary_stream_rpc_method_handler(stream_crash, **ident),
        "WriterNotFound": grpc.unary_stream_rpc_method_handler(writer_not_found, **ident),
    })


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor("test")])
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


async def test_domain_error_keeps_its_status_and_message(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/{SERVICE}/NotFound")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "chat .chat-9 does not exist"


async def test_unexpected_error_is_internal_and_readable(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/{SERVICE}/Crash")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    details = err.value.details() or ""
    assert details.startswith("internal error in the test service: KeyError; see its log")
    assert "Traceback" not in details and "secret-internal-detail" not in details


async def test_streams_end_with_the_mapped_status(channel: grpc.aio.Channel) -> None:
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for item in channel.unary_stream(f"/{SERVICE}/StreamCrash")(b"", timeout=5):
            got.append(item)
    assert got == [b"first"] and err.value.code() == grpc.StatusCode.INTERNAL
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for item in channel.unary_stream(f"/{SERVICE}/WriterNotFound")(b"", timeout=5):
            got.append(item)
    assert got == [b"first"] and err.value.code() == grpc.StatusCode.NOT_FOUND
