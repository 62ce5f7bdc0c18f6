"""DispatchService over gRPC: a thin layer mapping PlanSpawn onto planner.plan_spawn."""

from __future__ import annotations

import logging

import grpc
from opentelemetry import trace

from services.dispatch import planner, values
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


def generation_from_proto(g: plan_pb2.GenerationOverrides) -> tuple[values.Generation, int | None]:
    """The overrides as planner values, plus the context window (None: not given)."""
    return values.Generation(
        max_tokens=g.max_tokens if g.HasField("max_tokens") else None,
        temperature=g.temperature if g.HasField("temperature") else None,
        top_p=g.top_p if g.HasField("top_p") else None,
        stop=tuple(g.stop),
    ), (g.context_window if g.HasField("context_window") else None)


def request_from_proto(req: dispatch_pb2.PlanSpawnRequest) -> planner.PlanRequest:
    origin = _ORIGINS.get(req.origin)
    if origin is None:
        raise InvalidArgument(f"origin {req.origin} is not a known SettingsOrigin (REQUEST or CHAT)", "origin")
    generation, window = generation_from_proto(req.generation)
    return planner.PlanRequest(
        executor=req.executor, model=req.model, endpoint=req.endpoint, command=tuple(req.command),
        working_dir=req.working_dir, origin=origin, generation=generation, context_window=window,
    )


def _source(src: planner.Source | None) -> int:
    return src.kind if src is not None else plan_pb2.CHOICE_SOURCE_UNSPECIFIED


def plan_to_proto(plan: planner.SpawnPlan) -> plan_pb2.SpawnPlan:
    out = plan_pb2.SpawnPlan(
        executor=plan.executor, executor_source=plan.executor_source.kind,  # type: ignore[arg-type]
        executor_source_detail=plan.executor_source.detail, model=plan.model,
        model_source=plan.model_source.kind, model_source_detail=plan.model_source.detail,  # type: ignore[arg-type]
        argv=plan.argv, working_dir=plan.working_dir, summary=plan.summary, unset_env=plan.unset_env,
        env=[plan_pb2.EnvVar(name=e.name, value=e.value, value_from_env=e.value_from_env, secret=e.secret)
             for e in plan.env],
    )
    if plan.endpoint is not None:
        ep = plan.endpoint
        out.endpoint.CopyFrom(plan_pb2.PlannedEndpoint(
            name=ep.name, url=ep.url, provider=ep.provider, api_key_env=ep.api_key_env,
            source=ep.source.kind, source_detail=ep.source.detail, ca_file=ep.ca_file))  # type: ignore[arg-type]
    g = plan.generation
    if g is not None:
        gen = out.generation
        gen.max_tokens = g.max_tokens
        gen.max_tokens_source = g.max_tokens_source.kind  # type: ignore[assignment]
        if g.temperature is not None:
            gen.temperature = g.temperature
            gen.temperature_source = _source(g.temperature_source)  # type: ignore[assignment]
        if g.top_p is not None:
            gen.top_p = g.top_p
            gen.top_p_source = _source(g.top_p_source)  # type: ignore[assignment]
        if g.stop:
            gen.stop.extend(g.stop)
            gen.stop_source = _source(g.stop_source)  # type: ignore[assignment]
        if g.context_window:
            gen.context_window = g.context_window
            gen.context_window_source = _source(g.context_window_source)  # type: ignore[assignment]
    return out


class DispatchServicer(dispatch_pb2_grpc.DispatchServiceServicer):
    def __init__(self, store: ConfigStore) -> None:
        self.store = store

    async def PlanSpawn(
        self, request: dispatch_pb2.PlanSpawnRequest, context: grpc.aio.ServicerContext
    ) -> dispatch_pb2.PlanSpawnResponse:
        config = self.store.current()
        req = request_from_proto(request)
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
        span.set_attribute(attrs.PLAN_EXECUTOR, plan.executor)
        span.set_attribute(attrs.PLAN_EXECUTOR_SOURCE, plan.executor_source.detail)
        span.set_attribute(attrs.PLAN_MODEL, plan.model)
        span.set_attribute(attrs.PLAN_MODEL_SOURCE, plan.model_source.detail)
        if plan.endpoint is not None:
            span.set_attribute(attrs.PLAN_ENDPOINT_NAME, plan.endpoint.name)
            span.set_attribute(attrs.PLAN_ENDPOINT_URL, plan.endpoint.url)
            span.set_attribute(attrs.PLAN_ENDPOINT_SOURCE, plan.endpoint.source.detail)
        log.info("planned: %s", plan.summary, extra=fields(executor=plan.executor, argv=plan.argv))
        return dispatch_pb2.PlanSpawnResponse(plan=plan_to_proto(plan))
