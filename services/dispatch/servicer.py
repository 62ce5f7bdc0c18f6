"""DispatchService over gRPC: a thin layer mapping PlanSpawn onto planner.plan_spawn."""

from __future__ import annotations

import dataclasses
import logging

import grpc
from opentelemetry import trace

from services.dispatch import planner
from services.dispatch.config import ConfigStore
from wgs.common import attributes as attrs
from wgs.common.errors import FailedPrecondition, InvalidArgument
from wgs.common.logs import fields
from wgs.v1 import dispatch_pb2, dispatch_pb2_grpc, plan_pb2

log = logging.getLogger("wgs.dispatch")

_ORIGINS = {
    dispatch_pb2.SETTINGS_ORIGIN_UNSPECIFIED: "request",
    dispatch_pb2.SETTINGS_ORIGIN_REQUEST: "request",
    dispatch_pb2.SETTINGS_ORIGIN_CHAT: "chat",
}


def request_from_proto(req: dispatch_pb2.PlanSpawnRequest) -> planner.PlanRequest:
    origin = _ORIGINS.get(req.origin)
    if origin is None:
        raise InvalidArgument(f"origin {req.origin} is not a known SettingsOrigin (REQUEST or CHAT)")
    return planner.PlanRequest(
        chat_id=req.chat_id, executor=req.executor, model=req.model, endpoint=req.endpoint,
        command=tuple(req.command), working_dir=req.working_dir, origin=origin,
    )


def plan_to_proto(plan: planner.SpawnPlan) -> plan_pb2.SpawnPlan:
    out = plan_pb2.SpawnPlan(
        chat_id=plan.chat_id, executor=plan.executor, executor_source=plan.executor_source,
        model=plan.model, model_source=plan.model_source, argv=plan.argv, working_dir=plan.working_dir,
        summary=plan.summary, unset_env=plan.unset_env,
        env=[plan_pb2.EnvVar(name=e.name, value=e.value, value_from_env=e.value_from_env, secret=e.secret)
             for e in plan.env],
    )
    if plan.endpoint is not None:
        ep = plan.endpoint
        out.endpoint.CopyFrom(plan_pb2.PlannedEndpoint(
            name=ep.name, url=ep.url, provider=ep.provider, api_key_env=ep.api_key_env, source=ep.source))
    return out


# Stands in for the chat id when a request is only validated (never a real chat: ids start at 1).
VALIDATION_CHAT_ID = ".chat-0"


class DispatchServicer(dispatch_pb2_grpc.DispatchServiceServicer):
    def __init__(self, store: ConfigStore) -> None:
        self.store = store

    async def PlanSpawn(
        self, request: dispatch_pb2.PlanSpawnRequest, context: grpc.aio.ServicerContext
    ) -> dispatch_pb2.PlanSpawnResponse:
        config = self.store.current()
        req = request_from_proto(request)
        if request.validate_only:
            if request.chat_id:
                raise InvalidArgument("chat_id must be empty with validate_only (no chat exists yet)")
            req = dataclasses.replace(req, chat_id=VALIDATION_CHAT_ID)
        try:
            plan = planner.plan_spawn(req, config)
        except FailedPrecondition as exc:
            if self.store.last_error:
                raise FailedPrecondition(
                    f"{exc.message} (note: the latest edit of the config was rejected and is not in force: "
                    f"{self.store.last_error})"
                ) from None
            raise
        span = trace.get_current_span()
        if request.validate_only:
            span.set_attribute("wgs.plan.validate_only", True)
            out = plan_to_proto(plan)
            out.chat_id = ""
            return dispatch_pb2.PlanSpawnResponse(plan=out)
        span.set_attribute(attrs.CHAT_ID, plan.chat_id)
        span.set_attribute(attrs.PLAN_EXECUTOR, plan.executor)
        span.set_attribute(attrs.PLAN_EXECUTOR_SOURCE, plan.executor_source)
        span.set_attribute(attrs.PLAN_MODEL, plan.model)
        span.set_attribute(attrs.PLAN_MODEL_SOURCE, plan.model_source)
        if plan.endpoint is not None:
            span.set_attribute(attrs.PLAN_ENDPOINT_NAME, plan.endpoint.name)
            span.set_attribute(attrs.PLAN_ENDPOINT_URL, plan.endpoint.url)
            span.set_attribute(attrs.PLAN_ENDPOINT_SOURCE, plan.endpoint.source)
        log.info("planned %s: %s", plan.chat_id, plan.summary,
                 extra=fields(chat_id=plan.chat_id, executor=plan.executor, argv=plan.argv))
        return dispatch_pb2.PlanSpawnResponse(plan=plan_to_proto(plan))
