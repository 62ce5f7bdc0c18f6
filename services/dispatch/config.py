"""The endpoints and defaults config (TOML at WGS_CONFIG, default <state dir>/config.toml).

Loading is strict: a malformed file, an unknown key or a bad value is a ConfigError naming the file,
the line and the problem (upstream silently fell back to defaults on a parse error). A missing file is
an empty config. `ConfigStore` re-reads the file when it changes, so edits apply without a restart;
a bad edit is logged and the last good config stays in force.

Format (see config.example.toml):

    [defaults]                 # all optional
    executor = "native"
    model = "qwen3-coder"
    endpoint = "lambda01"      # name of the default endpoint (or default = true on one endpoint)

    [[endpoints]]
    name = "lambda01"
    url = "https://lambda01.example:30000"
    provider = "oai-compat"    # default
    api_key_env = "LAMBDA01_API_KEY"
    default = true
    context_window = 32768     # optional: assumed when the server does not report its window
    ca_file = "/etc/ssl/lambda01-ca.pem"   # optional: extra CA for this endpoint (added to the system store)
    max_tokens = 1024          # optional generation settings (a chat's own values win)
    temperature = 0.2
    top_p = 0.95
    stop = ["</answer>"]
"""

from __future__ import annotations

import logging
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.dispatch import values
from wgs.common.errors import ConfigError
from wgs.common.logs import fields
from wgs.common.settings import env_str

log = logging.getLogger("wgs.dispatch.config")

DEFAULTS_KEYS = ("executor", "model", "endpoint")
ENDPOINT_KEYS = ("name", "url", "provider", "api_key_env", "default", "context_window", "ca_file", "max_tokens",
                 "temperature", "top_p", "stop")
TOP_KEYS = ("defaults", "endpoints")
MAX_ENDPOINTS = 1000


@dataclass(frozen=True)
class Endpoint:
    """One configured LLM endpoint."""

    name: str
    url: str
    provider: str = values.DEFAULT_PROVIDER
    api_key_env: str = ""
    default: bool = False
    context_window: int = 0  # 0: not configured
    ca_file: str = ""  # extra CA certificates for this endpoint's TLS (added to the system store)
    generation: values.Generation = field(default_factory=values.Generation)


@dataclass(frozen=True)
class Defaults:
    executor: str = ""  # normalized executor, or "" for the built-in default
    model: str = ""
    endpoint: str = ""  # name of the default endpoint as written under [defaults]


@dataclass(frozen=True)
class Config:
    """A validated config. `path` is where it was (or would be) read from, for messages."""

    path: Path
    defaults: Defaults = field(default_factory=Defaults)
    endpoints: tuple[Endpoint, ...] = ()

    def find(self, name: str) -> Endpoint | None:
        for ep in self.endpoints:
            if ep.name == name:
                return ep
        return None

    def default_endpoint(self) -> Endpoint | None:
        """[defaults].endpoint, else the endpoint with default = true. Never "the first one"."""
        if self.defaults.endpoint:
            return self.find(self.defaults.endpoint)
        for ep in self.endpoints:
            if ep.default:
                return ep
        return None

    def names(self) -> list[str]:
        return [ep.name for ep in self.endpoints]


def config_path() -> Path:
    """WGS_CONFIG, or <state dir>/config.toml (state dir from WGS_STATE_DIR)."""
    raw = env_str("WGS_CONFIG", "")
    if raw:
        return Path(raw).expanduser().resolve()
    return Path(env_str("WGS_STATE_DIR", "./.wgs")).expanduser().resolve() / "config.toml"


# --- locating keys in the source, so errors can name a line --------------------------------------

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*=")


class _Lines:
    """Maps (table, index, key) to the line where it is written (best effort; tomllib gives none)."""

    def __init__(self, text: str) -> None:
        self.keys: dict[tuple[str, int, str], int] = {}
        self.headers: dict[tuple[str, int], int] = {}
        counts: dict[str, int] = {}
        table, index = "", 0
        for n, line in enumerate(text.splitlines(), start=1):
            header = _HEADER_RE.match(line)
            if header:
                table = header.group(2).strip().strip("\"'")
                if header.group(1) == "[[":
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                else:
                    index = 0
                self.headers.setdefault((table, index), n)
                continue
            key = _KEY_RE.match(line)
            if key:
                self.keys.setdefault((table, index, key.group(1).strip("\"'")), n)

    def line(self, table: str, index: int = 0, key: str | None = None) -> int | None:
        if key is not None and (table, index, key) in self.keys:
            return self.keys[(table, index, key)]
        return self.headers.get((table, index))


def _error(path: Path, line: int | None, problem: str) -> ConfigError:
    where = f"{path}, line {line}" if line else str(path)
    return ConfigError(f"{where}: {problem}")


# --- parsing -------------------------------------------------------------------------------------

def parse_config(text: str, path: Path) -> Config:
    """Parse and validate config text; raise ConfigError naming file, line and problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        problem = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        if m:
            raise ConfigError(f"{path}, line {m.group(1)}, column {m.group(2)}: invalid TOML: {problem}") from None
        if "(at end of document)" in msg:
            problem = msg.replace(" (at end of document)", "")
            last = max(1, len(text.splitlines()))
            raise ConfigError(f"{path}, line {last}: invalid TOML: {problem} (at end of file)") from None
        raise ConfigError(f"{path}: invalid TOML: {problem}") from None
    lines = _Lines(text)

    for key in data:
        if key not in TOP_KEYS:
            raise _error(path, lines.line("", 0, key) or lines.line(key),
                         f"unknown key {key!r} (known: {', '.join(TOP_KEYS)})")

    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise _error(path, lines.line("", 0, "defaults"), "'defaults' must be a table: [defaults]")
    raw_endpoints = data.get("endpoints", [])
    if not isinstance(raw_endpoints, list) or not all(isinstance(e, dict) for e in raw_endpoints):
        raise _error(path, lines.line("", 0, "endpoints"), "'endpoints' must be an array of tables: [[endpoints]]")
    if len(raw_endpoints) > MAX_ENDPOINTS:
        raise _error(path, None, f"too many endpoints ({len(raw_endpoints)}, at most {MAX_ENDPOINTS})")

    endpoints: list[Endpoint] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_endpoints):
        ep = _parse_endpoint(raw, i, path, lines)
        if ep.name in seen:
            raise _error(path, lines.line("endpoints", i, "name"),
                         f"endpoint name {ep.name!r} is used twice (entries {seen[ep.name] + 1} and {i + 1}); "
                         "names must be unique")
        seen[ep.name] = i
        endpoints.append(ep)

    flagged = [i for i, ep in enumerate(endpoints) if ep.default]
    if len(flagged) > 1:
        names = " and ".join(repr(endpoints[i].name) for i in flagged)
        raise _error(path, lines.line("endpoints", flagged[1], "default"),
                     f"more than one endpoint has default = true ({names}); at most one may be the default")

    defaults = _parse_defaults(raw_defaults, path, lines)
    if defaults.endpoint:
        target = next((ep for ep in endpoints if ep.name == defaults.endpoint), None)
        if target is None:
            known = ", ".join(ep.name for ep in endpoints) or "none"
            raise _error(path, lines.line("defaults", 0, "endpoint"),
                         f"[defaults] endpoint = {defaults.endpoint!r} names no [[endpoints]] entry (known: {known})")
        if flagged and endpoints[flagged[0]].name != defaults.endpoint:
            raise _error(path, lines.line("defaults", 0, "endpoint"),
                         f"[defaults] endpoint = {defaults.endpoint!r} contradicts default = true on endpoint "
                         f"{endpoints[flagged[0]].name!r}; keep only one of them")
    return Config(path=path, defaults=defaults, endpoints=tuple(endpoints))


def _parse_defaults(raw: dict[str, Any], path: Path, lines: _Lines) -> Defaults:
    def line(key: str) -> int | None:
        return lines.line("defaults", 0, key)

    for key in raw:
        if key not in DEFAULTS_KEYS:
            raise _error(path, line(key), f"unknown key {key!r} in [defaults] (known: {', '.join(DEFAULTS_KEYS)})")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise _error(path, line(key), f"[defaults] {key} must be a string, got {type(value).__name__}")

    executor = ""
    if raw.get("executor"):
        normalized = values.normalize_executor(raw["executor"])
        if normalized is None:
            raise _error(path, line("executor"),
                         f"[defaults] executor = {raw['executor']!r} is not a known executor; "
                         f"valid: {values.executor_choices()}")
        if normalized == values.COMMAND:
            raise _error(path, line("executor"),
                         "[defaults] executor cannot be 'command': a command chat needs its own argv")
        executor = normalized
    model = raw.get("model", "")
    if model:
        problem = values.model_problem(model)
        if problem:
            raise _error(path, line("model"), f"[defaults] model {model!r} {problem}")
    endpoint = raw.get("endpoint", "")
    if endpoint:
        problem = values.endpoint_name_problem(endpoint)
        if problem:
            hint = " ([defaults] endpoint takes the name of an [[endpoints]] entry)" if values.looks_like_url(
                endpoint) else ""
            raise _error(path, line("endpoint"), f"[defaults] endpoint {endpoint!r} {problem}{hint}")
    if model:
        problem = values.model_executor_problem(executor or values.NATIVE, model)
        if problem:
            raise _error(path, line("model"), f"[defaults] model: {problem} (set [defaults] executor)")
    return Defaults(executor=executor, model=model, endpoint=endpoint)


def _parse_endpoint(raw: dict[str, Any], i: int, path: Path, lines: _Lines) -> Endpoint:
    def line(key: str | None = None) -> int | None:
        return lines.line("endpoints", i, key)

    what = f"[[endpoints]] entry {i + 1}"
    for key in raw:
        if key not in ENDPOINT_KEYS:
            hint = ""
            if key in ("api_key", "key", "token", "api_key_file"):
                hint = ("; API keys are never stored in the config: put the key in an environment variable "
                        "of the supervisor and name it with api_key_env")
            raise _error(path, line(key),
                         f"unknown key {key!r} in {what} (known: {', '.join(ENDPOINT_KEYS)}){hint}")

    def string(key: str, required: bool = False) -> str:
        if key not in raw:
            if required:
                raise _error(path, line(), f"{what} has no {key!r}")
            return ""
        value = raw[key]
        if not isinstance(value, str):
            raise _error(path, line(key), f"{what}: {key} must be a string, got {type(value).__name__}")
        return value

    name = string("name", required=True)
    problem = values.endpoint_name_problem(name)
    if problem:
        raise _error(path, line("name"), f"{what}: name {name!r} {problem}")
    what = f"endpoint {name!r}"
    url = string("url", required=True)
    problem = values.url_problem(url)
    if problem:
        raise _error(path, line("url"), f"{what}: url {problem}")
    provider = string("provider") or values.DEFAULT_PROVIDER
    if provider not in values.PROVIDERS:
        raise _error(path, line("provider"),
                     f"{what}: provider {provider!r} is not supported (known: {', '.join(values.PROVIDERS)})")
    api_key_env = string("api_key_env")
    if api_key_env and not values.ENV_NAME_RE.match(api_key_env):
        raise _error(path, line("api_key_env"),
                     f"{what}: api_key_env {api_key_env!r} is not an environment variable name "
                     "(it names the variable holding the key, not the key itself)")
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise _error(path, line("default"), f"{what}: default must be true or false")
    window = raw.get("context_window", 0)
    if "context_window" in raw:
        problem = values.context_window_problem(window)
        if problem:
            raise _error(path, line("context_window"), f"{what}: context_window {problem}")
    ca_file = string("ca_file")
    if ca_file and not Path(ca_file).is_absolute():
        raise _error(path, line("ca_file"), f"{what}: ca_file {ca_file!r} must be an absolute path to a PEM file")
    generation = values.Generation(
        max_tokens=raw.get("max_tokens"), temperature=raw.get("temperature"), top_p=raw.get("top_p"),
        stop=tuple(raw["stop"]) if isinstance(raw.get("stop"), list) else raw.get("stop", ()),
    )
    for key, problem in values.generation_problems(generation):
        raise _error(path, line(key), f"{what}: {key} {problem}")
    return Endpoint(name=name, url=url, provider=provider, api_key_env=api_key_env, default=default,
                    context_window=window, ca_file=ca_file, generation=generation)


def load_config(path: Path) -> Config:
    """Read and validate the config at `path`; a missing file is an empty config."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Config(path=path)
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file (set WGS_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, path)


Signature = tuple[int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigStore:
    """The current config, re-read when the file changes (checked cheaply with stat on each use).

    The first load raises ConfigError (fail fast at start). Later bad edits are logged once and
    remembered in `last_error`; the last good config stays in force until the file is fixed.
    """

    def __init__(self, path: Path, *, explicit: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature = _signature(path)
        self._config = load_config(path)
        self.last_error: str = ""
        if self._signature is None:
            # WGS_CONFIG pointing at nothing is likely a typo: say so louder than the default location.
            log.log(logging.WARNING if explicit else logging.INFO,
                    "no config file at %s; using an empty config (no endpoints, built-in defaults)", path,
                    extra=fields(config=str(path)))
        else:
            self._log_loaded("config loaded")

    def _log_loaded(self, what: str) -> None:
        cfg = self._config
        default = cfg.default_endpoint()
        log.info("%s from %s: %d endpoint(s), default endpoint %s", what, self.path, len(cfg.endpoints),
                 repr(default.name) if default else "none",
                 extra=fields(config=str(self.path), endpoints=cfg.names()))

    def current(self) -> Config:
        sig = _signature(self.path)
        if sig == self._signature:
            return self._config
        with self._lock:
            if sig == self._signature:
                return self._config
            try:
                config = load_config(self.path)
            except ConfigError as exc:
                self._signature = sig
                self.last_error = str(exc)
                log.error("config change rejected, keeping the previous config: %s", exc,
                          extra=fields(config=str(self.path)))
                return self._config
            self._signature = sig
            self._config = config
            self.last_error = ""
            self._log_loaded("config reloaded" if sig is not None else "config file removed; now empty")
            return config


def store_from_env() -> ConfigStore:
    return ConfigStore(config_path(), explicit=bool(env_str("WGS_CONFIG", "")))
