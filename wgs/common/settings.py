"""Environment-variable configuration shared by every wgs process.

Every variable a service reads is declared here (ENV_VARS), with its default and meaning, so the
README, the Kubernetes manifests and the checks in tests stay in one place. Bad values fail fast
with a ConfigError naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wgs.common.errors import ConfigError

DEFAULT_PORTS = {"graph": 50151, "dispatch": 50152, "supervisor": 50153}
SERVICES = ("graph", "dispatch", "supervisor")


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    help: str
    services: tuple[str, ...]
    secret: bool = False  # never printed (`wgs env`)


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("WGS_STATE_DIR", "./.wgs", "Directory for the database, chat logs, config and traces.", (*SERVICES, "cli")),
    EnvVar("WGS_GRAPH_LISTEN", "127.0.0.1:50151", "host:port the graph service binds (port 0: any free port).", ("graph",)),
    EnvVar("WGS_DISPATCH_LISTEN", "127.0.0.1:50152", "host:port the dispatch service binds.", ("dispatch",)),
    EnvVar("WGS_SUPERVISOR_LISTEN", "127.0.0.1:50153", "host:port the supervisor binds.", ("supervisor",)),
    EnvVar("WGS_GRAPH_ADDR", "127.0.0.1:50151", "Address (gRPC target) of the graph service.",
           ("supervisor", "cli", "agent")),
    EnvVar("WGS_DISPATCH_ADDR", "127.0.0.1:50152", "Address of the dispatch service.", ("supervisor", "cli")),
    EnvVar("WGS_SUPERVISOR_ADDR", "127.0.0.1:50153", "Address of the supervisor (chat API).", ("cli",)),
    EnvVar("WGS_ADDRESS_FILE", "", "If set, the service writes its bound host:port to this file once serving.", SERVICES),
    EnvVar("WGS_SHUTDOWN_GRACE_SECONDS", "10", "Grace period for in-flight calls on SIGTERM/SIGINT.", SERVICES),
    EnvVar("WGS_RPC_TIMEOUT_SECONDS", "10", "Deadline of every outgoing unary call.", ("supervisor", "cli")),
    EnvVar("WGS_LOG_LEVEL", "INFO", "Log level: DEBUG, INFO, WARNING, ERROR.", SERVICES),
    EnvVar("WGS_LOG_FORMAT", "json", "Log format on stderr: json or text.", SERVICES),
    EnvVar("WGS_DATABASE_URL", "sqlite:///<state dir>/graph.db",
           "SQLAlchemy URL of the graph database (sqlite:///… or postgresql+psycopg://…).", ("graph",)),
    EnvVar("WGS_CONFIG", "<state dir>/config.toml", "Endpoints and defaults config (TOML).", ("dispatch", "supervisor")),
    EnvVar("WGS_MAX_LIVE_CHATS", "100", "Cap on live chats; CreateChat beyond it is RESOURCE_EXHAUSTED.", ("supervisor",)),
    EnvVar("WGS_SUPERVISOR_ID", "<hostname>:<state dir>", "Stable id of this supervisor (owner of its chats).",
           ("supervisor",)),
    EnvVar("WGS_LEASE_SECONDS", "30", "Length of the supervisor's lease on its chats.", ("supervisor",)),
    EnvVar("WGS_SUPERVISOR_ADVERTISE_ADDR", "<bound listen address>",
           "host:port other supervisor replicas reach this one at (recorded with its leases); in a cluster the "
           "pod's stable DNS name.", ("supervisor",)),
    EnvVar("WGS_CHAT_MEMORY_BYTES", "41943040", "Memory one live chat costs (agent + run monitor); CreateChat is "
           "RESOURCE_EXHAUSTED when it would not fit under the container's memory limit (0: no check).",
           ("supervisor",)),
    EnvVar("WGS_MAX_CONCURRENT_CREATES", "<1 per usable core, 2-32>", "CreateChat calls spawning at once; more "
           "wait briefly or are RESOURCE_EXHAUSTED with a retry hint.", ("supervisor",)),
    EnvVar("WGS_CREATE_QUEUE_SECONDS", "0.2", "Longest a CreateChat waits for a spawn slot before RESOURCE_EXHAUSTED.",
           ("supervisor",)),
    EnvVar("WGS_RESTART_START_SECONDS", "1", "An agent exiting sooner than this after its start is a failed start.",
           ("supervisor",)),
    EnvVar("WGS_RESTART_INITIAL_BACKOFF_SECONDS", "0.5", "First restart delay after a failure (doubles).",
           ("supervisor",)),
    EnvVar("WGS_RESTART_MAX_BACKOFF_SECONDS", "30", "Cap of the restart delay.", ("supervisor",)),
    EnvVar("WGS_RESTART_RESET_AFTER_SECONDS", "60", "Uptime after which a run counts as healthy (backoff reset).",
           ("supervisor",)),
    EnvVar("WGS_RESTART_MAX_FAILURES", "5", "More failures than this within the window → FAILED.",
           ("supervisor",)),
    EnvVar("WGS_RESTART_FAILURE_WINDOW_SECONDS", "120", "Window for counting failures.", ("supervisor",)),
    EnvVar("WGS_STOP_GRACE_SECONDS", "5", "Grace between SIGTERM and SIGKILL when stopping an agent.",
           ("supervisor",)),
    EnvVar("WGS_MAX_RUN_LOG_BYTES", "8388608", "Size cap of a run's stdout/stderr file (keeps the tail).",
           ("supervisor",)),
    EnvVar("WGS_STACK_RESTART_BACKOFF_SECONDS", "1",
           "`wgs up`: first delay before the keeper restarts a crashed service (doubles, at most 30 s).", ("cli",)),
    EnvVar("WGS_STACK_MAX_START_FAILURES", "5",
           "`wgs up`: failed starts in a row (dead before serving or within 10 s) before the keeper gives up.",
           ("cli",)),
    # Security (docs/security.md).
    EnvVar("WGS_AUTH", "on", "on: every RPC needs a token (health excepted); off: no authentication at all "
           "(a warning at start; local experiments only).", SERVICES),
    EnvVar("WGS_AUTH_SECRET_FILE", "<state dir>/auth/secret",
           "File with the stack secret (>= 32 random characters) that tokens are derived from; "
           "`wgs up` creates the default one (0600). Kubernetes: a mounted Secret.", (*SERVICES, "cli")),
    EnvVar("WGS_TOKEN", "", "Token presented on every call (from `wgs token create`); default: one derived "
           "from the stack secret if readable. The supervisor sets it for each agent run.", ("cli", "agent"),
           secret=True),
    EnvVar("WGS_TOKEN_FILE", "", "File holding the token, instead of WGS_TOKEN.", ("cli", "agent")),
    EnvVar("WGS_TLS_CERT_FILE", "", "PEM certificate chain: a service serves TLS with it; a client presents it "
           "(mutual TLS). cert-manager layout: tls.crt.", (*SERVICES, "cli", "agent")),
    EnvVar("WGS_TLS_KEY_FILE", "", "PEM private key of WGS_TLS_CERT_FILE (tls.key).", (*SERVICES, "cli", "agent")),
    EnvVar("WGS_TLS_CA_FILE", "", "PEM CA bundle (ca.crt): clients verify servers with it (and dial TLS); with "
           "WGS_TLS_CLIENT_AUTH it verifies client certificates.", (*SERVICES, "cli", "agent")),
    EnvVar("WGS_TLS_CLIENT_AUTH", "0", "1: the service requires client certificates signed by WGS_TLS_CA_FILE "
           "(mutual TLS).", SERVICES),
    EnvVar("WGS_TLS_SERVER_NAME", "", "Name expected in the server certificate when it differs from the dialled "
           "host.", ("supervisor", "cli", "agent")),
    EnvVar("WGS_ALLOW_INSECURE_LISTEN", "0", "1: allow listening without TLS on a non-loopback address "
           "(logged as a WARNING); refused otherwise.", SERVICES),
    EnvVar("WGS_HEALTH_LISTEN", "", "If set, host:port of an extra plaintext listener serving only "
           "grpc.health.v1 (Kubernetes gRPC probes cannot speak TLS).", SERVICES),
    EnvVar("WGS_CGROUP_ROOT", "auto",
           "cgroup v2 directory in which each run gets its own cgroup (auto: the supervisor's own cgroup "
           "if writable; off: no cgroups, runs are contained by their run monitor as subreaper).", ("supervisor",)),
    EnvVar("WGS_JAEGER_URL", "", "Base URL of a Jaeger UI; `wgs chat show` prints a link to the chat's trace.", ("cli",)),
    # Read by the agent processes (`wgs-agent`, wgs/agent); the supervisor sets the first five.
    EnvVar("WGS_CHAT_ID", "", "Agent: the chat it answers (default of --chat).", ("agent",)),
    EnvVar("WGS_RUN_NUMBER", "", "Agent: number of this run of the chat's agent (for logs).", ("agent",)),
    EnvVar("WGS_RUN_ID", "", "Agent: set by the supervisor to `<state dir>/chats/<chat>/run-<n>`; marks every "
           "process of the run (found by it if its monitor dies). Do not change it.", ("agent",)),
    EnvVar("TRACEPARENT", "", "Agent: W3C trace context of the spawn span; the agent's spans join it.", ("agent",)),
    EnvVar("WGS_API_KEY", "", "Agent (native): bearer token for the endpoint; secret, never logged.", ("agent",),
           secret=True),
    EnvVar("WGS_CA_BUNDLE", "", "Agent (native): PEM file of CA certificates trusted for the endpoint's TLS in "
           "addition to the OS trust store (never instead of it; verification is always on).", ("agent",)),
    EnvVar("WGS_AGENT_CONNECT_TIMEOUT_SECONDS", "10", "Agent (native): connect timeout to the endpoint.", ("agent",)),
    EnvVar("WGS_AGENT_READ_TIMEOUT_SECONDS", "120",
           "Agent (native): longest silence while waiting for a reply; then SYSTEM_ERROR, no retry.", ("agent",)),
    EnvVar("WGS_AGENT_MAX_RETRIES", "4",
           "Agent (native): retries per request on 429/408/500 and a connection lost mid-reply (an outage — "
           "refused, DNS, 502/503/504, loading — is waited out without limit).", ("agent",)),
    EnvVar("WGS_AGENT_BACKOFF_SECONDS", "1",
           "Agent (native): first retry delay, also while waiting for the endpoint (doubles each retry).", ("agent",)),
    EnvVar("WGS_AGENT_BACKOFF_CAP_SECONDS", "30", "Agent (native): cap of a retry delay, Retry-After included.",
           ("agent",)),
    EnvVar("WGS_AGENT_GRAPH_WAIT_SECONDS", "60",
           "Agent: give up (exit 7) after the graph service stayed unreachable this long (its calls are "
           "retried and its message stream re-opened meanwhile).", ("agent",)),
    EnvVar("WGS_AGENT_ENDPOINT_WAIT_SECONDS", "0",
           "Agent (native): give up (exit 3) after waiting this long for an unavailable endpoint "
           "(0 = wait until it is back).", ("agent",)),
    EnvVar("WGS_AGENT_IDLE_EXIT_SECONDS", "0",
           "Agent: exit 0 after this long with nothing to answer (0 = never); respawned on the next message.",
           ("agent",)),
    EnvVar("WGS_AGENT_SYSTEM_PROMPT", "<built-in>", "Agent (native): system prompt ({chat} = chat id).",
           ("agent",)),
)


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} is too small (minimum {minimum})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} is too large (maximum {maximum})")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is too small (minimum {minimum})")
    return value


def parse_hostport(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}={value!r} is not host:port (for example 127.0.0.1:50151)")
    host = host.strip("[]")
    try:
        port_no = int(port)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: port {port!r} is not a number") from None
    if not 0 <= port_no <= 65535:
        raise ConfigError(f"{name}={value!r}: port must be 0-65535")
    return host, port_no


def state_dir() -> Path:
    return Path(env_str("WGS_STATE_DIR", "./.wgs")).expanduser().resolve()


@dataclass(frozen=True)
class CommonSettings:
    """Settings every service process reads."""

    service: str
    state_dir: Path
    listen: str
    address_file: str
    shutdown_grace: float
    log_level: str
    log_format: str

    @classmethod
    def from_env(cls, service: str) -> CommonSettings:
        listen_var = f"WGS_{service.upper()}_LISTEN"
        listen = env_str(listen_var, f"127.0.0.1:{DEFAULT_PORTS[service]}")
        parse_hostport(listen_var, listen)
        level = env_str("WGS_LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"WGS_LOG_LEVEL={level!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        fmt = env_str("WGS_LOG_FORMAT", "json").lower()
        if fmt not in {"json", "text"}:
            raise ConfigError(f"WGS_LOG_FORMAT={fmt!r} must be json or text")
        return cls(
            service=service,
            state_dir=state_dir(),
            listen=listen,
            address_file=env_str("WGS_ADDRESS_FILE", ""),
            shutdown_grace=env_float("WGS_SHUTDOWN_GRACE_SECONDS", 10.0),
            log_level=level,
            log_format=fmt,
        )


# What graph and dispatch keep of the environment `wgs up` starts them in: their own settings and
# what a Python process needs. Only the supervisor gets everything (API keys for its agents).
_KEPT_PREFIXES = ("WGS_", "OTEL_", "GRPC_", "PYTHON", "LC_", "COVERAGE_")
_KEPT_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "VIRTUAL_ENV",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "LD_LIBRARY_PATH", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
    "https_proxy", "no_proxy", "TERM", "HOSTNAME",
})
_NEVER_TO_SERVICES = frozenset({"WGS_TOKEN", "WGS_TOKEN_FILE"})  # a user's token is not a service's


def service_env(service: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment to start `service` with, from `environ` (least privilege).

    The supervisor gets everything (it copies API keys into its agents' environments) except a
    user's token; graph and dispatch get only their settings and the basics of a process (PG* too
    for graph, for libpq), so no *_API_KEY or other secret of the user's shell reaches them."""
    out = {k: v for k, v in environ.items() if k not in _NEVER_TO_SERVICES}
    if service == "supervisor":
        return out
    prefixes = (*_KEPT_PREFIXES, "PG") if service == "graph" else _KEPT_PREFIXES
    return {k: v for k, v in out.items()
            if (k in _KEPT_NAMES or k.startswith(prefixes)) and not any(var.secret and var.name == k for var in ENV_VARS)}


def rpc_timeout() -> float:
    return env_float("WGS_RPC_TIMEOUT_SECONDS", 10.0, minimum=0.1)


def target(service: str) -> str:
    """gRPC target of a service for clients."""
    var = f"WGS_{service.upper()}_ADDR"
    value = env_str(var, f"127.0.0.1:{DEFAULT_PORTS[service]}")
    parse_hostport(var, value)
    return value
