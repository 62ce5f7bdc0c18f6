"""`wgs-agent`: the agent process the supervisor runs for a chat.

  wgs-agent native --chat .chat-N --model M --endpoint URL [--context-window N]
  wgs-agent claude --chat .chat-N --model M [-- claude --print --input-format stream-json …]
  wgs-agent codex  --chat .chat-N --model M [-- codex exec --json …]

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

from wgs.agent.cli_runners import ClaudeBackend, CodexBackend
from wgs.agent.errors import EXIT_CODES_HELP, EXIT_INTERNAL, EXIT_USAGE
from wgs.agent.graph_link import GraphLink
from wgs.agent.loop import AgentLoop, Backend
from wgs.agent.native import NativeBackend
from wgs.agent.openai_http import HttpSettings, OpenAIClient, normalize_base_url, strip_provider_prefix
from wgs.common import telemetry
from wgs.common.errors import ConfigError, WgsError
from wgs.common.logs import setup_logging
from wgs.common.settings import env_float, env_int, env_str, state_dir, target
from wgs.common.validation import chat_id as validate_chat_id

log = logging.getLogger("wgs.agent")

DEFAULT_CONTEXT_WINDOW = 32768
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
                       help=f"context window in tokens (default {DEFAULT_CONTEXT_WINDOW})")
        if kind == "native":
            p.add_argument("--endpoint", required=True, help="base URL of the OpenAI-compatible API")
            p.add_argument("--max-tokens", type=int, default=0, help="longest reply in tokens")
            p.add_argument("--temperature", type=float, default=None, help="sampling temperature")
            p.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
            p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
            p.add_argument("--ca-file", default="", help="extra CA certificates for the endpoint's TLS")
    return parser


def _default_cli_argv(kind: str, model: str) -> list[str]:
    bare = strip_provider_prefix(model) if model else ""
    if kind == "claude":
        argv = ["claude", "--print", "--input-format", "stream-json", "--output-format", "stream-json",
                "--verbose", "--dangerously-skip-permissions"]
    else:
        argv = ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
    return [*argv, "--model", bare] if bare else argv


def _backend(ns: argparse.Namespace, cli_argv: list[str], api_key: str) -> Backend:
    window = ns.context_window or DEFAULT_CONTEXT_WINDOW
    if window < 256:
        raise ConfigError(f"--context-window {window} is too small (minimum 256 tokens)")
    if ns.kind == "native":
        if not ns.model:
            raise ConfigError("--model is required for the native agent")
        try:
            base = normalize_base_url(ns.endpoint)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        ca = env_str("WGS_CA_BUNDLE", "")
        if ca and not os.path.isfile(ca):
            raise ConfigError(f"WGS_CA_BUNDLE={ca!r} is not a readable file")
        settings = HttpSettings(
            endpoint=ns.endpoint, base_url=base, model=strip_provider_prefix(ns.model), api_key=api_key,
            ca_bundle=ca,
            connect_timeout=env_float("WGS_AGENT_CONNECT_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            read_timeout=env_float("WGS_AGENT_READ_TIMEOUT_SECONDS", 120.0, minimum=0.1),
            max_retries=env_int("WGS_AGENT_MAX_RETRIES", 4, minimum=0, maximum=20),
            backoff_base=env_float("WGS_AGENT_BACKOFF_SECONDS", 1.0, minimum=0.0),
            backoff_cap=env_float("WGS_AGENT_BACKOFF_CAP_SECONDS", 30.0, minimum=0.0),
            context_window=window,
            max_reply_tokens=ns.max_tokens or 4096,
        )
        prompt = env_str("WGS_AGENT_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT).replace("{chat}", ns.chat)
        return NativeBackend(OpenAIClient(settings), prompt)
    argv = cli_argv or _default_cli_argv(ns.kind, ns.model)
    if ns.kind == "claude":
        return ClaudeBackend(argv, context_chars=window * 4)
    return CodexBackend(argv, context_chars=window * 4)


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
    try:
        agent = AgentLoop(graph, backend, secrets=[api_key],
                          idle_exit_seconds=env_float("WGS_AGENT_IDLE_EXIT_SECONDS", 0.0))
        with _parent_trace():
            return await agent.run()
    finally:
        await graph.close()


def main(argv: list[str] | None = None) -> int:
    args, cli_argv = _split_argv(list(sys.argv[1:] if argv is None else argv))
    ns = build_parser().parse_args(args)
    try:
        level = env_str("WGS_LOG_LEVEL", "INFO").upper()
        setup_logging("agent", level if level in {"DEBUG", "INFO", "WARNING", "ERROR"} else "INFO",
                      "text" if env_str("WGS_LOG_FORMAT", "json").lower() == "text" else "json")
        validate_chat_id(ns.chat, "--chat")
        telemetry.setup_tracing("agent", state_dir(), instrument_grpc_client=False, instrument_httpx=True)
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
