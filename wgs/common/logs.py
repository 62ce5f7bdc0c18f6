"""Structured logs on stderr: one JSON object per line, with the current trace id.

Use `log.info("message", extra=fields(chat_id=..., pid=...))` to attach fields. Anything shaped
like a wgs token is redacted from every line (`wgs1.***`). `RateLimit` keeps repeated warnings
caused by callers (unparseable requests, bad credentials) to one line per interval.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_FIELDS = "wgs_fields"
# The shape of wgs.common.auth tokens (kept here so logging needs no import of auth).
_TOKEN_RE = re.compile(r"\bwgs1\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}")


def redact(text: str) -> str:
    return _TOKEN_RE.sub("wgs1.***", text)


def fields(**values: Any) -> dict[str, Any]:
    """Build the `extra=` argument carrying structured fields."""
    return {_FIELDS: values}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        extra = getattr(record, _FIELDS, None)
        if extra:
            out.update(extra)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)s " + service + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = getattr(record, _FIELDS, None)
        if extra:
            base += " " + " ".join(f"{k}={v!r}" for k, v in extra.items())
        return redact(base)


class DetachContextFilter(logging.Filter):
    """Drop one known-harmless ERROR of opentelemetry-instrumentation-grpc (0.66b2, aio server
    stream interceptor; upstream open-telemetry/opentelemetry-python-contrib#2357): when a client
    cancels a server stream, or its deadline passes, while the server is suspended in a `yield`,
    grpc leaves the async generator to be finalized later in another task, and the `with` block that
    attached the span's context there cannot detach it ("Failed to detach context", ValueError
    "... was created in a different Context"). The span itself has ended; nothing is lost.
    Only that exact record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "opentelemetry.context" or record.msg != "Failed to detach context":
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ValueError) and "was created in a different Context" in str(exc))


class RateLimit:
    """At most one log line per key per `interval` seconds; the next line says how many were
    suppressed. For warnings a caller can trigger at will (a flood must not drown the log)."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(log now?, how many were suppressed since the last line of this key)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._suppressed.pop(key, 0)


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    otel_context = logging.getLogger("opentelemetry.context")
    if not any(isinstance(f, DetachContextFilter) for f in otel_context.filters):
        otel_context.addFilter(DetachContextFilter())
    # Quiet chatty libraries unless debugging.
    for noisy in ("sqlalchemy.engine", "alembic.runtime.migration", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
