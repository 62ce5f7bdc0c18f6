"""Thin gRPC layer of the graph service: every method forwards to GraphStore.

Errors are wgs.common.errors exceptions raised by the store; the server interceptor maps them
to status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from services.graph.store import GraphStore
from wgs.common import attributes as attrs
from wgs.v1 import graph_pb2, graph_pb2_grpc

_SPAN_FIELDS = {"chat_id": attrs.CHAT_ID, "id": attrs.TASK_ID, "supervisor_id": attrs.SUPERVISOR_ID}


def _annotate(request: Any) -> None:
    """Put the ids a request names on the server span, so traces can be searched by chat."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    names = request.DESCRIPTOR.fields_by_name
    for field, attribute in _SPAN_FIELDS.items():
        if field in names and getattr(request, field):
            span.set_attribute(attribute, str(getattr(request, field))[:200])


class GraphServicer(graph_pb2_grpc.GraphServiceServicer):
    def __init__(self, store: GraphStore) -> None:
        self.store = store

    async def CreateTask(self, request: graph_pb2.CreateTaskRequest,
                         context: grpc.aio.ServicerContext) -> graph_pb2.CreateTaskResponse:
        _annotate(request)
        return await self.store.create_task(request)

    async def GetTask(self, request: graph_pb2.GetTaskRequest,
                      context: grpc.aio.ServicerContext) -> graph_pb2.GetTaskResponse:
        _annotate(request)
        return await self.store.get_task(request)

    async def ListTasks(self, request: graph_pb2.ListTasksRequest,
                        context: grpc.aio.ServicerContext) -> graph_pb2.ListTasksResponse:
        _annotate(request)
        return await self.store.list_tasks(request)

    async def UpdateTask(self, request: graph_pb2.UpdateTaskRequest,
                         context: grpc.aio.ServicerContext) -> graph_pb2.UpdateTaskResponse:
        _annotate(request)
        return await self.store.update_task(request)

    async def AppendTaskLog(self, request: graph_pb2.AppendTaskLogRequest,
                            context: grpc.aio.ServicerContext) -> graph_pb2.AppendTaskLogResponse:
        _annotate(request)
        return await self.store.append_task_log(request)

    async def CreateChatTask(self, request: graph_pb2.CreateChatTaskRequest,
                             context: grpc.aio.ServicerContext) -> graph_pb2.CreateChatTaskResponse:
        _annotate(request)
        return await self.store.create_chat_task(request)

    async def GetChatRecord(self, request: graph_pb2.GetChatRecordRequest,
                            context: grpc.aio.ServicerContext) -> graph_pb2.GetChatRecordResponse:
        _annotate(request)
        return await self.store.get_chat_record(request)

    async def ListChatRecords(self, request: graph_pb2.ListChatRecordsRequest,
                              context: grpc.aio.ServicerContext) -> graph_pb2.ListChatRecordsResponse:
        _annotate(request)
        return await self.store.list_chat_records(request)

    async def AppendMessage(self, request: graph_pb2.AppendMessageRequest,
                            context: grpc.aio.ServicerContext) -> graph_pb2.AppendMessageResponse:
        _annotate(request)
        return await self.store.append_message(request)

    async def ListMessages(self, request: graph_pb2.ListMessagesRequest,
                           context: grpc.aio.ServicerContext) -> graph_pb2.ListMessagesResponse:
        _annotate(request)
        return await self.store.list_messages(request)

    async def WatchMessages(self, request: graph_pb2.WatchMessagesRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[graph_pb2.WatchMessagesResponse]:
        _annotate(request)
        async for message in self.store.watch_messages(request):
            yield graph_pb2.WatchMessagesResponse(message=message)

    async def RecordRunStarted(self, request: graph_pb2.RecordRunStartedRequest,
                               context: grpc.aio.ServicerContext) -> graph_pb2.RecordRunStartedResponse:
        _annotate(request)
        return await self.store.record_run_started(request)

    async def RecordRunExited(self, request: graph_pb2.RecordRunExitedRequest,
                              context: grpc.aio.ServicerContext) -> graph_pb2.RecordRunExitedResponse:
        _annotate(request)
        return await self.store.record_run_exited(request)

    async def UpdateChatRuntime(self, request: graph_pb2.UpdateChatRuntimeRequest,
                                context: grpc.aio.ServicerContext) -> graph_pb2.UpdateChatRuntimeResponse:
        _annotate(request)
        return await self.store.update_chat_runtime(request)

    async def RenewLeases(self, request: graph_pb2.RenewLeasesRequest,
                          context: grpc.aio.ServicerContext) -> graph_pb2.RenewLeasesResponse:
        _annotate(request)
        return await self.store.renew_leases(request)

    async def ClaimChat(self, request: graph_pb2.ClaimChatRequest,
                        context: grpc.aio.ServicerContext) -> graph_pb2.ClaimChatResponse:
        _annotate(request)
        return await self.store.claim_chat(request)

    async def Reconcile(self, request: graph_pb2.ReconcileRequest,
                        context: grpc.aio.ServicerContext) -> graph_pb2.ReconcileResponse:
        _annotate(request)
        return await self.store.reconcile(request)
