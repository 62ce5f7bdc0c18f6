"""Read the embedded OTLP/JSON trace files (<state dir>/traces/*.jsonl): one line per trace, span trees.

Used by `wgs trace`. Each line of a trace file is one ExportTraceServiceRequest in OTLP/JSON
encoding (hex ids), as written by wgs.common.telemetry.OtlpJsonFileExporter.

A trace is summed up by its root span (the earliest span whose parent is not in the files) and how
long it took, its extent (first start to last end: a message's trace includes the agent's answer to
it, a create's the agent's start), and whether it failed. A failed span counts for the trace unless it is an HTTP or gRPC client call: those are
judged by what their caller made of them (a probe answered 404, a request retried), and a failure
that mattered fails the caller's span too (agent.answer, agent.start, the server span).
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# Attributes a span tree shows, in this order; then every `gen_ai.*` and `wgs.*` attribute.
# HTTP uses the current semantic-convention names, and the old ones where an older span has them.
# (rpc.method and rpc.service are in a gRPC span's name; rpc.grpc.status_code shows when not OK.)
KEY_ATTRIBUTES = (
    "rpc.grpc.status_code",
    "wgs.chat.id",
    "process.executable.name",
    "process.pid",
    "process.command_args",
    "process.exit.code",
    "error.type",
    "db.system",
    "db.statement",
    "http.request.method",
    "url.full",
    "server.address",
    "server.port",
    "http.response.status_code",
    "http.method",
    "http.url",
    "http.status_code",
)
SHOWN_PREFIXES = ("gen_ai.", "wgs.")
MAX_VALUE = 160  # characters of an attribute value in a tree line
MAX_STATEMENT = 100  # characters of a database statement, which stands for its span's name

# OTLP span kinds (the file stores the enum name, e.g. "SPAN_KIND_CLIENT").
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 1, 2, 3, 4, 5
_KIND_NAMES = {"SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": KIND_INTERNAL, "SPAN_KIND_SERVER": KIND_SERVER,
               "SPAN_KIND_CLIENT": KIND_CLIENT, "SPAN_KIND_PRODUCER": KIND_PRODUCER,
               "SPAN_KIND_CONSUMER": KIND_CONSUMER}
STATUS_ERROR = 2

# Calls that change nothing a person asks `wgs trace` about: reads and watches, and what agents and
# supervisors report in the background. Their traces are folded into one line unless they failed.
QUIET_PREFIXES = ("Get", "List", "Watch")
QUIET_METHODS = frozenset({"StreamChatLog", "ReportAgentStatus", "PublishPartialMessage", "RenewLeases"})


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    links: list[tuple[str, str]]
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6

    @property
    def failed(self) -> bool:
        return self.status_code == STATUS_ERROR


def _value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attrs(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items or []}


def _kind(kind: Any) -> int:
    if isinstance(kind, int):
        return kind
    return _KIND_NAMES.get(str(kind), 0)


def _status_code(code: Any) -> int:
    if isinstance(code, int):
        return code
    return {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}.get(str(code), 0)


def parse_request(doc: dict[str, Any]) -> list[Span]:
    spans: list[Span] = []
    for rs in doc.get("resourceSpans", []):
        resource = _attrs(rs.get("resource", {}).get("attributes"))
        service = str(resource.get("service.name", "?"))
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                status = s.get("status", {})
                spans.append(
                    Span(
                        trace_id=s.get("traceId", ""),
                        span_id=s.get("spanId", ""),
                        parent_span_id=s.get("parentSpanId", ""),
                        name=s.get("name", ""),
                        service=service,
                        kind=_kind(s.get("kind", 0)),
                        start_ns=int(s.get("startTimeUnixNano", 0)),
                        end_ns=int(s.get("endTimeUnixNano", 0)),
                        attributes=_attrs(s.get("attributes")),
                        status_code=_status_code(status.get("code", 0)),
                        status_message=status.get("message", ""),
                        links=[(lk.get("traceId", ""), lk.get("spanId", "")) for lk in s.get("links", [])],
                    )
                )
    return spans


def load_spans(traces_dir: Path) -> list[Span]:
    """Every span in every trace file of the directory (unreadable lines are skipped)."""
    spans: list[Span] = []
    if not traces_dir.is_dir():
        return spans
    for path in sorted(traces_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    spans.extend(parse_request(json.loads(line)))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
    return spans


def trace_ids_for_chat(spans: list[Span], chat_id: str) -> list[str]:
    """Trace ids whose spans name the chat, oldest first."""
    first_seen: dict[str, int] = {}
    for s in spans:
        if s.attributes.get("wgs.chat.id") == chat_id:
            first_seen[s.trace_id] = min(first_seen.get(s.trace_id, s.start_ns), s.start_ns)
    return [t for t, _ in sorted(first_seen.items(), key=lambda kv: kv[1])]


def build_tree(spans: list[Span], trace_id: str) -> list[Span]:
    """Roots of the trace's span tree, children ordered by start time."""
    mine = {s.span_id: s for s in spans if s.trace_id == trace_id}
    for s in mine.values():
        s.children = []
    roots: list[Span] = []
    for s in sorted(mine.values(), key=lambda x: x.start_ns):
        parent = mine.get(s.parent_span_id)
        if parent is not None:
            parent.children.append(s)
        else:
            roots.append(s)
    return roots


def linked_traces(spans: list[Span], trace_id: str) -> list[str]:
    """Traces with a span linking to the given trace (later events: exits, restarts, messages)."""
    out: list[str] = []
    for s in sorted(spans, key=lambda x: x.start_ns):
        if s.trace_id != trace_id and any(t == trace_id for t, _ in s.links) and s.trace_id not in out:
            out.append(s.trace_id)
    return out


# ---- one line per trace ---------------------------------------------------------------------


def display_name(span: Span) -> str:
    """A span's name for people: gRPC methods without the package ("ChatService/CreateChat")."""
    name = span.name
    if name.startswith("/") and name.count("/") == 2:
        service, _, method = name[1:].partition("/")
        return f"{service.rsplit('.', 1)[-1]}/{method}"
    return name


def short_service(service: str) -> str:
    return service.removeprefix("wgs-")


def _method(span: Span) -> str:
    if "db.system" in span.attributes:
        return "database"
    return str(span.attributes.get("rpc.method") or span.name.rsplit("/", 1)[-1])


def counts_as_error(span: Span) -> bool:
    """A failed span that fails its trace: anything but an HTTP or gRPC client call (module doc)."""
    if not span.failed:
        return False
    client_call = span.kind == KIND_CLIENT and any(
        k in span.attributes for k in ("http.request.method", "http.method", "rpc.system"))
    return not client_call


@dataclass
class TraceSummary:
    trace_id: str
    root: Span
    start_ns: int
    end_ns: int
    span_count: int
    error: str  # "" when the trace did not fail; else one line saying which span failed and why
    chat_id: str  # the chat a span of it names ("" if none)

    @property
    def failed(self) -> bool:
        return bool(self.error)

    @property
    def duration_ms(self) -> float:
        """How long the root span took."""
        return self.root.duration_ms

    @property
    def total_ms(self) -> float:
        """From the first span's start to the last span's end."""
        return max(0, self.end_ns - self.start_ns) / 1e6

    @property
    def method(self) -> str:
        return _method(self.root)

    @property
    def quiet(self) -> bool:
        """A successful read, watch or background report: folded unless asked for (--all)."""
        if self.failed:
            return False
        if "db.system" in self.root.attributes:
            return True  # database work outside any call (e.g. the graph's migrations at start-up)
        if self.root.kind not in (KIND_SERVER, KIND_CLIENT) or "rpc.system" not in self.root.attributes:
            return False
        m = self.method
        return m.startswith(QUIET_PREFIXES) or m in QUIET_METHODS


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_of(spans: list[Span], root: Span) -> str:
    failed = sorted((s for s in spans if counts_as_error(s)), key=lambda s: s.start_ns)
    if not failed:
        return ""
    span = failed[0]
    why = _one_line(span.status_message or str(span.attributes.get("error.type", "")) or "failed")
    return why if span is root else f"{display_name(span)}: {why}"


def summarize(trace_spans: list[Span]) -> TraceSummary:
    """The summary of one trace's spans (all of the same trace id, at least one)."""
    ids = {s.span_id for s in trace_spans}
    ordered = sorted(trace_spans, key=lambda s: s.start_ns)
    root = next((s for s in ordered if s.parent_span_id not in ids), ordered[0])
    chat = next((str(s.attributes["wgs.chat.id"]) for s in ordered if s.attributes.get("wgs.chat.id")), "")
    return TraceSummary(trace_id=root.trace_id, root=root, start_ns=ordered[0].start_ns,
                        end_ns=max(s.end_ns for s in ordered), span_count=len(ordered),
                        error=_error_of(ordered, root), chat_id=chat)


def summaries(spans: list[Span], trace_ids: list[str] | None = None) -> list[TraceSummary]:
    """Summaries of the given traces (default: every trace), oldest first."""
    by_trace: dict[str, list[Span]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    wanted = trace_ids if trace_ids is not None else list(by_trace)
    out = [summarize(by_trace[t]) for t in dict.fromkeys(wanted) if t in by_trace]
    return sorted(out, key=lambda t: t.start_ns)


def format_duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)} min {seconds:.0f} s"


def format_time(ns: int) -> str:
    """Local time of a span timestamp, to the millisecond."""
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_summaries(rows: list[TraceSummary], *, with_chat: bool = False) -> str:
    """One line per trace under a header: time, trace id, [chat,] root, its duration, the trace's
    total, status, error."""
    roots = [f"{display_name(t.root)} [{short_service(t.root.service)}]" for t in rows]
    root_w = min(48, max([4, *map(len, roots)]))
    chat_w = max([4, *(len(t.chat_id) for t in rows)]) if with_chat else 0
    chat_head = f"{'CHAT':<{chat_w}}  " if with_chat else ""
    lines = [f"{'TIME':<23}  {'TRACE':<32}  {chat_head}{'ROOT':<{root_w}}  {'DURATION':>10}  {'TOTAL':>10}  "
             "STATUS  ERROR"]
    for t, root in zip(rows, roots, strict=True):
        chat = f"{t.chat_id or '-':<{chat_w}}  " if with_chat else ""
        status = "ERROR " if t.failed else "ok    "
        lines.append(f"{format_time(t.start_ns)}  {t.trace_id:<32}  {chat}{_cell(root, root_w):<{root_w}}  "
                     f"{format_duration(t.duration_ms):>10}  {format_duration(t.total_ms):>10}  {status}  "
                     f"{_cell(t.error, 200)}".rstrip())
    return "\n".join(lines)


def quiet_note(folded: list[TraceSummary]) -> str:
    """The line that stands for the folded traces: how many, of which calls."""
    counts = Counter(t.method for t in folded)
    what = ", ".join(f"{m} x{n}" if n > 1 else m for m, n in counts.most_common())
    noun = "trace" if len(folded) == 1 else "traces"
    return f"{len(folded)} {noun} of reads, watches and background reports not shown ({what}); --all lists them"


# ---- span trees -------------------------------------------------------------------------------


def format_value(key: str, value: Any) -> str:
    """An attribute value on one line: argv as a shell would read it, lists comma-separated."""
    if isinstance(value, list):
        if key == "process.command_args":
            text = shlex.join(str(v) for v in value)
        else:
            text = ", ".join(str(v) for v in value)
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return _cell(_one_line(text), MAX_VALUE)


def shown_attributes(span: Span) -> list[tuple[str, str]]:
    """The attributes a tree shows for a span: KEY_ATTRIBUTES in order, then gen_ai.* and wgs.*."""
    keys = [k for k in KEY_ATTRIBUTES if k in span.attributes]
    keys += [k for k in span.attributes if k.startswith(SHOWN_PREFIXES) and k not in keys]
    if span.attributes.get("rpc.grpc.status_code") == 0:
        keys.remove("rpc.grpc.status_code")
    return [(k, format_value(k, span.attributes[k])) for k in keys]


def render_tree(roots: list[Span]) -> str:
    lines: list[str] = []

    def walk(span: Span, depth: int) -> None:
        pad = "  " * depth
        err = "  ERROR" if span.failed else ""
        if "db.system" in span.attributes:
            # Database calls: one line each, the statement instead of "<operation> <database file>".
            statement = _cell(format_value("db.statement", span.attributes.get("db.statement", "")), MAX_STATEMENT)
            lines.append(f"{pad}{statement or span.name}  [{span.service}]  {span.duration_ms:.1f} ms{err}")
        else:
            lines.append(f"{pad}{span.name}  [{span.service}]  {span.duration_ms:.1f} ms{err}")
            for key, value in shown_attributes(span):
                lines.append(f"{pad}    {key}={value}")
        if span.status_message:
            lines.append(f"{pad}    status: {_one_line(span.status_message)}")
        for child in span.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)


_KIND_LABELS = {0: "UNSPECIFIED", KIND_INTERNAL: "INTERNAL", KIND_SERVER: "SERVER", KIND_CLIENT: "CLIENT",
                KIND_PRODUCER: "PRODUCER", KIND_CONSUMER: "CONSUMER"}


def tree_as_json(roots: list[Span]) -> list[dict[str, Any]]:
    def conv(span: Span) -> dict[str, Any]:
        return {
            "name": span.name,
            "service": span.service,
            "kind": _KIND_LABELS.get(span.kind, str(span.kind)),
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_span_id,
            "start_time_unix_nano": span.start_ns,
            "duration_ms": round(span.duration_ms, 3),
            "status_code": span.status_code,
            "status_message": span.status_message,
            "attributes": span.attributes,
            "links": [{"trace_id": t, "span_id": s} for t, s in span.links],
            "children": [conv(c) for c in span.children],
        }

    return [conv(r) for r in roots]


def summary_as_json(t: TraceSummary) -> dict[str, Any]:
    return {
        "trace_id": t.trace_id,
        "start": datetime.fromtimestamp(t.start_ns / 1e9).astimezone().isoformat(timespec="milliseconds"),
        "root": t.root.name,
        "service": t.root.service,
        "duration_ms": round(t.duration_ms, 3),
        "total_ms": round(t.total_ms, 3),
        "status": "error" if t.failed else "ok",
        "error": t.error or None,
        "chat_id": t.chat_id or None,
        "span_count": t.span_count,
        "quiet": t.quiet,
    }
