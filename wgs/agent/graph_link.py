"""The agent's connection to the graph service: read the chat, follow it, append answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from wgs.agent.conversation import Msg
from wgs.agent.errors import EXIT_GRAPH, EXIT_USAGE, AgentFatal
from wgs.common.clients import aio_channel, deadline, graph_stub
from wgs.common.settings import env_float
from wgs.v1 import graph_pb2, graph_pb2_grpc

log = logging.getLogger("wgs.agent.graph")

# How long the graph may stay unreachable (calls retried, the watch re-opened, with backoff) before
# the agent gives up (exit 7): a graph restarting (the stack keeper, a rollout) is waited out.
GRAPH_OUTAGE_SECONDS = 60.0
# Codes that mean "the graph is not there right now" (down, restarting, frozen): worth waiting out.
OUTAGE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
T = TypeVar("T")


class GraphLink:
    def __init__(self, target: str, chat_id: str) -> None:
        self.target = target
        self.chat_id = chat_id
        self._channel = aio_channel(target)
        self._stub = graph_stub(self._channel)
        self.outage_seconds = env_float("WGS_AGENT_GRAPH_WAIT_SECONDS", GRAPH_OUTAGE_SECONDS, minimum=0.0)

    @property
    def stub(self) -> graph_pb2_grpc.GraphServiceAsyncStub:
        return self._stub  # type: ignore[return-value]

    async def close(self) -> None:
        await self._channel.close(grace=None)

    def _fatal(self, exc: grpc.aio.AioRpcError, what: str) -> AgentFatal:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return AgentFatal(EXIT_USAGE, f"chat {self.chat_id}: {exc.details()}")
        return AgentFatal(EXIT_GRAPH, f"graph service at {self.target} unreachable while {what}: "
                          f"{exc.code().name}: {exc.details()}")

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One idempotent call, tried again while the graph is unreachable, for up to
        `outage_seconds` (a graph restart is waited out); AgentFatal after that, or at once for any
        other error."""
        loop = asyncio.get_running_loop()
        since, delay = loop.time(), 0.2
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in OUTAGE_CODES or loop.time() - since + delay > self.outage_seconds:
                    raise self._fatal(exc, what) from None
                log.warning("graph unreachable while %s (%s); trying again in %.1fs", what, exc.code().name, delay)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    async def list_all(self) -> list[Msg]:
        """Every stored message of the chat, oldest first (paged)."""
        out: list[Msg] = []
        token = ""
        while True:
            req = graph_pb2.ListMessagesRequest(chat_id=self.chat_id, page_size=1000, page_token=token)
            resp = await self._call("reading the chat", lambda req=req: self._stub.ListMessages(  # type: ignore[misc]
                req, timeout=deadline()))
            out.extend(Msg.from_proto(m) for m in resp.messages)
            token = resp.next_page_token
            if not token:
                return out

    async def append(self, role: int, content: str, request_id: str) -> Msg:
        """Append a message; returns the stored one (the existing one if the request was answered).
        Tried again through a graph outage only with a request id (the graph then stores it once)."""
        req = graph_pb2.AppendMessageRequest(chat_id=self.chat_id, role=role, content=content,  # type: ignore[arg-type]
                                             request_id=request_id)
        if not request_id:
            try:
                resp = await self._stub.AppendMessage(req, timeout=deadline())
            except grpc.aio.AioRpcError as exc:
                raise self._fatal(exc, "appending a message") from None
        else:
            resp = await self._call("appending a message", lambda: self._stub.AppendMessage(req, timeout=deadline()))
        return Msg.from_proto(resp.message)

    async def watch(self, after_seq: int) -> AsyncIterator[Msg]:
        """Follow the chat from `after_seq`, re-opening the stream after a broken connection.

        Raises AgentFatal when the graph stays unreachable for `outage_seconds`.
        """
        loop = asyncio.get_running_loop()
        outage_since: float | None = None
        delay = 0.2
        while True:
            call = self._stub.WatchMessages(graph_pb2.WatchMessagesRequest(chat_id=self.chat_id, after_seq=after_seq))
            try:
                async for resp in call:
                    outage_since, delay = None, 0.2
                    if not resp.HasField("message"):
                        continue
                    m = Msg.from_proto(resp.message)
                    after_seq = max(after_seq, m.seq)
                    yield m
                # The server ended the stream (e.g. shutting down): re-open.
                err: grpc.aio.AioRpcError | None = None
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise self._fatal(exc, "following the chat") from None
                err = exc
            finally:
                call.cancel()
            now = loop.time()
            outage_since = outage_since or now
            if now - outage_since > self.outage_seconds:
                if err is not None:
                    raise self._fatal(err, "following the chat")
                raise AgentFatal(EXIT_GRAPH, f"graph service at {self.target} keeps closing the message stream")
            log.warning("message stream interrupted (%s); re-opening in %.1fs",
                        err.code().name if err else "closed", delay)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)
