"""`wgs trace CHAT|TRACE_ID`: show a chat's traces from the embedded trace files, no Jaeger needed.

Spans are read from <state>/traces/*.jsonl (written when no OTEL_EXPORTER_OTLP_ENDPOINT is set).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from wgs.cli.output import CliError, dumps, jaeger_link, parse_chat_id
from wgs.cli.stack import resolve_state_dir
from wgs.common import traceview
from wgs.common.settings import env_str

TRACE_ID_RE = re.compile(r"\A[0-9a-f]{32}\Z")


def select_traces(spans: list[traceview.Span], target: str) -> tuple[str, list[str]]:
    """(label, trace ids) for a trace id or a chat id: the chat's traces plus those linking to them."""
    wanted = target.strip().lower()
    if TRACE_ID_RE.match(wanted):
        ids = [wanted, *traceview.linked_traces(spans, wanted)]
        return f"trace {wanted}", ids
    chat_id = parse_chat_id(target)
    ids = traceview.trace_ids_for_chat(spans, chat_id)
    for tid in list(ids):
        for linked in traceview.linked_traces(spans, tid):
            if linked not in ids:
                ids.append(linked)
    return chat_id, ids


def cmd_trace(ns: argparse.Namespace) -> int:
    state = resolve_state_dir(ns.state_dir)
    traces_dir = state / "traces"
    spans = traceview.load_spans(traces_dir)
    if not spans:
        raise CliError(
            f"no spans in {traces_dir} (traces go there only when OTEL_EXPORTER_OTLP_ENDPOINT is unset "
            "and OTEL_SDK_DISABLED is not true)"
        )
    label, ids = select_traces(spans, ns.target)
    if not ids:
        raise CliError(f"no trace found for {label} in {traces_dir}")
    jaeger = env_str("WGS_JAEGER_URL", "")
    if ns.json:
        doc: list[dict[str, Any]] = [
            {"trace_id": tid, "spans": traceview.tree_as_json(traceview.build_tree(spans, tid))} for tid in ids
        ]
        print(dumps(doc))
        return 0
    for i, tid in enumerate(ids):
        if i:
            print()
        link = f"  {jaeger_link(jaeger, tid)}" if jaeger else ""
        print(f"trace {tid}{link}")
        print(traceview.render_tree(traceview.build_tree(spans, tid)))
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("trace", help="print a chat's (or a trace id's) spans from <state>/traces")
    p.add_argument("target", help="chat id (.chat-3, chat-3, 3) or a 32-hex-digit trace id")
    p.add_argument("--state-dir", help="state directory (default: $WGS_STATE_DIR or ./.wgs)")
    p.add_argument("--json", action="store_true", help="print the span trees as JSON")
    p.set_defaults(func=cmd_trace)
