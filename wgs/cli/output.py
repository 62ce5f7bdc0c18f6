"""Pure parsing and formatting for the CLI: chat ids, error lines, chats as JSON and text.

No gRPC calls here, so everything is unit-tested without a network.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from wgs.v1 import chat_pb2, graph_pb2, plan_pb2, runtime_pb2, task_pb2

_CHAT_ARG_RE = re.compile(r"\A(?:\.?chat-)?(0|[1-9][0-9]{0,8})\Z")


class CliError(Exception):
    """An error to show as one line on stderr (prefixed with "wgs: "), with an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def parse_chat_id(value: str) -> str:
    """Accept `.chat-3`, `chat-3` or `3` and return the canonical `.chat-3`."""
    m = _CHAT_ARG_RE.match(value.strip())
    if not m:
        raise CliError(f"invalid chat id {value!r}: use .chat-N, chat-N or N (for example .chat-3)", 2)
    return f".chat-{m.group(1)}"


def status_words(code: grpc.StatusCode) -> str:
    """`grpc.StatusCode.NOT_FOUND` -> "not found"."""
    name: str = code.name
    return name.lower().replace("_", " ")


def one_line(text: str) -> str:
    """Collapse whitespace so a server message never spans several lines."""
    return " ".join(text.split())


def rpc_error_line(code: grpc.StatusCode, details: str, *, service: str, address: str, timeout: float) -> str:
    """The single line (without the "wgs: " prefix) describing a failed call."""
    details = one_line(details or "")
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"cannot reach the {service} service at {address} ({details or 'unavailable'}); "
            "is the stack running? start it with `wgs up`"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {service} service at {address} did not answer within {timeout:g}s (deadline exceeded)"
    return f"{status_words(code)}: {details}" if details else f"{status_words(code)} (from the {service} service)"


# ---------------------------------------------------------------------------------------------
# names and times


def state_name(state: int) -> str:
    return runtime_pb2.RuntimeState.Name(state).removeprefix("RUNTIME_STATE_")


def task_status_name(status: int) -> str:
    return task_pb2.TaskStatus.Name(status).removeprefix("TASK_STATUS_")


def role_name(role: int) -> str:
    return task_pb2.MessageRole.Name(role).removeprefix("MESSAGE_ROLE_")


def ts_iso(ts: Timestamp, present: bool = True) -> str | None:
    """RFC 3339 UTC string, or None for an unset timestamp."""
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return None
    dt = ts.ToDatetime(tzinfo=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ago(ts: Timestamp, now: datetime | None = None) -> str:
    """Human relative time ("in 3.2s", "5s ago") for an RFC 3339 timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    now = now or datetime.now(UTC)
    delta = (ts.ToDatetime(tzinfo=UTC) - now).total_seconds()
    if delta >= 0:
        return f"in {delta:.1f}s"
    return f"{-delta:.0f}s ago"


# ---------------------------------------------------------------------------------------------
# chats as JSON


def _opt_int(run: runtime_pb2.Run, field: str) -> int | None:
    return int(getattr(run, field)) if run.HasField(field) else None


def run_to_dict(run: runtime_pb2.Run) -> dict[str, Any]:
    return {
        "number": run.number,
        "pid": run.pid or None,
        "process_start_ticks": run.process_start_ticks or None,
        "monitor_pid": run.monitor_pid or None,
        "argv": list(run.argv),
        "stderr_path": run.stderr_path or None,
        "started_at": ts_iso(run.started_at, run.HasField("started_at")),
        "exited_at": ts_iso(run.exited_at, run.HasField("exited_at")),
        "exit_code": _opt_int(run, "exit_code"),
        "signal": run.signal_name or (f"signal {run.signal}" if run.HasField("signal") else None),
        "signal_number": _opt_int(run, "signal"),
        "stderr_tail": run.stderr_tail,
        "error": run.error,
        "hostname": run.hostname,
        "supervisor_id": run.supervisor_id,
        "trace_id": run.trace_id,
        "end": run_end_name(run.end),
        "end_detail": run.end_detail or None,
        "leftovers_ended": run.leftovers_ended,
    }


def run_end_name(end: int) -> str | None:
    """"stopped" for RUN_END_STOPPED; None while the run lives."""
    if end == runtime_pb2.RUN_END_UNSPECIFIED:
        return None
    return runtime_pb2.RunEnd.Name(end).removeprefix("RUN_END_").lower()


def source_name(source: int) -> str | None:
    """"request" for CHOICE_SOURCE_REQUEST; None when not set."""
    if source == plan_pb2.CHOICE_SOURCE_UNSPECIFIED:
        return None
    return plan_pb2.ChoiceSource.Name(source).removeprefix("CHOICE_SOURCE_").lower()


def endpoint_to_dict(ep: plan_pb2.PlannedEndpoint) -> dict[str, Any]:
    return {"name": ep.name, "url": ep.url, "provider": ep.provider, "api_key_env": ep.api_key_env,
            "source": ep.source_detail, "source_kind": source_name(ep.source), "ca_file": ep.ca_file or None}


def generation_to_dict(g: plan_pb2.GenerationSettings) -> dict[str, Any]:
    def item(present: bool, value: Any, source: int) -> dict[str, Any] | None:
        return {"value": value, "source": source_name(source)} if present else None

    return {
        "max_tokens": item(g.HasField("max_tokens"), g.max_tokens, g.max_tokens_source),
        "temperature": item(g.HasField("temperature"), g.temperature, g.temperature_source),
        "top_p": item(g.HasField("top_p"), g.top_p, g.top_p_source),
        "stop": item(bool(g.stop), list(g.stop), g.stop_source),
        "context_window": item(bool(g.context_window), g.context_window, g.context_window_source),
    }


def agent_status_to_dict(a: runtime_pb2.AgentStatus) -> dict[str, Any]:
    err = a.last_answer_error
    wait = a.waiting
    return {
        "run_number": a.run_number,
        "updated_at": ts_iso(a.updated_at, a.HasField("updated_at")),
        "last_answer_error": {"at": ts_iso(err.at, err.HasField("at")), "class": err.error_class,
                              "message": err.message, "request_id": err.request_id}
        if a.HasField("last_answer_error") else None,
        "waiting_for_endpoint": {"since": ts_iso(wait.since, wait.HasField("since")), "reason": wait.reason,
                                 "next_attempt_at": ts_iso(wait.next_attempt_at, wait.HasField("next_attempt_at"))}
        if a.HasField("waiting") else None,
        "context_window": a.context_window or None,
        "context_window_source": source_name(a.context_window_source),
        "context_window_detail": a.context_window_detail or None,
        "input_tokens": a.input_tokens,
        "output_tokens": a.output_tokens,
        "answers": a.answers,
    }


def plan_to_dict(plan: plan_pb2.SpawnPlan, present: bool = True) -> dict[str, Any]:
    """The plan with the source of every choice. Env values are never secrets (secrets are by name)."""
    if not present:
        return {"executor": None, "executor_source": None, "executor_source_kind": None, "model": None,
                "model_source": None, "model_source_kind": None, "endpoint": None, "generation": None, "argv": [],
                "env": [], "working_dir": None, "summary": None}
    return {
        "executor": plan.executor,
        "executor_source": plan.executor_source_detail,
        "executor_source_kind": source_name(plan.executor_source),
        "model": plan.model,
        "model_source": plan.model_source_detail,
        "model_source_kind": source_name(plan.model_source),
        "endpoint": endpoint_to_dict(plan.endpoint) if plan.HasField("endpoint") else None,
        "generation": generation_to_dict(plan.generation) if plan.HasField("generation") else None,
        "argv": list(plan.argv),
        "env": [
            {"name": e.name, "from_env": e.value_from_env, "secret": e.secret} if e.value_from_env or e.secret
            else {"name": e.name, "value": e.value}
            for e in plan.env
        ],
        "working_dir": plan.working_dir or None,
        "summary": plan.summary,
    }


def chat_to_dict(chat: chat_pb2.Chat, jaeger_url: str = "") -> dict[str, Any]:
    """A chat as the JSON object of `wgs chat create|list|show --json` (see README: JSON output)."""
    rt = chat.runtime
    run = rt.current_run
    has_run = rt.HasField("current_run")
    trace_id = chat.trace_id or rt.trace_id
    out: dict[str, Any] = {
        "id": chat.id,
        "name": chat.name,
        "title": chat.title,
        "status": task_status_name(chat.status),
        "tags": list(chat.tags),
        "state": state_name(rt.state),
        "pid": chat.pid or None,
        "exit_code": _opt_int(run, "exit_code") if has_run else None,
        "signal": (run.signal_name or (f"signal {run.signal}" if run.HasField("signal") else None))
        if has_run else None,
        "run_number": run.number if has_run else None,
        "restart_count": rt.restart_count,
        "next_restart_at": ts_iso(rt.next_restart_at, rt.HasField("next_restart_at")),
        "last_error": rt.last_error,
        "stderr_path": (run.stderr_path or None) if has_run else None,
        "stderr_tail": chat.stderr_tail,
        "trace_id": trace_id,
        "model": chat.model,
        "executor": chat.executor,
        "endpoint": chat.endpoint,
        "command": list(chat.command),
        "created_at": ts_iso(chat.created_at, chat.HasField("created_at")),
        "supervisor_id": rt.supervisor_id,
        "plan": plan_to_dict(rt.plan, rt.HasField("plan")),
        "agent": agent_status_to_dict(rt.agent) if rt.HasField("agent") else None,
        "current_run": run_to_dict(run) if has_run else None,
        "previous_runs": [run_to_dict(r) for r in rt.previous_runs],
    }
    if jaeger_url and trace_id:
        out["trace_url"] = jaeger_link(jaeger_url, trace_id)
    return out


def jaeger_link(base: str, trace_id: str) -> str:
    return f"{base.rstrip('/')}/trace/{trace_id}"


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# chats as text


def run_outcome(run: runtime_pb2.Run) -> str:
    """How a run ended, in words: "exit code 1", "killed by SIGKILL", "stopped (StopChat), exit code 0",
    "running", "spawn failed: ..."."""
    if run.pid == 0 and run.error:
        return f"spawn failed: {run.error}"
    if run.HasField("exit_code"):
        how = f"exit code {run.exit_code}"
    elif run.HasField("signal"):
        how = f"killed by {run.signal_name or f'signal {run.signal}'}"
    elif run.HasField("exited_at"):
        how = f"ended ({run.error or 'exit status unknown'})"
    else:
        return "running"
    if run.end == runtime_pb2.RUN_END_STOPPED:
        how = f"stopped ({run.end_detail or 'by wgs'}), {how}"
    elif run.end == runtime_pb2.RUN_END_FENCED:
        how = f"fenced (its supervisor's lease was not renewed), {how}"
    elif run.end == runtime_pb2.RUN_END_UNKNOWN and run.error and run.error not in how:
        how = f"{how}: {run.error}"
    if run.leftovers_ended:
        how += f"; {run.leftovers_ended} leftover process(es) ended"
    return how


def chat_summary_line(chat: chat_pb2.Chat) -> str:
    """One line for create/stop/restart results: "`.chat-3` RUNNING pid 1234 (native qwen3-coder)"."""
    rt = chat.runtime
    parts = [chat.id, state_name(rt.state)]
    if chat.pid:
        parts.append(f"pid {chat.pid}")
    if rt.HasField("current_run"):
        run = rt.current_run
        if run.HasField("exited_at") or run.error:
            parts.append(f"({run_outcome(run)})")
    if rt.HasField("plan") and rt.plan.executor:
        what = " ".join(x for x in (rt.plan.executor, rt.plan.model) if x)
        parts.append(f"[{what}]")
    return " ".join(parts)


def _cell(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def chat_table(chats: list[chat_pb2.Chat]) -> str:
    """The table of `wgs chat list`."""
    header = f"{'ID':<10} {'STATE':<9} {'STATUS':<12} {'PID':>7} {'RESTARTS':>8}  {'EXECUTOR':<8} {'MODEL':<20} NAME / LAST ERROR"
    lines = [header]
    for c in chats:
        rt = c.runtime
        pid = str(c.pid) if c.pid else "-"
        executor = rt.plan.executor or c.executor or "-"
        model = rt.plan.model or c.model or "-"
        note = c.name or ""
        problem = rt.last_error or answer_problem(rt)
        if problem:
            note = (note + ": " if note else "") + one_line(problem)
        lines.append(
            f"{c.id:<10} {state_name(rt.state):<9} {task_status_name(c.status):<12} {pid:>7} "
            f"{rt.restart_count:>8}  {_cell(executor, 8):<8} {_cell(model, 20):<20} {_cell(note, 80)}"
        )
    return "\n".join(lines)


def answer_problem(rt: runtime_pb2.ChatRuntime) -> str:
    """What keeps a live agent from answering now: waiting for its endpoint, or its last answer error."""
    if not rt.HasField("agent"):
        return ""
    a = rt.agent
    if a.HasField("waiting"):
        return f"waiting for its endpoint since {ts_iso(a.waiting.since)}: {a.waiting.reason}"
    if a.HasField("last_answer_error"):
        e = a.last_answer_error
        return f"last answer failed ({e.error_class}): {e.message}"
    return ""


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def chat_details(chat: chat_pb2.Chat, jaeger_url: str = "", now: datetime | None = None) -> str:
    """The text of `wgs chat show`: everything needed to explain the agent's life or death."""
    rt = chat.runtime
    lines = [f"chat        {chat.id}" + (f"  ({chat.name})" if chat.name else "")]
    lines.append(f"title       {chat.title}")
    lines.append(f"task        {task_status_name(chat.status)}  tags: {', '.join(chat.tags) or '-'}")
    lines.append(f"state       {state_name(rt.state)}"
                 + (f"  (on supervisor {rt.supervisor_id})" if rt.supervisor_id else ""))
    if chat.owner_notice:
        lines.append(f"owner lost  {one_line(chat.owner_notice)}")
    if rt.HasField("current_run"):
        run = rt.current_run
        pid = f"pid {chat.pid}" if chat.pid else f"pid {run.pid} (gone)" if run.pid else "pid -"
        lines.append(f"run         #{run.number}  {pid}  {run_outcome(run)}")
        if run.HasField("started_at"):
            lines.append(f"started     {ts_iso(run.started_at)}")
        if run.HasField("exited_at"):
            lines.append(f"exited      {ts_iso(run.exited_at)}")
    else:
        lines.append("run         none yet")
    lines.append(f"restarts    {rt.restart_count}")
    if rt.HasField("next_restart_at"):
        lines.append(f"next start  {ts_iso(rt.next_restart_at)} ({ago(rt.next_restart_at, now)})")
    lines.append(f"last error  {one_line(rt.last_error) if rt.last_error else '-'}")
    if rt.HasField("agent"):
        a = rt.agent
        if a.HasField("waiting"):
            w = a.waiting
            nxt = f"; next try {ts_iso(w.next_attempt_at)} ({ago(w.next_attempt_at, now)})" \
                if w.HasField("next_attempt_at") else ""
            lines.append(f"waiting     for its endpoint since {ts_iso(w.since)}: {one_line(w.reason)}{nxt}")
        if a.HasField("last_answer_error"):
            e = a.last_answer_error
            lines.append(f"answer err  {ts_iso(e.at)} {e.error_class}: {one_line(e.message)}"
                         + (f" (request {e.request_id})" if e.request_id else ""))
        if a.context_window:
            detail = f": {one_line(a.context_window_detail)}" if a.context_window_detail else ""
            lines.append(f"context     {a.context_window} tokens (from {source_name(a.context_window_source) or '-'}"
                         f"{detail})")
        lines.append(f"tokens      {a.input_tokens} in, {a.output_tokens} out, {a.answers} answer(s)")
    if rt.HasField("plan"):
        p = rt.plan
        lines.append("plan")
        lines.append(f"  executor  {p.executor or '-'}  (from {p.executor_source_detail or '-'})")
        if p.model or p.model_source:
            lines.append(f"  model     {p.model or '-'}  (from {p.model_source_detail or '-'})")
        if p.HasField("endpoint"):
            ep = p.endpoint
            name = f" [{ep.name}]" if ep.name else ""
            lines.append(f"  endpoint  {ep.url}{name}  (from {ep.source_detail or '-'})")
            if ep.api_key_env:
                lines.append(f"  api key   from ${ep.api_key_env}")
        if p.HasField("generation"):
            g = p.generation
            settings = [f"max_tokens {g.max_tokens} ({source_name(g.max_tokens_source)})"]
            if g.HasField("temperature"):
                settings.append(f"temperature {g.temperature:g} ({source_name(g.temperature_source)})")
            if g.HasField("top_p"):
                settings.append(f"top_p {g.top_p:g} ({source_name(g.top_p_source)})")
            if g.stop:
                settings.append(f"stop {list(g.stop)} ({source_name(g.stop_source)})")
            if g.context_window:
                settings.append(f"context_window {g.context_window} ({source_name(g.context_window_source)})")
            lines.append(f"  generate  {', '.join(settings)}")
        if p.working_dir:
            lines.append(f"  cwd       {p.working_dir}")
    argv = list(rt.current_run.argv) if rt.HasField("current_run") and rt.current_run.argv else list(rt.plan.argv)
    lines.append(f"argv        {' '.join(_quote(a) for a in argv) if argv else '-'}")
    stderr_path = rt.current_run.stderr_path if rt.HasField("current_run") else ""
    lines.append(f"stderr      {stderr_path or '-'}")
    trace_id = chat.trace_id or rt.trace_id
    lines.append(f"trace       {trace_id or '-'}")
    if jaeger_url and trace_id:
        lines.append(f"jaeger      {jaeger_link(jaeger_url, trace_id)}")
    for prev in rt.previous_runs:
        lines.append(f"earlier run #{prev.number}  pid {prev.pid or '-'}  {run_outcome(prev)}  {prev.stderr_path}")
    if chat.stderr_tail.strip():
        lines.append("stderr tail")
        lines.append(indent(chat.stderr_tail))
    else:
        lines.append("stderr tail (empty)")
    return "\n".join(lines)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def message_line(msg: task_pb2.ChatMessage) -> str:
    """One message of `wgs chat history`."""
    when = ts_iso(msg.created_at, msg.HasField("created_at")) or ""
    head = f"[{msg.seq}] {when} {role_name(msg.role).lower()}"
    body = msg.content.rstrip("\n")
    if "\n" in body:
        return f"{head}:\n{indent(body, '  ')}"
    return f"{head}: {body}"


def reconcile_lines(resp: graph_pb2.ReconcileResponse, dry_run: bool) -> str:
    """The text of `wgs sweep`."""
    verb = "would reset" if dry_run else "reset"
    lines = [f"examined {resp.examined} in-progress task(s)"]
    for a in resp.actions:
        lines.append(
            f"{verb:<11} {a.task_id}: {task_status_name(a.from_status)} -> {task_status_name(a.to_status)}"
            f" ({one_line(a.reason)})"
        )
    for k in resp.kept:
        lines.append(f"{'kept':<11} {k.task_id}: {one_line(k.reason)}")
    if not resp.actions:
        lines.append("nothing to reset")
    return "\n".join(lines)


def reconcile_to_dict(resp: graph_pb2.ReconcileResponse, dry_run: bool) -> dict[str, Any]:
    def action(a: graph_pb2.ReconcileAction) -> dict[str, Any]:
        return {"task_id": a.task_id, "from": task_status_name(a.from_status),
                "to": task_status_name(a.to_status), "reason": a.reason, "applied": a.applied}

    return {"dry_run": dry_run, "examined": resp.examined, "reset": [action(a) for a in resp.actions],
            "kept": [action(k) for k in resp.kept]}


def chat_failure(chat: chat_pb2.Chat) -> str | None:
    """Why a freshly created chat's agent is not working, or None if it runs (or exited cleanly)."""
    rt = chat.runtime
    state = rt.state
    run = rt.current_run if rt.HasField("current_run") else None
    if state == runtime_pb2.RUNTIME_STATE_RUNNING:
        problem = answer_problem(rt)
        return f"agent of {chat.id} runs but is {problem}" if problem.startswith("waiting") else None
    if state == runtime_pb2.RUNTIME_STATE_EXITED and run is not None and run.HasField("exit_code") and run.exit_code == 0:
        return None
    what = run_outcome(run) if run is not None else "no run"
    reason = one_line(rt.last_error) if rt.last_error else what
    text = f"agent of {chat.id} is {state_name(state)}: {reason}"
    if reason != what and run is not None and what.split()[-1] not in reason:
        text += f" ({what})"
    if state == runtime_pb2.RUNTIME_STATE_BACKOFF and rt.HasField("next_restart_at") and "restart" not in reason:
        text += f"; restart {rt.restart_count} scheduled {ago(rt.next_restart_at)}"
    return text
