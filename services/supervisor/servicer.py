"""ChatService and SupervisorService over gRPC: thin layers over lifecycle.Lifecycle.

With several replicas, ChatService calls that act on a chat run where the chat's agent runs: a call
for a chat owned by a live peer is forwarded to it (services/supervisor/peers.py); new chats are
placed on the replica with the most free capacity. Everything else is answered here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.supervisor import views
from services.supervisor.lifecycle import Lifecycle
from services.supervisor.peers import FORWARDED_BY, Peers, forwarded_by
from wgs.common import validation
from wgs.common.clients import deadline
from wgs.common.logs import fields
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2, supervisor_pb2, supervisor_pb2_grpc

log = logging.getLogger("wgs.supervisor")
Stub = chat_pb2_grpc.ChatServiceStub
Route = tuple[str, Stub, runtime_pb2.ChatRuntime]  # owner id, its stub, the record the choice was made on

_UNREACHABLE_HINTS = ("connect", "Connection refused", "Socket closed", "Connection reset", "unreachable")


def _unreachable(exc: grpc.aio.AioRpcError) -> bool:
    """The owner did not answer at all (as opposed to answering with an error of its own)."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(h in (exc.details() or "") for h in _UNREACHABLE_HINTS)


def _trailers(exc: grpc.aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    """The owner's trailing metadata (its structured error details with it), as abort() takes it."""
    return tuple((key, value) for key, value in (exc.trailing_metadata() or ()))


def _hop_timeout(context: grpc.aio.ServicerContext, *, stream: bool = False) -> float | None:
    """The forwarded call's deadline: the caller's, less a margin to explain a silent owner in time."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None if stream else deadline()
    return max(0.05, remaining - min(1.0, remaining * 0.1))


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, lifecycle: Lifecycle, peers: Peers | None = None) -> None:
        self.m = lifecycle
        self.peers = peers

    # -- routing ---------------------------------------------------------------------------

    async def _route(self, chat_id: str, context: grpc.aio.ServicerContext) -> Route | None:
        """The live peer owning the chat, or None to answer here."""
        if self.peers is None or forwarded_by(context) or self.m.holds(chat_id):
            return None
        validation.chat_id(chat_id)
        if await self.peers.alone():
            return None
        rec = await self.m.graph.record(chat_id)
        found = await self.peers.owner(rec.runtime)
        return (found[0], found[1], rec.runtime) if found is not None else None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((FORWARDED_BY, self.m.me),)

    async def _forward(self, route: Route, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call: Callable[..., Awaitable[Any]] = getattr(route[1], method)
        try:
            return await call(request, timeout=_hop_timeout(context), metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            await self._relay(exc, route, context)

    async def _relay(self, exc: grpc.aio.AioRpcError, route: Route, context: grpc.aio.ServicerContext) -> None:
        """End this call as the owner ended the forwarded one (code, message, details kept)."""
        assert self.peers is not None
        if _unreachable(exc):
            raise self.peers.unreachable(route[0], route[2], exc) from None
        await context.abort(exc.code(), exc.details() or "", _trailers(exc))

    async def _forward_stream(self, route: Route, method: str, request: Any,
                              context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = getattr(route[1], method)(request, timeout=_hop_timeout(context, stream=True),
                                         metadata=self._metadata())
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            await self._relay(exc, route, context)
        finally:
            call.cancel()

    # -- methods ---------------------------------------------------------------------------

    async def CreateChat(self, request: chat_pb2.CreateChatRequest,
                         context: grpc.aio.ServicerContext) -> chat_pb2.CreateChatResponse:
        if self.peers is not None and not forwarded_by(context):
            placed = await self.peers.place(self.m.capacity().free)
            if placed is not None:
                peer_id, stub = placed
                if not request.request_id:  # so a retry here after a lost answer cannot make a second chat
                    request.request_id = f"create-{uuid.uuid4().hex}"
                try:
                    resp: chat_pb2.CreateChatResponse = await stub.CreateChat(
                        request, timeout=_hop_timeout(context), metadata=self._metadata())
                    return resp
                except grpc.aio.AioRpcError as exc:
                    # Unreachable, or full since it last reported its room: create here if we can.
                    if not _unreachable(exc) and exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        await context.abort(exc.code(), exc.details() or "", _trailers(exc))
                    log.warning("placement: replica %s could not take the chat (%s); creating it here", peer_id,
                                exc.details() or exc.code().name, extra=fields(supervisor_id=peer_id))
        return await self.m.create_chat(request, time_remaining=context.time_remaining())

    async def GetChat(self, request: chat_pb2.GetChatRequest,
                      context: grpc.aio.ServicerContext) -> chat_pb2.GetChatResponse:
        route = await self._route(request.chat_id, context)
        if route is not None and views.run_is_live(route[2]):  # its live stderr tail is on the owner's host
            try:
                resp: chat_pb2.GetChatResponse = await route[1].GetChat(
                    request, timeout=_hop_timeout(context), metadata=self._metadata())
                return resp
            except grpc.aio.AioRpcError as exc:
                if not _unreachable(exc):
                    await context.abort(exc.code(), exc.details() or "", _trailers(exc))
                # A read needs no owner: answer from the record (the tail kept with it).
        return chat_pb2.GetChatResponse(chat=await self.m.views.get_chat(request.chat_id))

    async def ListChats(self, request: chat_pb2.ListChatsRequest,
                        context: grpc.aio.ServicerContext) -> chat_pb2.ListChatsResponse:
        return await self.m.views.list_chats(request)

    async def SendMessage(self, request: chat_pb2.SendMessageRequest,
                          context: grpc.aio.ServicerContext) -> chat_pb2.SendMessageResponse:
        if (route := await self._route(request.chat_id, context)) is not None:
            resp: chat_pb2.SendMessageResponse = await self._forward(route, "SendMessage", request, context)
            return resp
        return await self.m.send_message(request)

    async def ListChatMessages(self, request: chat_pb2.ListChatMessagesRequest,
                               context: grpc.aio.ServicerContext) -> chat_pb2.ListChatMessagesResponse:
        return await self.m.views.list_messages(request)

    async def WatchChatMessages(self, request: chat_pb2.WatchChatMessagesRequest,
                                context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[chat_pb2.WatchChatMessagesResponse]:
        async for item in self.m.views.watch_messages(request):
            yield item

    async def StopChat(self, request: chat_pb2.StopChatRequest,
                       context: grpc.aio.ServicerContext) -> chat_pb2.StopChatResponse:
        if (route := await self._route(request.chat_id, context)) is not None:
            resp: chat_pb2.StopChatResponse = await self._forward(route, "StopChat", request, context)
            return resp
        return chat_pb2.StopChatResponse(chat=await self.m.stop_chat(request.chat_id))

    async def DeleteChat(self, request: chat_pb2.DeleteChatRequest,
                         context: grpc.aio.ServicerContext) -> chat_pb2.DeleteChatResponse:
        if (route := await self._route(request.chat_id, context)) is not None:
            resp: chat_pb2.DeleteChatResponse = await self._forward(route, "DeleteChat", request, context)
            return resp
        return chat_pb2.DeleteChatResponse(chat=await self.m.delete_chat(request.chat_id))

    async def ArchiveChat(self, request: chat_pb2.ArchiveChatRequest,
                          context: grpc.aio.ServicerContext) -> chat_pb2.ArchiveChatResponse:
        if (route := await self._route(request.chat_id, context)) is not None:
            resp: chat_pb2.ArchiveChatResponse = await self._forward(route, "ArchiveChat", request, context)
            return resp
        return chat_pb2.ArchiveChatResponse(chat=await self.m.archive_chat(request.chat_id))

    async def InterruptChat(self, request: chat_pb2.InterruptChatRequest,
                            context: grpc.aio.ServicerContext) -> chat_pb2.InterruptChatResponse:
        if (route := await self._route(request.chat_id, context)) is not None:
            resp: chat_pb2.InterruptChatResponse = await self._forward(route, "InterruptChat", request, context)
            return resp
        return await self.m.interrupt_chat(request.chat_id)

    async def RestartChat(self, request: chat_pb2.RestartChatRequest,
                          context: grpc.aio.ServicerContext) -> chat_pb2.RestartChatResponse:
        if (route := await self._route(request.chat_id, context)) is not None:
            resp: chat_pb2.RestartChatResponse = await self._forward(route, "RestartChat", request, context)
            return resp
        return chat_pb2.RestartChatResponse(chat=await self.m.restart_chat(request.chat_id))

    async def WatchChat(self, request: chat_pb2.WatchChatRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[chat_pb2.WatchChatResponse]:
        async for chat in self.m.views.watch_chat(request.chat_id):
            yield chat_pb2.WatchChatResponse(chat=chat)

    async def StreamChatLog(self, request: chat_pb2.StreamChatLogRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[chat_pb2.StreamChatLogResponse]:
        if (route := await self._route(request.chat_id, context)) is not None:  # the run files are on its disk
            async for forwarded in self._forward_stream(route, "StreamChatLog", request, context):
                yield forwarded
            return
        async for item in self.m.views.stream_log(request):
            yield item


class SupervisorServicer(supervisor_pb2_grpc.SupervisorServiceServicer):
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.m = lifecycle

    async def StopAgents(self, request: supervisor_pb2.StopAgentsRequest,
                         context: grpc.aio.ServicerContext) -> supervisor_pb2.StopAgentsResponse:
        return supervisor_pb2.StopAgentsResponse(stopped=await self.m.stop_agents(request.reason))

    async def ListReplicas(self, request: supervisor_pb2.ListReplicasRequest,
                           context: grpc.aio.ServicerContext) -> supervisor_pb2.ListReplicasResponse:
        replicas = await self.m.graph.supervisors(include_expired=request.include_expired)
        return supervisor_pb2.ListReplicasResponse(replicas=replicas, answered_by=self.m.me)
