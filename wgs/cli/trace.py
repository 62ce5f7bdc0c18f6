"""`wgs trace [CHAT|TRACE_ID]`: a stack's traces from the embedded trace files, no Jaeger needed.

Spans are read from <state>/traces/*.jsonl (written when no OTEL_EXPORTER_OTLP_ENDPOINT is set).

- `wgs trace` / `wgs trace CHAT`: one line per trace (time, trace id, root span, its duration, the
  trace's total, status, error), newest last. Successful reads, watches and background reports (GetChat, WatchChat,
  ReportAgentStatus, ...) are folded into one line; `--all` lists them too.
- `wgs trace TRACE_ID`, or `--tree`: the span trees (with a trace id, also the traces linking to it:
  the chat's exits and restarts).
- `--json`: every selected trace with its summary and span tree, nothing folded.
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
DEFAULT_LAST = 50  # traces a text listing shows unless --last says otherwise


def select_traces(spans: list[traceview.Span], target: str | None) -> tuple[str, list[str], bool]:
    """(label, trace ids, is a trace id) for a trace id, a chat id (its traces plus those linking to
    them) or nothing (every trace)."""
    if target is None:
        return "this stack", list(dict.fromkeys(s.trace_id for s in spans)), False
    wanted = target.strip().lower()
    if TRACE_ID_RE.match(wanted):
        return f"trace {wanted}", [wanted, *traceview.linked_traces(spans, wanted)], True
    chat_id = parse_chat_id(target)
    ids = traceview.trace_ids_for_chat(spans, chat_id)
    for tid in list(ids):
        for linked in traceview.linked_traces(spans, tid):
            if linked not in ids:
                ids.append(linked)
    return chat_id, ids, False


def _last(rows: list[traceview.TraceSummary], last: int | None) -> tuple[list[traceview.TraceSummary], int]:
    """The newest `last` rows (0 or None: all) and how many older ones were left out."""
    if not last or len(rows) <= last:
        return rows, 0
    return rows[-last:], len(rows) - last


def cmd_trace(ns: argparse.Namespace) -> int:
    if ns.last is not None and ns.last < 0:
        raise CliError(f"--last must be 0 (all) or more, got {ns.last}", 2)
    state = resolve_state_dir(ns.state_dir)
    traces_dir = state / "traces"
    spans = traceview.load_spans(traces_dir)
    if not spans:
        raise CliError(
            f"no spans in {traces_dir} (traces go there only when OTEL_EXPORTER_OTLP_ENDPOINT is unset "
            "and OTEL_SDK_DISABLED is not true)"
        )
    label, ids, by_trace_id = select_traces(spans, ns.target)
    rows = traceview.summaries(spans, ids)
    if not rows:
        raise CliError(f"no trace found for {label} in {traces_dir}")
    if ns.json:
        chosen, _ = _last(rows, ns.last)
        print(dumps([{**traceview.summary_as_json(t), "spans": traceview.tree_as_json(
            traceview.build_tree(spans, t.trace_id))} for t in chosen]))
        return 0
    folded: list[traceview.TraceSummary] = []
    if not (ns.all or by_trace_id):
        folded = [t for t in rows if t.quiet]
        rows = [t for t in rows if not t.quiet]
    rows, older = _last(rows, DEFAULT_LAST if ns.last is None else ns.last)
    if by_trace_id or ns.tree:
        _print_trees(spans, rows)
    elif rows:
        print(traceview.render_summaries(rows, with_chat=ns.target is None))
    if older:
        print(f"{older} older trace{'s' if older > 1 else ''} not shown; --last 0 shows all")
    if folded:
        print(traceview.quiet_note(folded))
    return 0


def _print_trees(spans: list[traceview.Span], rows: list[traceview.TraceSummary]) -> None:
    jaeger = env_str("WGS_JAEGER_URL", "")
    for i, t in enumerate(rows):
        if i:
            print()
        link = f"  {jaeger_link(jaeger, t.trace_id)}" if jaeger else ""
        status = f"ERROR {t.error}" if t.failed else "ok"
        print(f"trace {t.trace_id}  {traceview.format_time(t.start_ns)}  "
              f"total {traceview.format_duration(t.total_ms)}  {status}{link}")
        print(traceview.render_tree(traceview.build_tree(spans, t.trace_id)))


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "trace", help="a chat's (or the stack's) traces from <state>/traces: one line each, or span trees",
        description="One line per trace (time, trace id, root span, duration, status, error), newest last; "
                    "a trace id or --tree prints span trees. Reads <state>/traces (no Jaeger needed).")
    p.add_argument("target", nargs="?",
                   help="chat id (.chat-3, chat-3, 3) or a 32-hex-digit trace id (default: every trace)")
    p.add_argument("--state-dir", help="state directory (default: $WGS_STATE_DIR or ./.wgs)")
    p.add_argument("--tree", action="store_true", help="print the span trees of the traces instead of one line each")
    p.add_argument("--all", action="store_true",
                   help="also list successful reads, watches and background reports (folded by default)")
    p.add_argument("--last", type=int, metavar="N",
                   help=f"only the newest N traces (default {DEFAULT_LAST}; 0: all; --json: all)")
    p.add_argument("--json", action="store_true",
                   help="print every selected trace (nothing folded) with its summary and span tree as JSON")
    p.set_defaults(func=cmd_trace)
