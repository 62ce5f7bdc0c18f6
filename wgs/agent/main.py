"""`wgs-agent`: the agent process the supervisor runs for a chat.

  wgs-agent native --chat .chat-N --model M --endpoint URL [--context-window N] [--ca-file PEM]
                   [--max-tokens N] [--temperature T] [--top-p P] [--stop S ...]
  wgs-agent claude --chat .chat-N --model M [-- claude --print --input-format stream-json …]
  wgs-agent codex  --chat .chat-N --model M [--endpoint URL [--wire-api responses]] [-- codex exec --json …]

Environment (set by the supervisor): WGS_GRAPH_ADDR, WGS_CHAT_ID (default of --chat),
WGS_RUN_NUMBER, TRACEPARENT, WGS_STATE_DIR; optional WGS_API_KEY (bearer token, never logged),
WGS_CA_BUNDLE, WGS_AGENT_* tuning (see wgs.common.settings.ENV_VARS). Exit codes: wgs.agent.errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from opentelemetry import context as otel_context
from opentelemetry.propagate import extract

from wgs.agent.cli_protocol import codex_provider_args
from wgs.agent.cli_runners import ClaudeBackend, CodexBackend
from wgs.agent.context import DEFAULT_CONTEXT_WINDOW, DEFAULT_MAX_TOKENS, MIN_CONTEXT_WINDOW
from wgs.agent.errors import EXIT_CODES_HELP, EXIT_INTERNAL, EXIT_USAGE
from wgs.agent.graph_link import GraphLink
from wgs.agent.graph_sink import GraphStatusSink
from wgs.agent.loop import AgentLoop, Backend
from wgs.agent.native import NativeBackend
from wgs.agent.openai_http import (
    GenerationSettings,
    HttpSettings,
    OpenAIClient,
    normalize_base_url,
    strip_provider_prefix,
)
from wgs.agent.status import FanOutSink, LoggingSink, StatusSink
from wgs.common import telemetry
from wgs.common.errors import ConfigError, WgsError
from wgs.common.logs import setup_logging
from wgs.common.settings import env_float, env_int, env_str, state_dir, target
from wgs.common.validation import chat_id as validate_chat_id

log = logging.getLogger("wgs.agent")

CLI_CONTEXT_WINDOW = 32768  # claude/codex models: the budget of a transcript given to a fresh CLI
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant in the wgs chat {chat}. Answer concisely and accurately."


def _split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wgs-agent", description="wgs chat agent process (run by the wgs supervisor)",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind, help_ in (("native", "answer with an OpenAI-compatible endpoint"),
                        ("claude", "run the claude CLI in stream-json mode (argv after --)"),
                        ("codex", "run `codex exec --json` once per message (argv after --)")):
        p = sub.add_parser(kind, help=help_, epilog=EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--chat", default=os.environ.get("WGS_CHAT_ID", ""),
                       help="chat id (.chat-N); default $WGS_CHAT_ID")
        p.add_argument("--model", default="", help="model, may carry a provider prefix (nex:qwen3-coder)")
        p.add_argument("--context-window", type=int, default=0,
                       help="context window in tokens when the server does not say "
                            f"(default {DEFAULT_CONTEXT_WINDOW}; the server's own figure wins)")
        if kind == "native":
            p.add_argument("--endpoint", required=True, help="base URL of the OpenAI-compatible API")
            p.add_argument("--ca-file", action="append", default=[],
                           help="PEM CA certificates trusted for the endpoint, in addition to the system store")
            p.add_argument("--max-tokens", type=int, default=0,
                           help=f"longest reply in tokens (default {DEFAULT_MAX_TOKENS})")
            p.add_argument("--temperature", type=float, default=None, help="sampling temperature (0-2)")
            p.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability (0-1]")
            p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
        if kind == "codex":
            p.add_argument("--endpoint", default="",
                           help="OpenAI-compatible endpoint for codex (a custom model provider; key: WGS_API_KEY)")
            p.add_argument("--wire-api", default="responses", choices=["responses", "chat"],
                           help="API codex speaks to --endpoint (default responses; chat for codex <= 0.80)")
    return parser


def _default_cli_argv(kind: str, model: str) -> list[str]:
    bare = strip_provider_prefix(model) if model else ""
    if kind == "claude":
        argv = ["claude", "--print", "--input-format", "stream-json", "--output-format", "stream-json",
                "--verbose", "--dangerously-skip-permissions"]
    else:
        argv = ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
    return [*argv, "--model", bare] if bare else argv


def _generation(ns: argparse.Namespace) -> GenerationSettings:
    max_tokens = ns.max_tokens or DEFAULT_MAX_TOKENS
    if max_tokens < 1:
        raise ConfigError(f"--max-tokens {ns.max_tokens} must be at least 1")
    if ns.temperature is not None and not 0.0 <= ns.temperature <= 2.0:
        raise ConfigError(f"--temperature {ns.temperature:g} must be between 0 and 2")
    if ns.top_p is not None and not 0.0 < ns.top_p <= 1.0:
        raise ConfigError(f"--top-p {ns.top_p:g} must be greater than 0 and at most 1")
    if any(not s for s in ns.stop):
        raise ConfigError("--stop needs a non-empty sequence")
    return GenerationSettings(max_tokens=max_tokens, temperature=ns.temperature, top_p=ns.top_p,
                              stop=tuple(ns.stop))


def _ca_files(ns: argparse.Namespace) -> tuple[str, ...]:
    files = list(ns.ca_file)
    bundle = env_str("WGS_CA_BUNDLE", "")
    if bundle:
        files.append(bundle)
    for path in files:
        what = f"WGS_CA_BUNDLE={path!r}" if path == bundle else f"--ca-file {path!r}"
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(f"{what} is not a readable file")
    return tuple(files)


def _endpoint_base(endpoint: str) -> str:
    try:
        return normalize_base_url(endpoint)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _backend(ns: argparse.Namespace, cli_argv: list[str], api_key: str) -> Backend:
    flag_window = ns.context_window
    if flag_window and flag_window < MIN_CONTEXT_WINDOW:
        raise ConfigError(f"--context-window {flag_window} is too small (minimum {MIN_CONTEXT_WINDOW} tokens)")
    window = flag_window or CLI_CONTEXT_WINDOW
    if ns.kind == "native":
        if not ns.model:
            raise ConfigError("--model is required for the native agent")
        base = _endpoint_base(ns.endpoint)
        gen = _generation(ns)
        settings = HttpSettings(
            endpoint=ns.endpoint, base_url=base, model=strip_provider_prefix(ns.model), api_key=api_key,
            ca_files=_ca_files(ns),
            connect_timeout=env_float("WGS_AGENT_CONNECT_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            read_timeout=env_float("WGS_AGENT_READ_TIMEOUT_SECONDS", 120.0, minimum=0.1),
            max_retries=env_int("WGS_AGENT_MAX_RETRIES", 4, minimum=0, maximum=20),
            backoff_base=env_float("WGS_AGENT_BACKOFF_SECONDS", 1.0, minimum=0.0),
            backoff_cap=env_float("WGS_AGENT_BACKOFF_CAP_SECONDS", 30.0, minimum=0.0),
        )
        prompt = env_str("WGS_AGENT_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT).replace("{chat}", ns.chat)
        return NativeBackend(OpenAIClient(settings), prompt, gen, context_window_flag=flag_window,
                             give_up_after=env_float("WGS_AGENT_ENDPOINT_WAIT_SECONDS", 0.0))
    argv = cli_argv or _default_cli_argv(ns.kind, ns.model)
    if ns.kind == "claude":
        session_file = state_dir() / "chats" / ns.chat / "claude-session-id"
        return ClaudeBackend(argv, context_chars=window * 4, session_file=session_file)
    if ns.endpoint:
        argv = _with_codex_provider(argv, codex_provider_args(_endpoint_base(ns.endpoint), ns.wire_api,
                                                              with_key=bool(api_key)))
    return CodexBackend(argv, context_chars=window * 4)


def _with_codex_provider(argv: list[str], provider: list[str]) -> list[str]:
    """Insert the provider's `-c` options after `exec` (codex's options go before the prompt)."""
    at = argv.index("exec") + 1 if "exec" in argv else min(1, len(argv))
    return [*argv[:at], *provider, *argv[at:]]


@contextlib.contextmanager
def _parent_trace() -> Iterator[None]:
    """Make the supervisor's spawn span (TRACEPARENT) the parent of this agent's spans."""
    carrier = {"traceparent": os.environ.get("TRACEPARENT", "")}
    token = otel_context.attach(extract(carrier)) if carrier["traceparent"] else None
    try:
        yield
    finally:
        if token is not None:
            otel_context.detach(token)


async def _run(ns: argparse.Namespace, cli_argv: list[str]) -> int:
    api_key = os.environ.get("WGS_API_KEY", "")
    backend = _backend(ns, cli_argv, api_key)
    graph = GraphLink(target("graph"), ns.chat)
    sink: StatusSink = LoggingSink()
    reporter: GraphStatusSink | None = None
    run_number = env_int("WGS_RUN_NUMBER", 0, minimum=0)
    if run_number:
        # Run by a supervisor: what this run reports becomes the chat's state.
        reporter = GraphStatusSink(graph.stub, ns.chat, run_number,
                                   flag_source=env_str("WGS_CONTEXT_WINDOW_SOURCE", ""))
        sink = FanOutSink([LoggingSink(), reporter])
    try:
        agent = AgentLoop(graph, backend, secrets=[api_key, os.environ.get("WGS_TOKEN", "")],
                          idle_exit_seconds=env_float("WGS_AGENT_IDLE_EXIT_SECONDS", 0.0), sink=sink)
        with _parent_trace():
            return await agent.run()
    finally:
        if reporter is not None:
            await reporter.close()
        await graph.close()


def main(argv: list[str] | None = None) -> int:
    args, cli_argv = _split_argv(list(sys.argv[1:] if argv is None else argv))
    ns = build_parser().parse_args(args)
    try:
        level = env_str("WGS_LOG_LEVEL", "INFO").upper()
        setup_logging("agent", level if level in {"DEBUG", "INFO", "WARNING", "ERROR"} else "INFO",
                      "text" if env_str("WGS_LOG_FORMAT", "json").lower() == "text" else "json")
        validate_chat_id(ns.chat, "--chat")
        # No httpx instrumentation: openai_http makes its own HTTP spans (current semantic-convention
        # names, ending when the streamed body is read rather than at the headers).
        telemetry.setup_tracing("agent", state_dir(), instrument_grpc_client=False, instrument_httpx=False)
        try:
            return asyncio.run(_run(ns, cli_argv))
        finally:
            telemetry.shutdown_tracing()
    except (ConfigError, WgsError) as exc:
        print(f"wgs-agent: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("internal error")
        print("wgs-agent: internal error (see the traceback above)", file=sys.stderr, flush=True)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
