"""ChatService and SupervisorService over gRPC: thin layers over lifecycle.Lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.supervisor.lifecycle import Lifecycle
from wgs.v1 import chat_pb2, chat_pb2_grpc, supervisor_pb2, supervisor_pb2_grpc


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.m = lifecycle

    async def CreateChat(self, request: chat_pb2.CreateChatRequest,
                         context: grpc.aio.ServicerContext) -> chat_pb2.CreateChatResponse:
        return await self.m.create_chat(request, time_remaining=context.time_remaining())

    async def GetChat(self, request: chat_pb2.GetChatRequest,
                      context: grpc.aio.ServicerContext) -> chat_pb2.GetChatResponse:
        return chat_pb2.GetChatResponse(chat=await self.m.get_chat(request.chat_id))

    async def ListChats(self, request: chat_pb2.ListChatsRequest,
                        context: grpc.aio.ServicerContext) -> chat_pb2.ListChatsResponse:
        return await self.m.list_chats(request)

    async def SendMessage(self, request: chat_pb2.SendMessageRequest,
                          context: grpc.aio.ServicerContext) -> chat_pb2.SendMessageResponse:
        return await self.m.send_message(request)

    async def ListChatMessages(self, request: chat_pb2.ListChatMessagesRequest,
                               context: grpc.aio.ServicerContext) -> chat_pb2.ListChatMessagesResponse:
        return await self.m.list_messages(request)

    async def WatchChatMessages(self, request: chat_pb2.WatchChatMessagesRequest,
                                context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[chat_pb2.WatchChatMessagesResponse]:
        async for item in self.m.watch_messages(request):
            yield item

    async def StopChat(self, request: chat_pb2.StopChatRequest,
                       context: grpc.aio.ServicerContext) -> chat_pb2.StopChatResponse:
        return chat_pb2.StopChatResponse(chat=await self.m.stop_chat(request.chat_id))

    async def DeleteChat(self, request: chat_pb2.DeleteChatRequest,
                         context: grpc.aio.ServicerContext) -> chat_pb2.DeleteChatResponse:
        return chat_pb2.DeleteChatResponse(chat=await self.m.delete_chat(request.chat_id))

    async def ArchiveChat(self, request: chat_pb2.ArchiveChatRequest,
                          context: grpc.aio.ServicerContext) -> chat_pb2.ArchiveChatResponse:
        return chat_pb2.ArchiveChatResponse(chat=await self.m.archive_chat(request.chat_id))

    async def InterruptChat(self, request: chat_pb2.InterruptChatRequest,
                            context: grpc.aio.ServicerContext) -> chat_pb2.InterruptChatResponse:
        return await self.m.interrupt_chat(request.chat_id)

    async def RestartChat(self, request: chat_pb2.RestartChatRequest,
                          context: grpc.aio.ServicerContext) -> chat_pb2.RestartChatResponse:
        return chat_pb2.RestartChatResponse(chat=await self.m.restart_chat(request.chat_id))

    async def WatchChat(self, request: chat_pb2.WatchChatRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[chat_pb2.WatchChatResponse]:
        async for chat in self.m.watch_chat(request.chat_id):
            yield chat_pb2.WatchChatResponse(chat=chat)

    async def StreamChatLog(self, request: chat_pb2.StreamChatLogRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[chat_pb2.StreamChatLogResponse]:
        async for item in self.m.stream_log(request):
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
