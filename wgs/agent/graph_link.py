"""The agent's connection to the graph service: read the chat, follow it, append answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from wgs.agent.conversation import Msg
from wgs.agent.errors import EXIT_GRAPH, EXIT_USAGE, AgentFatal
from wgs.common.clients import aio_channel, deadline, graph_stub
from wgs.v1 import graph_pb2, graph_pb2_grpc

log = logging.getLogger("wgs.agent.graph")

# How long the graph may stay unreachable (watch re-opened with backoff) before the agent gives up.
GRAPH_OUTAGE_SECONDS = 60.0


class GraphLink:
    def __init__(self, target: str, chat_id: str) -> None:
        self.target = target
        self.chat_id = chat_id
        self._channel = aio_channel(target)
        self._stub = graph_stub(self._channel)

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

    async def list_all(self) -> list[Msg]:
        """Every stored message of the chat, oldest first (paged)."""
        out: list[Msg] = []
        token = ""
        while True:
            try:
                resp = await self._stub.ListMessages(
                    graph_pb2.ListMessagesRequest(chat_id=self.chat_id, page_size=1000, page_token=token),
                    timeout=deadline())
            except grpc.aio.AioRpcError as exc:
                raise self._fatal(exc, "reading the chat") from None
            out.extend(Msg.from_proto(m) for m in resp.messages)
            token = resp.next_page_token
            if not token:
                return out

    async def append(self, role: int, content: str, request_id: str) -> Msg:
        """Append a message; returns the stored one (the existing one if the request was answered)."""
        try:
            resp = await self._stub.AppendMessage(
                graph_pb2.AppendMessageRequest(chat_id=self.chat_id, role=role, content=content,  # type: ignore[arg-type]
                                               request_id=request_id),
                timeout=deadline())
        except grpc.aio.AioRpcError as exc:
            raise self._fatal(exc, "appending a message") from None
        return Msg.from_proto(resp.message)

    async def watch(self, after_seq: int) -> AsyncIterator[Msg]:
        """Follow the chat from `after_seq`, re-opening the stream after a broken connection.

        Raises AgentFatal when the graph stays unreachable for GRAPH_OUTAGE_SECONDS.
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
            if now - outage_since > GRAPH_OUTAGE_SECONDS:
                if err is not None:
                    raise self._fatal(err, "following the chat")
                raise AgentFatal(EXIT_GRAPH, f"graph service at {self.target} keeps closing the message stream")
            log.warning("message stream interrupted (%s); re-opening in %.1fs",
                        err.code().name if err else "closed", delay)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)
