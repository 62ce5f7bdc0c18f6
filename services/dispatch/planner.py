"""plan_spawn: resolve executor, model and endpoint (each with its source) and build the agent's argv.

Pure logic over a validated Config; no network, no processes. Precedence for every value:
the request/chat value > the config default > the built-in default. An endpoint name that is not
configured is an error, never a silent fallback to the default endpoint (upstream defect, incident C).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from services.dispatch import values
from services.dispatch.config import Config, Endpoint
from wgs.common import validation
from wgs.common.errors import FailedPrecondition, InvalidArgument

AGENT_PROGRAM = "wgs-agent"

# Models used when neither the request nor the config names one. The native agent has none: which
# model an endpoint serves is only known to its operator.
BUILTIN_MODELS: dict[str, str] = {values.CLAUDE: "claude:opus", values.CODEX: "codex:gpt-5"}
BUILTIN_EXECUTOR = values.NATIVE

CLAUDE_CLI = ["claude", "--print", "--input-format", "stream-json", "--output-format", "stream-json",
              "--verbose", "--dangerously-skip-permissions"]
CODEX_CLI = ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]

API_KEY_VAR = "WGS_API_KEY"
PROVIDER_VAR = "WGS_ENDPOINT_PROVIDER"

ORIGINS = ("request", "chat")
MAX_EXECUTOR = 64


@dataclass(frozen=True)
class PlanRequest:
    """The inputs of PlanSpawn. `origin` labels given values: "request" (CreateChat) or "chat" (respawn)."""

    chat_id: str
    executor: str = ""
    model: str = ""
    endpoint: str = ""
    command: tuple[str, ...] = ()
    working_dir: str = ""
    origin: str = "request"


@dataclass(frozen=True)
class PlannedEndpoint:
    name: str
    url: str
    provider: str
    api_key_env: str
    source: str
    context_window: int = 0


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str = ""
    value_from_env: str = ""
    secret: bool = False


@dataclass(frozen=True)
class SpawnPlan:
    chat_id: str
    executor: str
    executor_source: str
    model: str
    model_source: str
    endpoint: PlannedEndpoint | None
    argv: list[str]
    env: list[EnvVar] = field(default_factory=list)
    working_dir: str = ""
    summary: str = ""
    unset_env: tuple[str, ...] = ()


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment: safe to show in messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable URL>"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def plan_spawn(req: PlanRequest, config: Config) -> SpawnPlan:
    """Resolve and build the spawn plan, or raise InvalidArgument / FailedPrecondition."""
    plan = _plan(req, config)
    # No agent inherits any endpoint's key variable; its own key arrives as WGS_API_KEY.
    key_vars = tuple(sorted({ep.api_key_env for ep in config.endpoints if ep.api_key_env}))
    return dataclasses.replace(plan, unset_env=key_vars)


def _plan(req: PlanRequest, config: Config) -> SpawnPlan:
    if req.origin not in ORIGINS:
        raise InvalidArgument(f"origin {req.origin!r} must be one of {', '.join(ORIGINS)}")
    chat = validation.chat_id(req.chat_id)
    given = req.origin
    raw_executor = req.executor.strip()
    model_in = req.model.strip()
    endpoint_in = req.endpoint.strip()
    working_dir = _working_dir(req.working_dir)

    # Executor.
    executor, executor_source = _executor(raw_executor, bool(req.command), given, config)

    if executor == values.COMMAND:
        return _command_plan(chat, req, executor_source, model_in, endpoint_in, working_dir)

    # Model.
    model, model_source = _model(executor, model_in, given, config)

    # Endpoint.
    endpoint: PlannedEndpoint | None = None
    if executor in values.NEEDS_ENDPOINT:
        endpoint = _endpoint(endpoint_in, given, config)
    elif endpoint_in:
        raise InvalidArgument(
            f"executor {executor!r} does not use an endpoint (its CLI talks to its own service); "
            f"drop endpoint {_show_endpoint(endpoint_in)!r}, or use executor 'native' to talk to an "
            "OpenAI-compatible endpoint"
        )

    argv = [AGENT_PROGRAM, executor, "--chat", chat, "--model", model]
    env: list[EnvVar] = []
    if executor == values.NATIVE:
        assert endpoint is not None
        argv += ["--endpoint", endpoint.url]
        if endpoint.context_window:
            argv += ["--context-window", str(endpoint.context_window)]
        env.append(EnvVar(name=PROVIDER_VAR, value=endpoint.provider))
        if endpoint.api_key_env:
            env.append(EnvVar(name=API_KEY_VAR, value_from_env=endpoint.api_key_env, secret=True))
    elif executor == values.CLAUDE:
        argv += ["--", *CLAUDE_CLI, "--model", values.split_model(model)[1]]
    elif executor == values.CODEX:
        argv += ["--", *CODEX_CLI, "--model", values.split_model(model)[1]]

    ep_summary = (f"{endpoint.url} (from {endpoint.source})" if endpoint is not None
                  else f"none (executor={executor})")
    summary = (f"executor={executor} (from {executor_source}), model={model} (from {model_source}), "
               f"endpoint={ep_summary}")
    return SpawnPlan(chat_id=chat, executor=executor, executor_source=executor_source, model=model,
                     model_source=model_source, endpoint=endpoint, argv=argv, env=env,
                     working_dir=working_dir, summary=summary)


def _show_endpoint(value: str) -> str:
    return redact_url(value) if values.looks_like_url(value) else value


def _working_dir(value: str) -> str:
    if not value:
        return ""
    validation.text(value, "working_dir", required=True, max_len=validation.MAX_PATH)
    if not os.path.isabs(value):
        raise InvalidArgument(f"working_dir {value!r} must be an absolute path")
    return value


def _executor(raw: str, has_command: bool, given: str, config: Config) -> tuple[str, str]:
    if raw:
        if len(raw) > MAX_EXECUTOR:
            raise InvalidArgument(f"executor is too long ({len(raw)} characters); valid: {values.executor_choices()}")
        executor = values.normalize_executor(raw)
        if executor is None:
            raise InvalidArgument(f"unknown executor {raw!r}; valid: {values.executor_choices()}")
        if has_command and executor != values.COMMAND:
            raise InvalidArgument(
                f"a command was given, so the executor is 'command'; executor {raw!r} cannot run a custom "
                "command (drop the command, or drop the executor)"
            )
        if executor == values.COMMAND and not has_command:
            raise InvalidArgument("executor 'command' needs the command to run (the command argv is empty)")
        return executor, given
    if has_command:
        return values.COMMAND, given
    if config.defaults.executor:
        return config.defaults.executor, "config default"
    return BUILTIN_EXECUTOR, "built-in default"


def _command_plan(chat: str, req: PlanRequest, executor_source: str, model: str, endpoint: str,
                  working_dir: str) -> SpawnPlan:
    if model:
        raise InvalidArgument(f"a command chat runs the given argv and takes no model; drop model {model!r}")
    if endpoint:
        raise InvalidArgument(
            f"a command chat runs the given argv and takes no endpoint; drop endpoint {_show_endpoint(endpoint)!r}"
        )
    argv = validation.argv(list(req.command), "command")
    summary = f"executor=command (from {executor_source}), command={argv[0]!r} with {len(argv) - 1} argument(s)"
    return SpawnPlan(chat_id=chat, executor=values.COMMAND, executor_source=executor_source, model="",
                     model_source="none (executor=command)", endpoint=None, argv=argv, env=[],
                     working_dir=working_dir, summary=summary)


def _model(executor: str, model: str, given: str, config: Config) -> tuple[str, str]:
    if model:
        problem = values.model_problem(model)
        if problem:
            raise InvalidArgument(f"model {model!r} {problem}")
        problem = values.model_executor_problem(executor, model)
        if problem:
            raise InvalidArgument(problem)
        return model, given
    default_executor = config.defaults.executor or BUILTIN_EXECUTOR
    if config.defaults.model and executor == default_executor:
        problem = values.model_executor_problem(executor, config.defaults.model)
        if problem:
            raise FailedPrecondition(f"[defaults] model in {config.path}: {problem}")
        return config.defaults.model, "config default"
    builtin = BUILTIN_MODELS.get(executor)
    if builtin:
        return builtin, "built-in default"
    if config.defaults.model:
        raise FailedPrecondition(
            f"no model given, and the default model {config.defaults.model!r} ([defaults] model in "
            f"{config.path}) is for executor {default_executor!r}, not {executor!r}: pass --model"
        )
    raise FailedPrecondition(
        f"no model given and no default model configured ([defaults] model in {config.path}): pass --model"
    )


def _from_config(ep: Endpoint, source: str) -> PlannedEndpoint:
    return PlannedEndpoint(name=ep.name, url=ep.url, provider=ep.provider, api_key_env=ep.api_key_env,
                           source=source, context_window=ep.context_window)


def _known(config: Config) -> str:
    return ", ".join(config.names()) or "none"


def _endpoint(value: str, given: str, config: Config) -> PlannedEndpoint:
    if value and values.looks_like_url(value):
        problem = values.url_problem(value)
        if problem:
            raise InvalidArgument(f"endpoint URL {redact_url(value)!r} {problem}")
        # An inline URL of a configured endpoint gets that endpoint's provider, key and window.
        for ep in config.endpoints:
            if values.same_url(value, ep.url):
                return PlannedEndpoint(name=ep.name, url=value, provider=ep.provider, api_key_env=ep.api_key_env,
                                       source=given, context_window=ep.context_window)
        return PlannedEndpoint(name="", url=value, provider=values.DEFAULT_PROVIDER, api_key_env="", source=given)
    if value:
        problem = values.endpoint_name_problem(value)
        if problem:
            raise InvalidArgument(f"endpoint {value!r} is neither an http(s):// URL nor a valid endpoint name")
        named = config.find(value)
        if named is None:
            raise FailedPrecondition(
                f"endpoint {value!r} is not configured (known: {_known(config)}) in {config.path}; "
                "pass a URL (https://host:port) or add an [[endpoints]] entry with that name"
            )
        return _from_config(named, f"{given}: endpoint {named.name!r} from config")
    default = config.default_endpoint()
    if default is None:
        raise FailedPrecondition(
            f"no endpoint configured: pass --endpoint URL|NAME or add [[endpoints]] with default = true to "
            f"{config.path}" + (f" (configured, none marked default: {_known(config)})" if config.endpoints else "")
        )
    return _from_config(default, f"config default (endpoint {default.name!r})")
