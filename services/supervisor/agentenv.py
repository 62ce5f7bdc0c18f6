"""The environment an agent runs with, and the secrets in it (for redaction).

The agent inherits the supervisor's environment minus: what only the supervisor needs (its listen
address, address file, service name, trace context), every configured endpoint's API-key variable
(plan.unset_env: an agent sees only its own key, as WGS_API_KEY) and wgs credentials. Secrets are
copied from the supervisor's environment by variable *name* (plan.env value_from_env) — the plan
never holds them — and returned so everything shown about the run can be redacted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.supervisor.backend import SpawnFailed
from services.supervisor.redact import Redactor
from wgs.common import auth
from wgs.v1 import plan_pb2

# Variables of the supervisor's own environment an agent must not inherit (its own credential, if
# any, is added by the caller).
NOT_INHERITED = frozenset({
    "WGS_ADDRESS_FILE", "WGS_GRAPH_LISTEN", "WGS_DISPATCH_LISTEN", "WGS_SUPERVISOR_LISTEN", "OTEL_SERVICE_NAME",
    "TRACEPARENT", "TRACESTATE", "WGS_SUPERVISOR_ADVERTISE_ADDR", "WGS_HEALTH_LISTEN", auth.TOKEN_VAR,
    *auth.NOT_FOR_AGENTS,
})


@dataclass(frozen=True)
class AgentEnv:
    env: dict[str, str]
    secrets: list[str]


def secret_values(plan: plan_pb2.SpawnPlan, environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values the plan injects (as the supervisor's environment holds them now)."""
    source = os.environ if environ is None else environ
    out: list[str] = []
    for var in plan.env:
        if var.value_from_env:
            value = source.get(var.value_from_env)
            if value:
                out.append(value)
        elif var.secret and var.value:
            out.append(var.value)
    return out


def redactor_for(plan: plan_pb2.SpawnPlan, extra: list[str] | None = None) -> Redactor:
    return Redactor([*secret_values(plan), *(extra or [])])


def build(plan: plan_pb2.SpawnPlan, *, chat_id: str, run_number: int, graph_target: str, state_dir: str,
          trace_carrier: Mapping[str, str], credentials: Mapping[str, str] | None = None,
          environ: Mapping[str, str] | None = None) -> AgentEnv:
    """The agent's environment; SpawnFailed (permanent) if a secret's variable is not set."""
    source = os.environ if environ is None else environ
    unset = NOT_INHERITED | set(plan.unset_env)
    env = {k: v for k, v in source.items() if k not in unset}
    secrets: list[str] = []
    for var in plan.env:
        if var.value_from_env:
            value = source.get(var.value_from_env)
            if value is None:
                raise SpawnFailed(
                    f"environment variable {var.value_from_env} (the API key for {var.name}) is not set in the "
                    "supervisor's environment; set it and restart the supervisor, or change the endpoint's "
                    "api_key_env", permanent=True)
            env[var.name] = value
            secrets.append(value)
        else:
            env[var.name] = var.value
            if var.secret:
                secrets.append(var.value)
    env.update({"WGS_CHAT_ID": chat_id, "WGS_RUN_NUMBER": str(run_number), "WGS_GRAPH_ADDR": graph_target,
                "WGS_STATE_DIR": state_dir})
    env.update({k.upper(): v for k, v in trace_carrier.items()})
    for name, value in (credentials or {}).items():
        env[name] = value
        secrets.append(value)
    return AgentEnv(env=env, secrets=secrets)
