"""Value rules shared by the config loader and the planner: executors, models, endpoint URLs and names.

Each check returns a problem string (or the normalized value) rather than raising, so the config
loader can report it as a ConfigError with file and line and the planner as a gRPC status.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from wgs.common.validation import (
    CLAUDE,
    CODEX,
    COMMAND,
    EXECUTORS,
    MAX_ENDPOINT,
    MAX_MODEL,
    NATIVE,
    executor_choices,
    normalize_executor,
    split_model,
)

# Executors that talk to an LLM endpoint themselves (only our native agent).
NEEDS_ENDPOINT = frozenset({NATIVE})


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

__all__ = ["CLAUDE", "CODEX", "COMMAND", "EXECUTORS", "NATIVE", "executor_choices", "normalize_executor"]
