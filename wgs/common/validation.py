"""Validation of ids and fields shared by every service (one place for each rule)."""

from __future__ import annotations

import re

from wgs.common.errors import InvalidArgument

CHAT_PREFIX = ".chat-"
CHAT_LOOP_TAG = "chat-loop"
ARCHIVED_TAG = "archived"

# Every pattern is applied with fullmatch(): `$` would also match before a trailing newline, and a
# chat id is a path component (procs.chat_dir), so ".chat-1\n" must not pass.
# (\Z, not $, so a caller using .match() is safe too.)
CHAT_ID_RE = re.compile(r"\A\.chat-(0|[1-9][0-9]{0,8})\Z")
TASK_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
REQUEST_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
TAG_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")

NATIVE = "native"
CLAUDE = "claude"
CODEX = "codex"
COMMAND = "command"

EXECUTORS: tuple[str, ...] = (NATIVE, CLAUDE, CODEX, COMMAND)

# Provider prefixes recognized in model strings ("nex:qwen3-coder"), as upstream's KNOWN_PROVIDERS;
# anything else before a ':' is part of the model name ("deepseek-coder-v2:16b").
KNOWN_MODEL_PREFIXES = frozenset({
    "claude", "openrouter", "nex", "oai-compat", "openai", "codex", "gemini", "ollama", "llamacpp", "vllm",
    "local", "native",
})

MAX_TITLE = 512
MAX_NAME = 200
MAX_DESCRIPTION = 64 * 1024
MAX_MESSAGE = 256 * 1024
MAX_LOG_MESSAGE = 8 * 1024
MAX_MODEL = 200
MAX_ENDPOINT = 2048
MAX_ARGV_ITEMS = 256
MAX_ARG_LEN = 8192
MAX_PATH = 4096


def _show(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


show = _show


def chat_id(value: str, field: str = "chat_id") -> str:
    """Validate a chat id (".chat-N"); the id is also a path component, so this guards the state dir."""
    if not value:
        raise InvalidArgument(f"{field} is required (a chat id like '.chat-3')", field)
    if not CHAT_ID_RE.fullmatch(value):
        raise InvalidArgument(f"{field} {_show(value)} is not a chat id; expected '.chat-N' with N a number", field)
    return value


def chat_name(value: str, field: str = "name") -> str:
    """A chat's display name: at most MAX_NAME bytes, one line (the title becomes "Chat: <name>")."""
    text(value, field, required=False, max_len=MAX_NAME)
    if "\n" in value or "\r" in value:
        raise InvalidArgument(f"{field} must be a single line", field)
    return value


def chat_number(chat: str) -> int:
    return int(chat_id(chat)[len(CHAT_PREFIX) :])


def task_id(value: str, field: str = "id") -> str:
    if not value:
        raise InvalidArgument(f"{field} is required", field)
    if CHAT_ID_RE.fullmatch(value):
        return value
    if not TASK_ID_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} {_show(value)} is not a valid task id: use 1-128 characters of "
            "letters, digits, '.', '_' or '-', not starting with '.'", field
        )
    return value


def request_id(value: str, field: str = "request_id") -> str:
    if value and not REQUEST_ID_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} {_show(value)} is not valid: use 1-128 characters of letters, digits, '.', '_', ':' or '-'",
            field)
    return value


def tag(value: str, field: str = "tag") -> str:
    if not TAG_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} {_show(value)} is not valid: use 1-64 characters of letters, digits, '.', '_', ':' or '-'",
            field.removesuffix(" entry"))
    return value


def text(value: str, field: str, *, required: bool, max_len: int) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{field} must not be empty", field)
    if len(value.encode("utf-8", "surrogatepass")) > max_len:
        raise InvalidArgument(f"{field} is too long: {len(value.encode())} bytes, at most {max_len}", field)
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters", field)
    return value


def argv(values: list[str], field: str) -> list[str]:
    items = list(values)
    if len(items) > MAX_ARGV_ITEMS:
        raise InvalidArgument(f"{field} has {len(items)} arguments, at most {MAX_ARGV_ITEMS}", field)
    for i, item in enumerate(items):
        if "\x00" in item:
            raise InvalidArgument(f"{field}[{i}] must not contain NUL characters", f"{field}[{i}]")
        if len(item) > MAX_ARG_LEN:
            raise InvalidArgument(f"{field}[{i}] is too long: {len(item)} characters, at most {MAX_ARG_LEN}",
                                  f"{field}[{i}]")
    if items and not items[0].strip():
        raise InvalidArgument(f"{field}[0] (the program) must not be empty", f"{field}[0]")
    return items


def page_size(value: int, *, default: int = 100, maximum: int = 1000, field: str = "page_size") -> int:
    if value < 0 or value > maximum:
        raise InvalidArgument(f"{field} must be between 0 and {maximum}, got {value}", field)
    return value or default


def is_chat_id(value: str) -> bool:
    return bool(CHAT_ID_RE.fullmatch(value))


def split_model(model: str) -> tuple[str, str]:
    """(provider prefix, model id); the prefix is '' unless it is a known provider."""
    prefix, sep, rest = model.partition(":")
    if sep and rest and prefix.lower() in KNOWN_MODEL_PREFIXES:
        return prefix.lower(), rest
    return "", model
