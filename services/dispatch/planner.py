"""plan_spawn: resolve executor, model, endpoint and generation settings (each with its source) and
build the agent's argv.

Pure logic over a validated Config; no network, no processes. Precedence for every value:
the request/chat value > the endpoint's or [defaults] config > the built-in default. An endpoint name
that is not configured is an error, never a silent fallback to the default endpoint (upstream
defect, incident C). The plan does not depend on the chat: the agent learns its chat id from its
environment (WGS_CHAT_ID), so CreateChat can plan once, before anything is written.

Every rule about what a chat may ask for lives here (the supervisor forwards the request as is):
executor aliases, a command excluding model/endpoint/generation settings, endpoint URLs without
credentials, working_dir absolute, generation settings in range. Errors name the request field
(InvalidArgument.field → google.rpc.BadRequest).
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
from wgs.v1 import plan_pb2

AGENT_PROGRAM = "wgs-agent"

# Models used when neither the request nor the config names one. The native agent has none: which
# model an endpoint serves is only known to its operator.
BUILTIN_MODELS: dict[str, str] = {values.CLAUDE: "claude:opus", values.CODEX: "codex:gpt-5"}
BUILTIN_EXECUTOR = values.NATIVE
# A reply that runs on must not fill a small server's whole context: a bounded reply by default.
BUILTIN_MAX_TOKENS = 1024

CLAUDE_CLI = ["claude", "--print", "--input-format", "stream-json", "--output-format", "stream-json",
              "--verbose", "--dangerously-skip-permissions"]
CODEX_CLI = ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]

API_KEY_VAR = "WGS_API_KEY"
WINDOW_SOURCE_VAR = "WGS_CONTEXT_WINDOW_SOURCE"  # where --context-window came from (the agent reports it)
PROVIDER_VAR = "WGS_ENDPOINT_PROVIDER"
ENDPOINT_URL_VAR = "WGS_ENDPOINT_URL"

ORIGINS = ("request", "chat")
MAX_EXECUTOR = 64

S = plan_pb2  # ChoiceSource values


@dataclass(frozen=True)
class Source:
    """Where a value came from: a ChoiceSource and the same in words."""

    kind: int
    detail: str


@dataclass(frozen=True)
class PlanRequest:
    """The inputs of PlanSpawn. `origin` labels given values: "request" (CreateChat) or "chat" (respawn)."""

    executor: str = ""
    model: str = ""
    endpoint: str = ""
    command: tuple[str, ...] = ()
    working_dir: str = ""
    origin: str = "request"
    generation: values.Generation = field(default_factory=values.Generation)
    context_window: int | None = None


@dataclass(frozen=True)
class PlannedEndpoint:
    name: str
    url: str
    provider: str
    api_key_env: str
    source: Source
    context_window: int = 0
    ca_file: str = ""
    generation: values.Generation = field(default_factory=values.Generation)  # the endpoint's config entry


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str = ""
    value_from_env: str = ""
    secret: bool = False


@dataclass(frozen=True)
class Generation:
    """Resolved generation settings, each with its source (None: not sent)."""

    max_tokens: int
    max_tokens_source: Source
    temperature: float | None = None
    temperature_source: Source | None = None
    top_p: float | None = None
    top_p_source: Source | None = None
    stop: tuple[str, ...] = ()
    stop_source: Source | None = None
    context_window: int = 0
    context_window_source: Source | None = None


@dataclass(frozen=True)
class SpawnPlan:
    executor: str
    executor_source: Source
    model: str
    model_source: Source
    endpoint: PlannedEndpoint | None
    argv: list[str]
    env: list[EnvVar] = field(default_factory=list)
    working_dir: str = ""
    summary: str = ""
    unset_env: tuple[str, ...] = ()
    generation: Generation | None = None


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


def _given(origin: str) -> Source:
    return Source(S.CHOICE_SOURCE_REQUEST, "request") if origin == "request" else Source(S.CHOICE_SOURCE_CHAT, "chat")


def _plan(req: PlanRequest, config: Config) -> SpawnPlan:
    if req.origin not in ORIGINS:
        raise InvalidArgument(f"origin {req.origin!r} must be one of {', '.join(ORIGINS)}", "origin")
    given = _given(req.origin)
    raw_executor = req.executor.strip()
    model_in = req.model.strip()
    endpoint_in = req.endpoint.strip()
    working_dir = _working_dir(req.working_dir)
    _check_generation(req)

    executor, executor_source = _executor(raw_executor, bool(req.command), given, config)
    if executor == values.COMMAND:
        return _command_plan(req, executor_source, model_in, endpoint_in, working_dir)

    model, model_source = _model(executor, model_in, given, config)

    endpoint: PlannedEndpoint | None = None
    if executor in values.NEEDS_ENDPOINT:
        endpoint = _endpoint(endpoint_in, given, config)
    elif endpoint_in and executor in values.TAKES_ENDPOINT:
        endpoint = _endpoint(endpoint_in, given, config)  # codex on an OpenAI-compatible endpoint
    elif endpoint_in:
        raise InvalidArgument(
            f"executor {executor!r} does not use an endpoint (its CLI talks to its own service); "
            f"drop endpoint {_show_endpoint(endpoint_in)!r}, or use executor 'native' (or 'codex') to talk to an "
            "OpenAI-compatible endpoint", "endpoint")
    if executor not in values.NEEDS_ENDPOINT and _has_generation(req):
        raise InvalidArgument(
            f"generation settings (max_tokens, temperature, top_p, stop, context_window) apply to the native "
            f"executor only; executor {executor!r} uses its CLI's own", "generation")

    argv = [AGENT_PROGRAM, executor, "--model", model]
    env: list[EnvVar] = []
    generation: Generation | None = None
    if executor == values.NATIVE:
        assert endpoint is not None
        generation = _generation(req, given, endpoint)
        argv += ["--endpoint", endpoint.url, *_generation_argv(generation)]
        if endpoint.ca_file:
            argv += ["--ca-file", endpoint.ca_file]
        env.append(EnvVar(name=PROVIDER_VAR, value=endpoint.provider))
        if generation.context_window and generation.context_window_source is not None:
            env.append(EnvVar(name=WINDOW_SOURCE_VAR, value=_source_name(generation.context_window_source)))
        if endpoint.api_key_env:
            env.append(EnvVar(name=API_KEY_VAR, value_from_env=endpoint.api_key_env, secret=True))
    elif executor == values.CLAUDE:
        argv += ["--", *CLAUDE_CLI, "--model", values.split_model(model)[1]]
    elif executor == values.CODEX:
        if endpoint is not None:
            # codex as a custom model provider on this endpoint; its key only in the environment.
            argv += ["--endpoint", endpoint.url]
            if endpoint.api_key_env:
                env.append(EnvVar(name=API_KEY_VAR, value_from_env=endpoint.api_key_env, secret=True))
        argv += ["--", *CODEX_CLI, "--model", values.split_model(model)[1]]

    ep_summary = (f"{endpoint.url} (from {endpoint.source.detail})" if endpoint is not None
                  else f"none (executor={executor})")
    summary = (f"executor={executor} (from {executor_source.detail}), model={model} (from {model_source.detail}), "
               f"endpoint={ep_summary}")
    if generation is not None:
        summary += f", max_tokens={generation.max_tokens} (from {generation.max_tokens_source.detail})"
    return SpawnPlan(executor=executor, executor_source=executor_source, model=model, model_source=model_source,
                     endpoint=endpoint, argv=argv, env=env, working_dir=working_dir, summary=summary,
                     generation=generation)


def _show_endpoint(value: str) -> str:
    return redact_url(value) if values.looks_like_url(value) else value


def _working_dir(value: str) -> str:
    if not value:
        return ""
    validation.text(value, "working_dir", required=True, max_len=validation.MAX_PATH)
    if not os.path.isabs(value):
        raise InvalidArgument(f"working_dir {value!r} must be an absolute path", "working_dir")
    return value


def _has_generation(req: PlanRequest) -> bool:
    g = req.generation
    return (g.max_tokens is not None or g.temperature is not None or g.top_p is not None or bool(g.stop)
            or req.context_window is not None)


def _check_generation(req: PlanRequest) -> None:
    for name, problem in values.generation_problems(req.generation):
        raise InvalidArgument(f"generation.{name} {problem}", f"generation.{name}")
    if req.context_window is not None:
        window_problem = values.context_window_problem(req.context_window)
        if window_problem:
            raise InvalidArgument(f"generation.context_window {window_problem}", "generation.context_window")


def _executor(raw: str, has_command: bool, given: Source, config: Config) -> tuple[str, Source]:
    if raw:
        if len(raw) > MAX_EXECUTOR:
            raise InvalidArgument(f"executor is too long ({len(raw)} characters); valid: {values.executor_choices()}",
                                  "executor")
        executor = values.normalize_executor(raw)
        if executor is None:
            raise InvalidArgument(f"unknown executor {raw!r}; valid: {values.executor_choices()}", "executor")
        if has_command and executor != values.COMMAND:
            raise InvalidArgument(
                f"a command was given, so the executor is 'command'; executor {raw!r} cannot run a custom "
                "command (drop the command, or drop the executor)", "executor")
        if executor == values.COMMAND and not has_command:
            raise InvalidArgument("executor 'command' needs the command to run (the command argv is empty)",
                                  "command")
        return executor, given
    if has_command:
        return values.COMMAND, given
    if config.defaults.executor:
        return config.defaults.executor, Source(S.CHOICE_SOURCE_CONFIG_DEFAULT, f"config default ({config.path})")
    return BUILTIN_EXECUTOR, Source(S.CHOICE_SOURCE_BUILTIN, "built-in default")


def _command_plan(req: PlanRequest, executor_source: Source, model: str, endpoint: str,
                  working_dir: str) -> SpawnPlan:
    if model:
        raise InvalidArgument(f"a command chat runs the given argv and takes no model; drop model {model!r}",
                              "model")
    if endpoint:
        raise InvalidArgument(
            f"a command chat runs the given argv and takes no endpoint; drop endpoint {_show_endpoint(endpoint)!r}",
            "endpoint")
    if _has_generation(req):
        raise InvalidArgument("a command chat runs the given argv and takes no generation settings", "generation")
    argv = validation.argv(list(req.command), "command")
    summary = (f"executor=command (from {executor_source.detail}), command={argv[0]!r} with "
               f"{len(argv) - 1} argument(s)")
    return SpawnPlan(executor=values.COMMAND, executor_source=executor_source, model="",
                     model_source=Source(S.CHOICE_SOURCE_NONE, "none (executor=command)"), endpoint=None,
                     argv=argv, env=[], working_dir=working_dir, summary=summary)


def _model(executor: str, model: str, given: Source, config: Config) -> tuple[str, Source]:
    if model:
        problem = values.model_problem(model)
        if problem:
            raise InvalidArgument(f"model {model!r} {problem}", "model")
        problem = values.model_executor_problem(executor, model)
        if problem:
            raise InvalidArgument(problem, "model")
        return model, given
    default_executor = config.defaults.executor or BUILTIN_EXECUTOR
    if config.defaults.model and executor == default_executor:
        problem = values.model_executor_problem(executor, config.defaults.model)
        if problem:
            raise FailedPrecondition(f"[defaults] model in {config.path}: {problem}")
        return config.defaults.model, Source(S.CHOICE_SOURCE_CONFIG_DEFAULT, f"config default ({config.path})")
    builtin = BUILTIN_MODELS.get(executor)
    if builtin:
        return builtin, Source(S.CHOICE_SOURCE_BUILTIN, "built-in default")
    if config.defaults.model:
        raise FailedPrecondition(
            f"no model given, and the default model {config.defaults.model!r} ([defaults] model in "
            f"{config.path}) is for executor {default_executor!r}, not {executor!r}: pass --model"
        )
    raise FailedPrecondition(
        f"no model given and no default model configured ([defaults] model in {config.path}): pass --model"
    )


def _from_config(ep: Endpoint, source: Source, url: str | None = None) -> PlannedEndpoint:
    return PlannedEndpoint(name=ep.name, url=url or ep.url, provider=ep.provider, api_key_env=ep.api_key_env,
                           source=source, context_window=ep.context_window, ca_file=ep.ca_file,
                           generation=ep.generation)


def _known(config: Config) -> str:
    return ", ".join(config.names()) or "none"


def _configured(config: Config, value: str) -> Endpoint | None:
    return next((ep for ep in config.endpoints if values.same_url(value, ep.url)), None)


def _endpoint(value: str, given: Source, config: Config) -> PlannedEndpoint:
    if value and values.looks_like_url(value):
        problem = values.url_problem(value)
        if problem:
            raise InvalidArgument(f"endpoint URL {redact_url(value)!r} {problem}", "endpoint")
        # An inline URL of a configured endpoint gets that endpoint's provider, key, CA and window.
        ep = _configured(config, value)
        if ep is not None:
            return _from_config(ep, given, url=value)
        return PlannedEndpoint(name="", url=value, provider=values.DEFAULT_PROVIDER, api_key_env="", source=given)
    if value:
        problem = values.endpoint_name_problem(value)
        if problem:
            raise InvalidArgument(f"endpoint {value!r} is neither an http(s):// URL nor a valid endpoint name",
                                  "endpoint")
        named = config.find(value)
        if named is None:
            raise FailedPrecondition(
                f"endpoint {value!r} is not configured (known: {_known(config)}) in {config.path}; "
                "pass a URL (https://host:port) or add an [[endpoints]] entry with that name"
            )
        return _from_config(named, Source(given.kind, f"{given.detail}: endpoint {named.name!r} from config"))
    default = config.default_endpoint()
    if default is None:
        raise FailedPrecondition(
            f"no endpoint configured: pass --endpoint URL|NAME or add [[endpoints]] with default = true to "
            f"{config.path}" + (f" (configured, none marked default: {_known(config)})" if config.endpoints else "")
        )
    return _from_config(default, Source(S.CHOICE_SOURCE_CONFIG_DEFAULT, f"config default (endpoint {default.name!r})"))


def _generation(req: PlanRequest, given: Source, endpoint: PlannedEndpoint) -> Generation:
    """Each setting: the chat's value > the endpoint's entry in config > built-in (max_tokens only)."""
    configured = endpoint.generation
    from_endpoint = Source(S.CHOICE_SOURCE_CONFIG_ENDPOINT, f"endpoint {endpoint.name!r} in config")
    g = req.generation

    def source(mine: object, theirs: object) -> Source | None:
        if mine is not None and mine != ():
            return given
        if theirs is not None and theirs != ():
            return from_endpoint
        return None

    max_src = source(g.max_tokens, configured.max_tokens)
    t_src = source(g.temperature, configured.temperature)
    p_src = source(g.top_p, configured.top_p)
    s_src = source(tuple(g.stop), tuple(configured.stop))
    w_src = source(req.context_window, endpoint.context_window or None)
    max_tokens = g.max_tokens if max_src is given else configured.max_tokens
    if max_src is None:
        max_tokens, max_src = BUILTIN_MAX_TOKENS, Source(S.CHOICE_SOURCE_BUILTIN, "built-in default")
    temperature = g.temperature if t_src is given else configured.temperature
    top_p = g.top_p if p_src is given else configured.top_p
    stop = tuple(g.stop) if s_src is given else tuple(configured.stop)
    window = req.context_window if w_src is given else endpoint.context_window
    return Generation(
        max_tokens=int(max_tokens), max_tokens_source=max_src,
        temperature=float(temperature) if temperature is not None else None, temperature_source=t_src,
        top_p=float(top_p) if top_p is not None else None, top_p_source=p_src,
        stop=stop, stop_source=s_src,
        context_window=int(window or 0), context_window_source=w_src,
    )


def _source_name(source: Source) -> str:
    return plan_pb2.ChoiceSource.Name(source.kind).removeprefix("CHOICE_SOURCE_").lower()


def _generation_argv(g: Generation) -> list[str]:
    out = ["--max-tokens", str(g.max_tokens)]
    if g.temperature is not None:
        out += ["--temperature", f"{g.temperature:g}"]
    if g.top_p is not None:
        out += ["--top-p", f"{g.top_p:g}"]
    for s in g.stop:
        out += ["--stop", s]
    if g.context_window:
        out += ["--context-window", str(g.context_window)]
    return out
