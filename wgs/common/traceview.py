"""Read the embedded OTLP/JSON trace files (<state dir>/traces/*.jsonl) and render span trees.

Used by `wgs trace CHAT|TRACE_ID`. Each line of a trace file is one ExportTraceServiceRequest in
OTLP/JSON encoding (hex ids), as written by wgs.common.telemetry.OtlpJsonFileExporter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY_ATTRIBUTES = (
    "rpc.method",
    "rpc.service",
    "rpc.grpc.status_code",
    "wgs.chat.id",
    "wgs.plan.executor",
    "wgs.plan.executor.source",
    "wgs.plan.model",
    "wgs.plan.model.source",
    "wgs.plan.endpoint.name",
    "wgs.plan.endpoint.url",
    "wgs.plan.endpoint.source",
    "process.executable.name",
    "process.pid",
    "process.command_args",
    "process.exit.code",
    "wgs.stderr.path",
    "wgs.run.number",
    "wgs.chat.restart_count",
    "wgs.chat.state",
    "wgs.exit.signal",
    "wgs.outcome",
    "error.type",
    "db.system",
    "db.statement",
    "http.request.method",
    "url.full",
    "http.response.status_code",
)


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
                        kind=int(s.get("kind", 0)) if isinstance(s.get("kind", 0), int) else 0,
                        start_ns=int(s.get("startTimeUnixNano", 0)),
                        end_ns=int(s.get("endTimeUnixNano", 0)),
                        attributes=_attrs(s.get("attributes")),
                        status_code=_status_code(status.get("code", 0)),
                        status_message=status.get("message", ""),
                        links=[(lk.get("traceId", ""), lk.get("spanId", "")) for lk in s.get("links", [])],
                    )
                )
    return spans


def _status_code(code: Any) -> int:
    if isinstance(code, int):
        return code
    return {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}.get(str(code), 0)


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
                except (ValueError, KeyError, TypeError):
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


def render_tree(roots: list[Span]) -> str:
    lines: list[str] = []

    def walk(span: Span, depth: int) -> None:
        err = "  ERROR" if span.status_code == 2 else ""
        lines.append(f"{'  ' * depth}{span.name}  [{span.service}]  {span.duration_ms:.1f} ms{err}")
        for key in KEY_ATTRIBUTES:
            if key in span.attributes:
                lines.append(f"{'  ' * depth}    {key}={span.attributes[key]}")
        if span.status_message:
            lines.append(f"{'  ' * depth}    status: {span.status_message}")
        for child in span.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)


def tree_as_json(roots: list[Span]) -> list[dict[str, Any]]:
    def conv(span: Span) -> dict[str, Any]:
        return {
            "name": span.name,
            "service": span.service,
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_span_id,
            "duration_ms": round(span.duration_ms, 3),
            "status_code": span.status_code,
            "attributes": span.attributes,
            "links": [{"trace_id": t, "span_id": s} for t, s in span.links],
            "children": [conv(c) for c in span.children],
        }

    return [conv(r) for r in roots]
