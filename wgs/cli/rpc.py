"""Connections from the CLI to the services, turning every gRPC failure into one readable line.

Every connection presents the user's token (WGS_TOKEN / WGS_TOKEN_FILE, else one derived from the
stack secret in the state dir when this user can read it: the stack's owner) and uses TLS per
WGS_TLS_* (wgs.common.clients).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc

from wgs.cli.output import CliError, rpc_error_line
from wgs.cli.stackfile import resolve_state_dir, service_address
from wgs.common.auth import operator_token
from wgs.common.clients import sync_channel
from wgs.common.settings import rpc_timeout
from wgs.v1 import chat_pb2_grpc, graph_pb2_grpc

T = TypeVar("T")


class Conn:
    """A channel to one service plus what is needed to explain failures."""

    def __init__(self, service: str, address: str, channel: grpc.Channel, timeout: float) -> None:
        self.service = service
        self.address = address
        self.channel = channel
        self.timeout = timeout

    def error(self, exc: grpc.RpcError) -> CliError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return CliError(rpc_error_line(code, details or "", service=self.service, address=self.address,
                                       timeout=self.timeout))

    def call(self, fn: Callable[[], T]) -> T:
        """Run one call; a gRPC error becomes a CliError with one line."""
        try:
            return fn()
        except grpc.RpcError as exc:
            raise self.error(exc) from None

    def chat(self) -> chat_pb2_grpc.ChatServiceStub:
        return chat_pb2_grpc.ChatServiceStub(self.channel)

    def graph(self) -> graph_pb2_grpc.GraphServiceStub:
        return graph_pb2_grpc.GraphServiceStub(self.channel)


@contextmanager
def connect(service: str, state_dir: str | None = None, timeout: float | None = None) -> Iterator[Conn]:
    address = service_address(service, state_dir)
    channel = sync_channel(address, token=operator_token(resolve_state_dir(state_dir)))
    try:
        yield Conn(service, address, channel, timeout if timeout is not None else rpc_timeout())
    finally:
        channel.close()
