"""Value rules shared by the config loader and the planner: executors, models, endpoint URLs and names.

Each check returns a problem string (or the normalized value) rather than raising, so the config
loader can report it as a ConfigError with file and line and the planner as a gRPC status.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wgs.common.validation import (
    CLAUDE,
    CODEX,
    COMMAND,
    EXECUTORS,
    MAX_ENDPOINT,
    MAX_MODEL,
    NATIVE,
    split_model,
)

# Accepted spellings → executor. Small and explicit on purpose: anything else is an error, never a
# silent fall-through to a default (upstream ignored "nex" and ran claude instead). Only dispatch
# interprets executors; the supervisor stores what the plan says.
EXECUTOR_ALIASES: dict[str, str] = {
    "native": NATIVE,
    "nex": NATIVE,
    "wg-nex": NATIVE,
    "claude": CLAUDE,
    "claude-code": CLAUDE,
    "codex": CODEX,
    "command": COMMAND,
    "shell": COMMAND,
}


def executor_choices() -> str:
    aliases = ", ".join(f"{a} → {e}" for a, e in EXECUTOR_ALIASES.items() if a != e)
    return f"{', '.join(EXECUTORS)} (aliases: {aliases})"


def normalize_executor(value: str) -> str | None:
    """The executor an accepted spelling means (case-insensitive), or None if unknown."""
    return EXECUTOR_ALIASES.get(value.strip().lower())

# Executors that talk to an LLM endpoint themselves (our native agent), and those that may.
NEEDS_ENDPOINT = frozenset({NATIVE})
TAKES_ENDPOINT = frozenset({NATIVE, CODEX})  # codex: an OpenAI-compatible endpoint as a custom provider


# Prefixes a CLI executor accepts (the prefix is stripped before it reaches the CLI's --model).
EXECUTOR_MODEL_PREFIXES: dict[str, frozenset[str]] = {
    CLAUDE: frozenset({"claude"}),
    CODEX: frozenset({"codex", "openai"}),
}

# Endpoint providers: all speak the OpenAI-compatible chat-completions API the native agent uses.
PROVIDERS: tuple[str, ...] = ("oai-compat", "openai", "openrouter", "vllm", "ollama", "llamacpp")
DEFAULT_PROVIDER = "oai-compat"

MODEL_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:/@+-]*\Z")
ENDPOINT_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def model_problem(model: str) -> str | None:
    if len(model) > MAX_MODEL:
        return f"is too long ({len(model)} characters, at most {MAX_MODEL})"
    if not MODEL_RE.match(model):
        return ("is not a valid model name: use letters, digits and . _ : / @ + -, "
                "starting with a letter or digit")
    return None


def model_executor_problem(executor: str, model: str) -> str | None:
    """Why `model` cannot run on `executor` (a provider prefix of another executor), or None."""
    prefix, _ = split_model(model)
    if not prefix:
        return None
    allowed = EXECUTOR_MODEL_PREFIXES.get(executor)
    if allowed is not None and prefix not in allowed:
        return (f"model {model!r} has provider prefix {prefix!r}, which executor {executor!r} cannot use "
                f"(it accepts a bare model name or the prefix {' or '.join(repr(p) for p in sorted(allowed))})")
    if allowed is None and prefix in EXECUTOR_MODEL_PREFIXES:
        return f"model {model!r} is a {prefix} model; use executor {prefix!r} for it, or give a model the endpoint serves"
    return None


def endpoint_name_problem(name: str) -> str | None:
    if not ENDPOINT_NAME_RE.match(name):
        return "is not a valid endpoint name: use 1-64 letters, digits, '.', '_' or '-'"
    return None


def looks_like_url(value: str) -> bool:
    return "://" in value


def url_problem(url: str) -> str | None:
    """Why `url` cannot be an endpoint base URL, or None when it is fine."""
    if len(url) > MAX_ENDPOINT:
        return f"is too long ({len(url)} characters, at most {MAX_ENDPOINT})"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    del port
    if parts.scheme.lower() not in ("http", "https"):
        return "must start with http:// or https://"
    if parts.username is not None or parts.password is not None:
        return ("must not contain credentials (user:password@); put the API key in an environment variable "
                "of the supervisor and name it with api_key_env in the endpoints config")
    if not parts.hostname:
        return "has no host"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return ("must not contain a query string or fragment (they could carry credentials and would "
                "end up in the agent's argv); use a plain base URL such as https://host:port/v1")
    return None


def same_url(a: str, b: str) -> bool:
    """Whether two endpoint base URLs denote the same API (ignoring scheme/host case, default port, /v1)."""
    pa, pb = urlsplit(a), urlsplit(b)
    return (
        pa.scheme.lower() == pb.scheme.lower()
        and (pa.hostname or "") == (pb.hostname or "")
        and _port(pa.scheme, pa.port) == _port(pb.scheme, pb.port)
        and _api_path(pa.path) == _api_path(pb.path)
    )


def _api_path(path: str) -> str:
    """The agent appends /v1 when missing, so 'https://h:1' and 'https://h:1/v1/' are one endpoint."""
    path = path.rstrip("/")
    return path[:-3] if path.endswith("/v1") else path


def _port(scheme: str, port: int | None) -> int:
    if port is not None:
        return port
    return 443 if scheme.lower() == "https" else 80

MIN_CONTEXT_WINDOW = 256  # the native agent refuses smaller windows
MAX_CONTEXT_WINDOW = 10_000_000
MAX_MAX_TOKENS = 1_000_000
MAX_STOP_SEQUENCES = 4  # what OpenAI's API accepts
MAX_STOP_LEN = 200


@dataclass(frozen=True)
class Generation:
    """Generation settings as given (None / empty: not given). Values are checked by generation_problems."""

    max_tokens: Any = None
    temperature: Any = None
    top_p: Any = None
    stop: Any = ()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def context_window_problem(value: Any) -> str | None:
    if not _is_int(value) or not MIN_CONTEXT_WINDOW <= value <= MAX_CONTEXT_WINDOW:
        return f"must be an integer number of tokens from {MIN_CONTEXT_WINDOW} to {MAX_CONTEXT_WINDOW}"
    return None


def generation_problems(g: Generation) -> Iterator[tuple[str, str]]:
    """(field, problem) for each bad value of `g`."""
    if g.max_tokens is not None and (not _is_int(g.max_tokens) or not 1 <= g.max_tokens <= MAX_MAX_TOKENS):
        yield "max_tokens", f"must be an integer from 1 to {MAX_MAX_TOKENS}"
    if g.temperature is not None and (not _is_number(g.temperature) or not 0.0 <= g.temperature <= 2.0):
        yield "temperature", "must be a number from 0 to 2"
    if g.top_p is not None and (not _is_number(g.top_p) or not 0.0 < g.top_p <= 1.0):
        yield "top_p", "must be a number greater than 0 and at most 1"
    stop = g.stop
    if isinstance(stop, str) or not isinstance(stop, tuple | list):
        yield "stop", "must be a list of strings"
        return
    if len(stop) > MAX_STOP_SEQUENCES:
        yield "stop", f"has {len(stop)} sequences, at most {MAX_STOP_SEQUENCES}"
    for item in stop:
        if not isinstance(item, str) or not item or len(item) > MAX_STOP_LEN or "\x00" in item:
            yield "stop", f"entries must be non-empty strings of at most {MAX_STOP_LEN} characters"
            return


__all__ = ["CLAUDE", "CODEX", "COMMAND", "EXECUTORS", "NATIVE", "executor_choices", "normalize_executor", "split_model"]
