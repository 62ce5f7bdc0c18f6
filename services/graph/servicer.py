"""Thin gRPC layer of the graph service: GraphService forwards to GraphStore, RuntimeService to
ChatRecords.

Errors are wgs.common.errors exceptions raised by the store; the server interceptor maps them
to status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from services.graph.records import ChatRecords, watch_chat_records
from services.graph.store import GraphStore
from wgs.common import attributes as attrs
from wgs.common import telemetry
from wgs.v1 import graph_pb2, graph_pb2_grpc, runtime_service_pb2, runtime_service_pb2_grpc

_SPAN_FIELDS = {"chat_id": attrs.CHAT_ID, "id": attrs.TASK_ID, "supervisor_id": attrs.SUPERVISOR_ID}
RS = runtime_service_pb2


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

    async def AppendMessage(self, request: graph_pb2.AppendMessageRequest,
                            context: grpc.aio.ServicerContext) -> graph_pb2.AppendMessageResponse:
        _annotate(request)
        # The caller's trace (e.g. SendMessage's) is stored with a user message: the answer joins it.
        return await self.store.append_message(request, telemetry.current_traceparent())

    async def ListMessages(self, request: graph_pb2.ListMessagesRequest,
                           context: grpc.aio.ServicerContext) -> graph_pb2.ListMessagesResponse:
        _annotate(request)
        return await self.store.list_messages(request)

    async def WatchMessages(self, request: graph_pb2.WatchMessagesRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[graph_pb2.WatchMessagesResponse]:
        _annotate(request)
        async for item in self.store.watch_messages(request):
            yield item

    async def ReportAgentStatus(self, request: graph_pb2.ReportAgentStatusRequest,
                                context: grpc.aio.ServicerContext) -> graph_pb2.ReportAgentStatusResponse:
        _annotate(request)
        return await self.store.report_agent_status(request)

    async def PublishPartialMessage(self, request: graph_pb2.PublishPartialMessageRequest,
                                    context: grpc.aio.ServicerContext) -> graph_pb2.PublishPartialMessageResponse:
        return await self.store.publish_partial(request)

    async def Reconcile(self, request: graph_pb2.ReconcileRequest,
                        context: grpc.aio.ServicerContext) -> graph_pb2.ReconcileResponse:
        _annotate(request)
        return await self.store.reconcile(request)


class RuntimeServicer(runtime_service_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, records: ChatRecords) -> None:
        self.records = records

    async def CreateChatTask(self, request: RS.CreateChatTaskRequest,
                             context: grpc.aio.ServicerContext) -> RS.CreateChatTaskResponse:
        _annotate(request)
        return await self.records.create_chat_task(request)

    async def GetChatRecord(self, request: RS.GetChatRecordRequest,
                            context: grpc.aio.ServicerContext) -> RS.GetChatRecordResponse:
        _annotate(request)
        return await self.records.get_chat_record(request)

    async def ListChatRecords(self, request: RS.ListChatRecordsRequest,
                              context: grpc.aio.ServicerContext) -> RS.ListChatRecordsResponse:
        _annotate(request)
        return await self.records.list_chat_records(request)

    async def RecordRunStarted(self, request: RS.RecordRunStartedRequest,
                               context: grpc.aio.ServicerContext) -> RS.RecordRunStartedResponse:
        _annotate(request)
        return await self.records.record_run_started(request)

    async def RecordRunExited(self, request: RS.RecordRunExitedRequest,
                              context: grpc.aio.ServicerContext) -> RS.RecordRunExitedResponse:
        _annotate(request)
        return await self.records.record_run_exited(request)

    async def TransitionChat(self, request: RS.TransitionChatRequest,
                             context: grpc.aio.ServicerContext) -> RS.TransitionChatResponse:
        _annotate(request)
        return await self.records.transition_chat(request)

    async def RenewLeases(self, request: RS.RenewLeasesRequest,
                          context: grpc.aio.ServicerContext) -> RS.RenewLeasesResponse:
        _annotate(request)
        return await self.records.renew_leases(request)

    async def ClaimChat(self, request: RS.ClaimChatRequest,
                        context: grpc.aio.ServicerContext) -> RS.ClaimChatResponse:
        _annotate(request)
        return await self.records.claim_chat(request)

    async def ListSupervisors(self, request: RS.ListSupervisorsRequest,
                              context: grpc.aio.ServicerContext) -> RS.ListSupervisorsResponse:
        return await self.records.list_supervisors(request)

    async def WatchChatRecords(self, request: RS.WatchChatRecordsRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[RS.WatchChatRecordsResponse]:
        _annotate(request)
        async for item in watch_chat_records(self.records, request):
            yield item
