"""`wgs chat ...` and `wgs sweep`: the chat API (ChatService) and the graph's Reconcile, from a shell.

Every call carries a deadline; every failure is one `wgs: ...` line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from wgs.cli.output import (
    CliError,
    chat_details,
    chat_failure,
    chat_summary_line,
    chat_table,
    chat_to_dict,
    dumps,
    indent,
    message_line,
    one_line,
    parse_chat_id,
    reconcile_lines,
    reconcile_to_dict,
    role_name,
    run_outcome,
    state_name,
)
from wgs.cli.rpc import Conn, connect
from wgs.common.settings import env_str
from wgs.v1 import chat_pb2, graph_pb2, plan_pb2, runtime_pb2, task_pb2

CREATE_TIMEOUT_MIN = 60.0
ATTACH_STREAM_DEADLINE = 7 * 24 * 3600.0  # attach is interactive; the stream still has a deadline
ANSWER_ROLES = (task_pb2.MESSAGE_ROLE_ASSISTANT, task_pb2.MESSAGE_ROLE_SYSTEM_ERROR)


def jaeger_url() -> str:
    return env_str("WGS_JAEGER_URL", "")


def _supervisor(ns: argparse.Namespace) -> Any:
    return connect("supervisor", ns.state_dir, ns.timeout)


def _print_chat(chat: chat_pb2.Chat, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        doc = chat_to_dict(chat, jaeger_url())
        if extra:
            doc.update(extra)
        print(dumps(doc))
    else:
        print(chat_details(chat, jaeger_url()))


# ---------------------------------------------------------------------------------------------
# create


def _watch_until(conn: Conn, chat: chat_pb2.Chat, done: Any, timeout: float) -> chat_pb2.Chat:
    """Follow WatchChat until `done(chat)` or the timeout; returns the latest chat seen."""
    stream = conn.chat().WatchChat(chat_pb2.WatchChatRequest(chat_id=chat.id), timeout=timeout)
    try:
        for resp in stream:
            chat = resp.chat
            if done(chat):
                break
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise conn.error(exc) from None
    finally:
        stream.cancel()
    return chat


def _generation(ns: argparse.Namespace) -> plan_pb2.GenerationOverrides | None:
    g = plan_pb2.GenerationOverrides()
    if ns.max_tokens is not None:
        g.max_tokens = ns.max_tokens
    if ns.temperature is not None:
        g.temperature = ns.temperature
    if ns.top_p is not None:
        g.top_p = ns.top_p
    if ns.stop:
        g.stop.extend(ns.stop)
    if ns.context_window is not None:
        g.context_window = ns.context_window
    return g if g.ListFields() else None


TERMINAL_STATES = (runtime_pb2.RUNTIME_STATE_FAILED, runtime_pb2.RUNTIME_STATE_STOPPED)
SURVIVE = 1.0  # a run up this long has passed its failed-start window (WGS_RESTART_START_SECONDS default)


def _run_age(chat: chat_pb2.Chat) -> float | None:
    run = chat.runtime.current_run
    if not chat.runtime.HasField("current_run") or not run.HasField("started_at"):
        return None
    return time.time() - run.started_at.ToNanoseconds() / 1e9


def cmd_create(ns: argparse.Namespace) -> int:
    command = list(ns.command or []) + list(ns.argv or [])
    req = chat_pb2.CreateChatRequest(
        name=ns.name or "", model=ns.model or "", executor=ns.executor or "", endpoint=ns.endpoint or "",
        command=command, request_id=ns.request_id or "",
        working_dir=str(Path(ns.cwd).resolve()) if ns.cwd else "", generation=_generation(ns),
    )
    with _supervisor(ns) as conn:
        stub = conn.chat()
        resp = conn.call(lambda: stub.CreateChat(req, timeout=max(conn.timeout, CREATE_TIMEOUT_MIN)))
        chat = resp.chat
        starting = runtime_pb2.RUNTIME_STATE_STARTING
        if chat.runtime.state == starting:
            chat = _watch_until(conn, chat, lambda c: c.runtime.state != starting, max(conn.timeout, 30.0))
        if ns.settle > 0 and chat.runtime.state not in TERMINAL_STATES:
            # An agent that cannot work (bad endpoint, model, key) dies within its first seconds: watch
            # the whole settle time (a first failure may still recover by a restart) and judge the
            # state at its end; a chat that went FAILED or STOPPED ends the watch at once.
            chat = _watch_until(conn, chat, lambda c: c.runtime.state in TERMINAL_STATES, ns.settle)
            young = _run_age(chat)
            if chat.runtime.state == runtime_pb2.RUNTIME_STATE_RUNNING and young is not None and young < SURVIVE:
                # A run started just now (a restart) has not shown yet that it survives its start.
                chat = _watch_until(conn, chat, lambda c: c.runtime.state != runtime_pb2.RUNTIME_STATE_RUNNING
                                    or c.runtime.current_run.number != chat.runtime.current_run.number,
                                    SURVIVE - young)
        chat = conn.call(lambda: stub.GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=conn.timeout)).chat
    failure = chat_failure(chat)
    if ns.json:
        _print_chat(chat, True, {"created": resp.created})
    else:
        verb = "created" if resp.created else "exists (same request id)"
        print(f"{verb}: {chat_summary_line(chat)}")
        plan = chat.runtime.plan
        if plan.HasField("endpoint"):
            print(f"  endpoint {plan.endpoint.url} (from {plan.endpoint.source_detail or '-'})")
        if chat.runtime.HasField("current_run") and chat.runtime.current_run.stderr_path:
            print(f"  stderr   {chat.runtime.current_run.stderr_path}")
    if failure is not None:
        print(f"wgs: {failure}", file=sys.stderr)
        if chat.stderr_tail.strip() and not ns.json:
            print("stderr tail:\n" + indent(chat.stderr_tail), file=sys.stderr)
        print(f"wgs: details: wgs chat show {chat.id}", file=sys.stderr)
        return 1
    if chat.runtime.restart_count:
        failed = [r for r in chat.runtime.previous_runs if r.HasField("exited_at")]
        how = f": {run_outcome(failed[0])}" if failed else ""
        print(f"wgs: note: {chat.runtime.restart_count} earlier run(s) of {chat.id} failed{how}; it runs again "
              f"after a restart (history: wgs chat show {chat.id})", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# list / show / history / logs


def cmd_list(ns: argparse.Namespace) -> int:
    chats: list[chat_pb2.Chat] = []
    with _supervisor(ns) as conn:
        token = ""
        while True:
            req = chat_pb2.ListChatsRequest(include_ended=ns.all, page_size=1000, page_token=token)
            resp = conn.call(lambda req=req: conn.chat().ListChats(req, timeout=conn.timeout))
            chats.extend(resp.chats)
            token = resp.next_page_token
            if not token:
                break
    if ns.json:
        print(dumps([chat_to_dict(c, jaeger_url()) for c in chats]))
    elif not chats:
        print("no chats" + ("" if ns.all else " (use --all to include archived and deleted chats)"))
    else:
        print(chat_table(chats))
    return 0


def _get(conn: Conn, chat_id: str) -> chat_pb2.Chat:
    req = chat_pb2.GetChatRequest(chat_id=chat_id)
    resp: chat_pb2.GetChatResponse = conn.call(lambda: conn.chat().GetChat(req, timeout=conn.timeout))
    return resp.chat


def cmd_show(ns: argparse.Namespace) -> int:
    with _supervisor(ns) as conn:
        chat = _get(conn, parse_chat_id(ns.chat))
    _print_chat(chat, ns.json)
    return 0


def _all_messages(conn: Conn, chat_id: str) -> list[task_pb2.ChatMessage]:
    out: list[task_pb2.ChatMessage] = []
    token = ""
    while True:
        req = chat_pb2.ListChatMessagesRequest(chat_id=chat_id, page_size=1000, page_token=token)
        resp = conn.call(lambda req=req: conn.chat().ListChatMessages(req, timeout=conn.timeout))  # type: ignore[misc]
        out.extend(resp.messages)
        token = resp.next_page_token
        if not token:
            return out


def cmd_history(ns: argparse.Namespace) -> int:
    with _supervisor(ns) as conn:
        messages = _all_messages(conn, parse_chat_id(ns.chat))
    if ns.json:
        print(dumps([{"seq": m.seq, "role": role_name(m.role), "content": m.content, "request_id": m.request_id,
                      "created_at": m.created_at.ToJsonString() if m.HasField("created_at") else None}
                     for m in messages]))
    elif not messages:
        print("no messages yet")
    else:
        for m in messages:
            print(message_line(m))
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    """The run file, streamed by the supervisor that owns the chat (no path on this machine needed)."""
    chat_id = parse_chat_id(ns.chat)
    req = chat_pb2.StreamChatLogRequest(chat_id=chat_id, run=-1 if ns.previous else 0, follow=ns.follow)
    with _supervisor(ns) as conn:
        timeout = ATTACH_STREAM_DEADLINE if ns.follow else max(conn.timeout, 60.0)
        stream = conn.chat().StreamChatLog(req, timeout=timeout)
        try:
            for item in stream:
                if item.from_record:
                    print(f"wgs: the file of run #{item.run_number} is gone; showing the tail kept with the run",
                          file=sys.stderr)
                if item.data:
                    sys.stdout.buffer.write(item.data)
                    sys.stdout.flush()
                if item.ended and ns.follow and not item.from_record:
                    rt = _get(conn, chat_id).runtime
                    print(f"wgs: run #{item.run_number} of {chat_id} ended; state {state_name(rt.state)}",
                          file=sys.stderr)
        except grpc.RpcError as exc:
            raise conn.error(exc) from None
        finally:
            stream.cancel()
    return 0


class _Printer:
    """Prints a reply as its text streams in (partial pieces), then whatever the stored reply adds:
    each reply once, ending with a newline."""

    FINISHED_KEPT = 1000  # replies remembered as done, so a piece arriving after its reply is ignored

    def __init__(self) -> None:
        self.shown: dict[str, str] = {}
        self.finished: dict[str, None] = {}  # ordered set of request ids

    def partial(self, piece: task_pb2.PartialMessage) -> None:
        if piece.request_id in self.finished:
            return  # the stored reply was printed already (a piece may trail it)
        so_far = self.shown.get(piece.request_id, "")
        if piece.offset > len(so_far):
            return  # a gap (joined mid-reply): wait for the stored reply
        text = so_far[: piece.offset] + piece.text
        if not text.startswith(so_far):
            sys.stdout.write("\n")  # the reply restarted (the agent retried): start a new line
            so_far = ""
        sys.stdout.write(text[len(so_far):])
        sys.stdout.flush()
        self.shown[piece.request_id] = text

    def final(self, m: task_pb2.ChatMessage, prefix: str = "") -> None:
        so_far = self.shown.pop(m.request_id, "")
        self.finished[m.request_id] = None
        while len(self.finished) > self.FINISHED_KEPT:
            del self.finished[next(iter(self.finished))]
        if so_far and not prefix and m.content.startswith(so_far):
            rest = m.content[len(so_far):]  # the stream showed the beginning: print the rest only
            if rest.strip("\n"):
                print(rest.rstrip("\n"), flush=True)
            elif not so_far.endswith("\n"):
                print(flush=True)
            return
        if so_far:
            sys.stdout.write("\n")  # what streamed is not what was stored: the stored text follows whole
        print(prefix + m.content.rstrip("\n"), flush=True)


# ---------------------------------------------------------------------------------------------
# send / attach


def _await_answer(conn: Conn, chat_id: str, after_seq: int, request_id: str, timeout: float,
                  printer: _Printer | None = None) -> task_pb2.ChatMessage | None:
    """The ASSISTANT or SYSTEM_ERROR message answering `request_id`, or None after `timeout`.

    The chat's runtime is watched alongside: if the agent ends up FAILED or STOPPED no answer can
    come, so the wait ends at once with the reason instead of running into the timeout."""
    req = chat_pb2.WatchChatMessagesRequest(chat_id=chat_id, after_seq=after_seq, include_partial=printer is not None)
    stream = conn.chat().WatchChatMessages(req, timeout=timeout)
    runtime_stream = conn.chat().WatchChat(chat_pb2.WatchChatRequest(chat_id=chat_id), timeout=timeout)
    dead: list[chat_pb2.Chat] = []

    def watch_runtime() -> None:
        hopeless = (runtime_pb2.RUNTIME_STATE_FAILED, runtime_pb2.RUNTIME_STATE_STOPPED)
        try:
            for resp in runtime_stream:
                if resp.chat.runtime.state in hopeless:
                    dead.append(resp.chat)
                    stream.cancel()
                    return
        except grpc.RpcError:
            return  # cancelled, deadline, or no WatchChat: the message stream still decides

    watcher = threading.Thread(target=watch_runtime, daemon=True)
    watcher.start()
    try:
        for resp in stream:
            if resp.HasField("partial"):
                if printer is not None and resp.partial.request_id == request_id:
                    printer.partial(resp.partial)
                continue
            m: task_pb2.ChatMessage = resp.message
            if m.role in ANSWER_ROLES and m.request_id == request_id:
                return m
    except grpc.RpcError as exc:
        code = exc.code()
        if dead:
            rt = dead[0].runtime
            raise CliError(
                f"no reply from {chat_id}: its agent is {state_name(rt.state)}"
                + (f" ({one_line(rt.last_error)})" if rt.last_error else "")
                + f"; see `wgs chat show {chat_id}`"
            ) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return None
        raise conn.error(exc) from None
    finally:
        stream.cancel()
        runtime_stream.cancel()
        watcher.join(2)
    return None


def cmd_send(ns: argparse.Namespace) -> int:
    chat_id = parse_chat_id(ns.chat)
    text = sys.stdin.read() if ns.text == "-" else ns.text
    req = chat_pb2.SendMessageRequest(chat_id=chat_id, text=text, request_id=ns.request_id or "")
    with _supervisor(ns) as conn:
        resp = conn.call(lambda: conn.chat().SendMessage(req, timeout=conn.timeout))
        msg = resp.message
        note = " (agent restarted to answer)" if resp.respawned else ""
        rt = resp.runtime
        if rt.state == runtime_pb2.RUNTIME_STATE_FAILED:  # the agent could not be started for it
            raise CliError(f"message stored in {chat_id} (seq {msg.seq}) but its agent could not be started: "
                           f"{one_line(rt.last_error) or 'FAILED'}; fix the cause, then `wgs chat restart {chat_id}`")
        if rt.state == runtime_pb2.RUNTIME_STATE_BACKOFF:  # answered once a restart succeeds
            print(f"wgs: {chat_id}: the agent could not be started yet ({one_line(rt.last_error) or 'BACKOFF'}); "
                  "it is retried, and the message is answered once it runs", file=sys.stderr)
        if ns.wait is None:
            print(f"sent to {chat_id}: seq {msg.seq}, request {msg.request_id}{note}")
            return 0
        if note:
            print(f"wgs: {chat_id}{note}", file=sys.stderr)
        printer = _Printer() if sys.stdout.isatty() or ns.stream else None
        answer = _await_answer(conn, chat_id, msg.seq, msg.request_id, ns.wait, printer)
        if answer is None:
            rt = _get(conn, chat_id).runtime
            error = f"; last error: {one_line(rt.last_error)}" if rt.last_error else ""
            raise CliError(
                f"no reply from {chat_id} within {ns.wait:g}s (request {msg.request_id}; agent state "
                f"{state_name(rt.state)}{error}); see `wgs chat show {chat_id}`"
            )
    if answer.role == task_pb2.MESSAGE_ROLE_SYSTEM_ERROR:
        if printer is not None and printer.shown.get(answer.request_id):
            sys.stdout.write("\n")
        raise CliError(f"{chat_id} could not answer: {answer.content.strip()}")
    if printer is not None:
        printer.final(answer)
    else:
        print(answer.content.rstrip("\n"))
    return 0


def cmd_attach(ns: argparse.Namespace) -> int:
    chat_id = parse_chat_id(ns.chat)
    with _supervisor(ns) as conn:
        chat = _get(conn, chat_id)
        history = _all_messages(conn, chat_id)
        last_seq = history[-1].seq if history else 0
        pending: set[str] = set()
        cond = threading.Condition()
        stream = conn.chat().WatchChatMessages(
            chat_pb2.WatchChatMessagesRequest(chat_id=chat_id, after_seq=last_seq, include_partial=True),
            timeout=ATTACH_STREAM_DEADLINE)
        failure: list[str] = []
        printer = _Printer()

        def reader() -> None:
            try:
                for resp in stream:
                    if resp.HasField("partial"):
                        with cond:
                            printer.partial(resp.partial)
                        continue
                    m = resp.message
                    if m.role == task_pb2.MESSAGE_ROLE_USER:
                        continue
                    prefix = "" if m.role == task_pb2.MESSAGE_ROLE_ASSISTANT else f"[{role_name(m.role).lower()}] "
                    with cond:
                        printer.final(m, prefix)
                    with cond:
                        if m.role in ANSWER_ROLES:
                            pending.discard(m.request_id)
                        cond.notify_all()
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    failure.append(conn.error(exc).message)
            with cond:
                cond.notify_all()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        print(f"attached to {chat_id} ({state_name(chat.runtime.state)}); type a message, Ctrl-D to exit",
              file=sys.stderr, flush=True)
        try:
            for line in sys.stdin:
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                req = chat_pb2.SendMessageRequest(chat_id=chat_id, text=text)
                msg = conn.call(lambda req=req: conn.chat().SendMessage(req, timeout=conn.timeout)).message
                with cond:
                    pending.add(msg.request_id)
                if failure:
                    break
            with cond:
                cond.wait_for(lambda: not pending or bool(failure) or not thread.is_alive(), timeout=ns.wait)
        except KeyboardInterrupt:
            print("", file=sys.stderr)
        finally:
            stream.cancel()
            thread.join(2)
        if failure:
            raise CliError(failure[0])
        if pending:
            raise CliError(f"no reply from {chat_id} within {ns.wait:g}s to {len(pending)} message(s)")
    return 0


# ---------------------------------------------------------------------------------------------
# lifecycle


def cmd_lifecycle(ns: argparse.Namespace) -> int:
    chat_id = parse_chat_id(ns.chat)
    action = ns.action
    with _supervisor(ns) as conn:
        stub = conn.chat()
        if action == "interrupt":
            ir = conn.call(lambda: stub.InterruptChat(chat_pb2.InterruptChatRequest(chat_id=chat_id), timeout=conn.timeout))
            if ns.json:
                print(dumps({"id": chat_id, "delivered": ir.delivered, "pid": ir.pid or None, "detail": ir.detail}))
            if not ir.delivered:
                raise CliError(f"interrupt not delivered to {chat_id}: {ir.detail or 'no live agent'}")
            if not ns.json:
                print(f"sent SIGINT to {chat_id} (pid {ir.pid})")
            return 0
        calls = {
            "stop": (stub.StopChat, chat_pb2.StopChatRequest, "stopped"),
            "delete": (stub.DeleteChat, chat_pb2.DeleteChatRequest, "deleted"),
            "archive": (stub.ArchiveChat, chat_pb2.ArchiveChatRequest, "archived"),
            "restart": (stub.RestartChat, chat_pb2.RestartChatRequest, "restarted"),
        }
        method, request_type, verb = calls[action]
        timeout = max(conn.timeout, CREATE_TIMEOUT_MIN) if action == "restart" else max(conn.timeout, 30.0)
        chat = conn.call(lambda: method(request_type(chat_id=chat_id), timeout=timeout)).chat
    if ns.json:
        _print_chat(chat, True)
    else:
        print(f"{verb}: {chat_summary_line(chat)}")
    if action == "restart":
        failure = chat_failure(chat)
        if failure is not None:
            print(f"wgs: {failure}", file=sys.stderr)
            return 1
    return 0


def cmd_sweep(ns: argparse.Namespace) -> int:
    with connect("graph", ns.state_dir, ns.timeout) as conn:
        req = graph_pb2.ReconcileRequest(dry_run=ns.dry_run)
        resp = conn.call(lambda: conn.graph().Reconcile(req, timeout=conn.timeout))
    if ns.json:
        print(dumps(reconcile_to_dict(resp, ns.dry_run)))
    else:
        print(reconcile_lines(resp, ns.dry_run))
    return 0


# ---------------------------------------------------------------------------------------------
# parsers


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="state directory of the stack (default: $WGS_STATE_DIR or ./.wgs)")
    p.add_argument("--timeout", type=float, default=None,
                   help="deadline of each call in seconds (default: $WGS_RPC_TIMEOUT_SECONDS or 10)")


def add_parsers(sub: Any) -> None:
    chat = sub.add_parser("chat", help="create, inspect and talk to chats")
    csub = chat.add_subparsers(dest="chat_command", required=True, metavar="COMMAND")

    p = csub.add_parser(
        "create", help="create a chat and start its agent; fails loudly if the agent dies",
        epilog="A custom program as the agent: wgs chat create [options] -- PROGRAM ARGS... "
               "(or --command PROGRAM ARGS... as the last option). Exit 1 unless the agent is running "
               "(or exited with status 0) after --settle seconds; then the reason and its stderr tail go to stderr.",
    )
    _common(p)
    p.add_argument("--name", help="display name")
    p.add_argument("--model", help="model, e.g. qwen3-coder or claude:opus")
    p.add_argument("--executor", help="native (alias nex), claude, codex or command")
    p.add_argument("--endpoint", help="endpoint URL or name from config.toml")
    p.add_argument("--command", nargs=argparse.REMAINDER, metavar="ARGV", help="run this argv as the agent (rest of the line)")
    p.add_argument("--request-id", help="idempotency key: repeating it returns the same chat")
    p.add_argument("--cwd", help="working directory of the agent (must exist)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to watch the new chat before judging it: exit 1 unless its agent runs (or exited "
                        "0) at the end, or at once if it went FAILED (0: judge at once; default 2)")
    p.add_argument("--max-tokens", type=int, help="native: longest reply in tokens (default: endpoint config or 1024)")
    p.add_argument("--temperature", type=float, help="native: sampling temperature 0-2")
    p.add_argument("--top-p", type=float, help="native: nucleus sampling, 0 < P <= 1")
    p.add_argument("--stop", action="append", help="native: a stop sequence (repeatable, at most 4)")
    p.add_argument("--context-window", type=int,
                   help="native: context window in tokens when the server does not report one")
    p.add_argument("--json", action="store_true", help="print the chat as JSON")
    p.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_create)

    p = csub.add_parser("list", help="list chats with their agent state")
    _common(p)
    p.add_argument("--all", action="store_true", help="include archived and deleted chats")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = csub.add_parser("show", help="everything about a chat's agent: state, exit, plan, stderr tail, trace")
    _common(p)
    p.add_argument("chat", help="chat id: .chat-3, chat-3 or 3")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)

    p = csub.add_parser("send", help="send a message (with --wait: print the reply)")
    _common(p)
    p.add_argument("chat", help="chat id")
    p.add_argument("text", help="message text ('-' reads stdin)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait this long for the reply and print it")
    p.add_argument("--request-id", help="idempotency key (the reply carries it)")
    p.add_argument("--stream", action="store_true",
                   help="with --wait: print the reply as it is generated even when stdout is not a terminal")
    p.set_defaults(func=cmd_send)

    p = csub.add_parser("history", help="print a chat's messages")
    _common(p)
    p.add_argument("chat", help="chat id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_history)

    p = csub.add_parser("logs", help="print the agent's stdout/stderr file (current or previous run), from the "
                                     "supervisor that runs it")
    _common(p)
    p.add_argument("chat", help="chat id")
    p.add_argument("--previous", action="store_true", help="the run before the current one")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run exits")
    p.set_defaults(func=cmd_logs)

    for action, help_text in (
        ("stop", "stop the agent (task back to OPEN; a new message starts it again)"),
        ("delete", "stop the agent and mark the chat deleted (ABANDONED)"),
        ("archive", "stop the agent and archive the chat (DONE, tag archived)"),
        ("interrupt", "send SIGINT to the agent; says whether one received it"),
        ("restart", "clear the failure history and start the agent again"),
    ):
        p = csub.add_parser(action, help=help_text)
        _common(p)
        p.add_argument("chat", help="chat id")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=cmd_lifecycle, action=action)

    p = csub.add_parser("attach", help="interactive: send stdin lines, print replies; Ctrl-D exits")
    _common(p)
    p.add_argument("chat", help="chat id")
    p.add_argument("--wait", type=float, default=120.0,
                   help="after end of input, wait this long for outstanding replies (default 120)")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("sweep", help="reset in-progress tasks whose owner is proven gone (GraphService.Reconcile)")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="only report")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_sweep)

