"""Typed clients of the services the supervisor calls: graph (GraphService + RuntimeService) and
dispatch, built on the generated async stubs.

Every call has a deadline; a failed call becomes the matching domain error with the other
service's message kept (so a caller sees dispatch's own words), and google.rpc.BadRequest field
violations survive the hop. Stubs are passed in, so tests can use the real services in-process.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

import grpc
from grpc_status import rpc_status

from wgs.common import errors
from wgs.common.clients import deadline
from wgs.v1 import (
    dispatch_pb2,
    dispatch_pb2_grpc,
    graph_pb2,
    graph_pb2_grpc,
    plan_pb2,
    runtime_pb2,
    runtime_service_pb2,
    runtime_service_pb2_grpc,
    task_pb2,
)

T = TypeVar("T")
RS = runtime_service_pb2

_MAPPING: dict[grpc.StatusCode, type[errors.WgsError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
}


def wgs_error(exc: grpc.aio.AioRpcError, what: str) -> errors.WgsError:
    """The domain error for a failed call to another service (message and field kept)."""
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = ""
        status = rpc_status.from_call(exc)
        if status is not None:
            field = errors.field_of(list(status.details))
        return errors.InvalidArgument(exc.details() or what, field)
    cls = _MAPPING.get(code)
    if cls is not None:
        return cls(exc.details() or what)
    return errors.Unavailable(f"{what} failed: {code.name}: {exc.details()}")


def status_error(code: int, message: str) -> errors.WgsError:
    """The domain error for a per-item status (google.rpc.Code number) in a batch response."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            cls = _MAPPING.get(status, errors.Unavailable)
            return errors.InvalidArgument(message) if status == grpc.StatusCode.INVALID_ARGUMENT else cls(message)
    return errors.Unavailable(message)


async def call(what: str, coro: Awaitable[T]) -> T:
    try:
        return await coro
    except grpc.aio.AioRpcError as exc:
        raise wgs_error(exc, what) from None


class GraphClient:
    """The graph as the supervisor uses it."""

    def __init__(self, graph: graph_pb2_grpc.GraphServiceAsyncStub,
                 runtime: runtime_service_pb2_grpc.RuntimeServiceAsyncStub, supervisor_id: str) -> None:
        self._graph = graph
        self._runtime = runtime
        self.me = supervisor_id

    # -- chat records ------------------------------------------------------------------------

    async def create_chat(self, req: RS.CreateChatTaskRequest) -> RS.CreateChatTaskResponse:
        return await call("graph CreateChatTask", self._runtime.CreateChatTask(req, timeout=deadline()))

    async def record(self, chat_id: str) -> RS.GetChatRecordResponse:
        return await call("graph GetChatRecord", self._runtime.GetChatRecord(
            RS.GetChatRecordRequest(chat_id=chat_id), timeout=deadline()))

    async def list_records(self, *, supervisor_id: str = "", include_ended: bool = False,
                           states: list[int] | None = None, lease_expired: bool = False,
                           page_size: int = 1000, page_token: str = "") -> RS.ListChatRecordsResponse:
        req = RS.ListChatRecordsRequest(supervisor_id=supervisor_id, include_ended=include_ended,
                                        states=states or [], lease_expired=lease_expired,  # type: ignore[arg-type]
                                        page_size=page_size, page_token=page_token)
        return await call("graph ListChatRecords", self._runtime.ListChatRecords(req, timeout=deadline()))

    async def all_records(self, **filters: object) -> AsyncIterator[RS.ChatRecord]:
        token = ""
        while True:
            resp = await self.list_records(page_token=token, **filters)  # type: ignore[arg-type]
            for rec in resp.chats:
                yield rec
            token = resp.next_page_token
            if not token:
                return

    async def run_started(self, chat_id: str, run: runtime_pb2.Run, plan: plan_pb2.SpawnPlan | None,
                          expected_state: int) -> runtime_pb2.ChatRuntime:
        req = RS.RecordRunStartedRequest(chat_id=chat_id, run=run, supervisor_id=self.me,
                                         expected_state=expected_state)  # type: ignore[arg-type]
        if plan is not None:
            req.plan.CopyFrom(plan)
        resp: RS.RecordRunStartedResponse = await call("graph RecordRunStarted", self._runtime.RecordRunStarted(req, timeout=deadline()))
        return resp.runtime

    async def runs_exited(self, exits: list[RS.RunExit]) -> list[RS.RunExitResult]:
        resp: RS.RecordRunExitedResponse = await call("graph RecordRunExited", self._runtime.RecordRunExited(
            RS.RecordRunExitedRequest(exits=exits, supervisor_id=self.me), timeout=deadline()))
        return list(resp.results)

    async def transition(self, req: RS.TransitionChatRequest) -> RS.TransitionChatResponse:
        req.supervisor_id = self.me
        return await call("graph TransitionChat", self._runtime.TransitionChat(req, timeout=deadline()))

    async def claim(self, chat_id: str, lease_seconds: int) -> RS.ClaimChatResponse:
        return await call("graph ClaimChat", self._runtime.ClaimChat(RS.ClaimChatRequest(
            chat_id=chat_id, supervisor_id=self.me, lease_seconds=lease_seconds), timeout=deadline()))

    async def renew(self, req: RS.RenewLeasesRequest) -> RS.RenewLeasesResponse:
        req.supervisor_id = self.me
        return await call("graph RenewLeases", self._runtime.RenewLeases(req, timeout=deadline()))

    async def supervisors(self, include_expired: bool = False) -> list[RS.SupervisorInfo]:
        resp: RS.ListSupervisorsResponse = await call("graph ListSupervisors", self._runtime.ListSupervisors(
            RS.ListSupervisorsRequest(include_expired=include_expired), timeout=deadline()))
        return list(resp.supervisors)

    async def watch_records(self, chat_id: str, *, include_current: bool = False
                            ) -> AsyncGenerator[RS.ChatRecord, None]:
        """Each later change of the chat's (or, with "", every chat's) record; with include_current,
        first the record(s) as they are once the watch is registered."""
        stream = self._runtime.WatchChatRecords(RS.WatchChatRecordsRequest(chat_id=chat_id,
                                                                           include_current=include_current))
        try:
            async for item in stream:
                yield item.chat
        except grpc.aio.AioRpcError as exc:
            raise wgs_error(exc, "graph WatchChatRecords") from None
        finally:
            stream.cancel()

    # -- messages ----------------------------------------------------------------------------

    async def append_message(self, chat_id: str, role: int, content: str,
                             request_id: str) -> graph_pb2.AppendMessageResponse:
        return await call("graph AppendMessage", self._graph.AppendMessage(graph_pb2.AppendMessageRequest(
            chat_id=chat_id, role=role, content=content, request_id=request_id),  # type: ignore[arg-type]
            timeout=deadline()))

    async def list_messages(self, chat_id: str, after_seq: int, page_size: int,
                            page_token: str) -> graph_pb2.ListMessagesResponse:
        return await call("graph ListMessages", self._graph.ListMessages(graph_pb2.ListMessagesRequest(
            chat_id=chat_id, after_seq=after_seq, page_size=page_size, page_token=page_token), timeout=deadline()))

    async def watch_messages(self, chat_id: str, after_seq: int,
                             include_partial: bool) -> AsyncIterator[graph_pb2.WatchMessagesResponse]:
        stream = self._graph.WatchMessages(graph_pb2.WatchMessagesRequest(
            chat_id=chat_id, after_seq=after_seq, include_partial=include_partial))
        try:
            async for item in stream:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise wgs_error(exc, "graph WatchMessages") from None
        finally:
            stream.cancel()


class DispatchClient:
    def __init__(self, stub: dispatch_pb2_grpc.DispatchServiceAsyncStub) -> None:
        self._stub = stub

    async def plan(self, *, executor: str, model: str, endpoint: str, command: list[str], working_dir: str,
                   generation: plan_pb2.GenerationOverrides | None, origin: int) -> plan_pb2.SpawnPlan:
        req = dispatch_pb2.PlanSpawnRequest(executor=executor, model=model, endpoint=endpoint, command=command,
                                            working_dir=working_dir, origin=origin)  # type: ignore[arg-type]
        if generation is not None:
            req.generation.CopyFrom(generation)
        resp: dispatch_pb2.PlanSpawnResponse = await call("dispatch PlanSpawn", self._stub.PlanSpawn(req, timeout=deadline()))
        return resp.plan

    async def plan_for(self, task: task_pb2.Task, origin: int) -> plan_pb2.SpawnPlan:
        """The plan for a stored chat (a respawn reads what the chat was created with)."""
        return await self.plan(executor=task.executor, model=task.model, endpoint=task.endpoint,
                               command=list(task.command_argv), working_dir=task.working_dir,
                               generation=task.generation if task.HasField("generation") else None, origin=origin)
