"""Streaming to the user: from the model server emitting a chunk to a ChatService client having it.

A real stack (graph, dispatch and supervisor as processes, authentication on, tracing on with the
embedded file exporter as `wgs up` runs it unless --no-tracing) and a native chat on the fake
OpenAI-compatible server (tests/fakes/fake_openai.py), which streams each scripted reply in chunks
of --chunk-size characters with --chunk-delay seconds between them and logs when it flushed each
chunk (`FakeOpenAI.emitted`, time.monotonic()). A client on ChatService.WatchChatMessages
(include_partial=True) — what `wgs chat attach` and `wgs chat send --wait` read — notes when the
text it holds first contains each chunk (a partial piece reaching that far, or the stored reply).
A second client on GraphService.WatchMessages splits the time into agent + graph (server → graph
watcher) and the supervisor's pass-through (graph watcher → ChatService watcher).

Every process runs on this machine, so time.monotonic() (CLOCK_MONOTONIC) is one clock for all.
Goal (issue 11, item 8): every chunk shown within 100 ms of the server emitting it.

Run: `.venv/bin/python benchmarks/stream_latency.py [--messages 20] [--chunks 100] [--chunk-delay 0.02]`.
Prints a table and writes JSON to benchmarks/results/stream_latency.json (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from tests.fakes.fake_openai import Emitted, FakeOpenAI, Reply  # noqa: E402
from tests.harness import authed_channel, kill_agents, start_service  # noqa: E402
from wgs.v1 import chat_pb2, chat_pb2_grpc, graph_pb2, graph_pb2_grpc, runtime_pb2, task_pb2  # noqa: E402

MODEL = "qwen3-coder"
ANSWER_ROLES = (task_pb2.MESSAGE_ROLE_ASSISTANT, task_pb2.MESSAGE_ROLE_SYSTEM_ERROR)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def stats(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": pct(ms, 0.99), "max_ms": max(ms)}


@dataclass
class Seen:
    """What one watcher received for one reply: (time.monotonic(), characters held) per event."""

    request_id: str = ""
    events: list[tuple[float, int]] = field(default_factory=list)
    final_at: float = 0.0
    final_text: str = ""
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def held_at(self, end: int) -> float:
        """When this watcher first held at least `end` characters of the reply."""
        for at, held in self.events:
            if held >= end:
                return at
        return float("nan")


def follow(responses: Any, seen: Seen, last_seq: int) -> None:
    """Read a WatchChatMessages / WatchMessages stream (same message shapes) into `seen`."""
    so_far = ""
    try:
        for resp in responses:
            now = time.monotonic()
            if resp.HasField("partial"):
                piece = resp.partial
                if seen.request_id and piece.request_id != seen.request_id:
                    continue
                if piece.offset <= len(so_far):
                    so_far = so_far[: piece.offset] + piece.text
                    seen.events.append((now, len(so_far)))
                continue
            m = resp.message
            if m.seq <= last_seq:
                seen.started.set()  # the previous message: this watcher is registered
                continue
            if m.role in ANSWER_ROLES and m.request_id == seen.request_id:
                seen.final_at, seen.final_text = now, m.content
                seen.events.append((now, len(m.content)))
                seen.done.set()
                return
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
            raise
    finally:
        seen.started.set()
        seen.done.set()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (/proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_message(chat: chat_pb2_grpc.ChatServiceStub, graph: graph_pb2_grpc.GraphServiceStub, fake: FakeOpenAI,
                chat_id: str, last_seq: int, n: int, args: argparse.Namespace) -> dict[str, Any]:
    words = " ".join(f"w{n:02d}{i:03d}" for i in range(args.chunks * args.chunk_size // 7 + 1))
    text = words[: args.chunks * args.chunk_size]
    fake.script(Reply(text=text, chunk_delay=args.chunk_delay))
    request_id = f"bench-{n:03d}"
    via_sup, via_graph = Seen(request_id), Seen(request_id)
    # Watch from the previous message on: receiving it proves the watcher is registered before the
    # new message (and so every piece of its reply) exists.
    sup_stream = chat.WatchChatMessages(chat_pb2.WatchChatMessagesRequest(
        chat_id=chat_id, after_seq=last_seq - 1, include_partial=True), timeout=120)
    graph_stream = graph.WatchMessages(graph_pb2.WatchMessagesRequest(
        chat_id=chat_id, after_seq=last_seq - 1, include_partial=True), timeout=120)
    threads = [threading.Thread(target=follow, args=(sup_stream, via_sup, last_seq), daemon=True),
               threading.Thread(target=follow, args=(graph_stream, via_graph, last_seq), daemon=True)]
    for t in threads:
        t.start()
    try:
        if not (via_sup.started.wait(30) and via_graph.started.wait(30)):
            raise RuntimeError("the watchers did not start")
        streams_before = fake.streams
        sent = chat.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat_id, text=f"message {n}",
                                                            request_id=request_id), timeout=30).message
        if not via_sup.done.wait(120) or not via_sup.final_text:
            raise RuntimeError(f"no reply to {request_id}")
        via_graph.done.wait(30)
    finally:
        sup_stream.cancel()
        graph_stream.cancel()
        for t in threads:
            t.join(5)
    if via_sup.final_text != text:
        raise RuntimeError(f"reply to {request_id} is not the scripted text: {via_sup.final_text[:80]!r}")
    emitted: list[Emitted] = [e for e in fake.emitted if e.stream > streams_before]
    if {e.stream for e in emitted} != {streams_before + 1}:
        raise RuntimeError(f"expected one streamed reply to {request_id}, got streams {sorted({e.stream for e in emitted})}")
    total, to_graph, pass_through = [], [], []
    partial_hits = 0
    for e in emitted:
        s_at, g_at = via_sup.held_at(e.end), via_graph.held_at(e.end)
        total.append((s_at - e.at) * 1000)
        to_graph.append((g_at - e.at) * 1000)
        pass_through.append((s_at - g_at) * 1000)
        partial_hits += s_at < via_sup.final_at
    return {"seq": sent.seq, "chunks": len(emitted), "total_ms": total, "to_graph_ms": to_graph,
            "pass_through_ms": pass_through, "first_chunk_ms": total[0],
            "shown_as_partial": partial_hits, "supervisor_events": len(via_sup.events)}


def baseline(fake: FakeOpenAI, args: argparse.Namespace, replies: int) -> list[float]:
    """The machine's floor: the same kind of reply read straight from the server with httpx."""
    import httpx

    out: list[float] = []
    text = "x" * (args.chunks * args.chunk_size)
    with httpx.Client(timeout=60) as client:
        for _ in range(replies):
            fake.script(Reply(text=text, chunk_delay=args.chunk_delay))
            streams_before = fake.streams
            seen = Seen()
            held = 0
            with client.stream("POST", f"{fake.base_url}/v1/chat/completions", json={
                    "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: {"):
                        delta = json.loads(line[6:])["choices"]
                        content = delta[0]["delta"].get("content") if delta else None
                        if content:
                            held += len(content)
                            seen.events.append((time.monotonic(), held))
            out.extend((seen.held_at(e.end) - e.at) * 1000 for e in fake.emitted if e.stream > streams_before)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wgs-bench-stream-") as tmp, \
            FakeOpenAI(models=[MODEL], chunk_size=args.chunk_size) as fake:
        state = Path(args.state_dir) if args.state_dir else Path(tmp) / "state"
        state.mkdir(parents=True)
        (state / "config.toml").write_text(
            f'[[endpoints]]\nname = "lab"\nurl = "{fake.base_url}"\ndefault = true\n')
        floor = baseline(fake, args, max(1, args.messages // 4))
        otel = {} if args.no_tracing else {"OTEL_SDK_DISABLED": "false"}
        procs = []
        try:
            procs.append(start_service("graph", state, env=otel))
            procs.append(start_service("dispatch", state, env=otel))
            procs.append(start_service("supervisor", state, env={
                **otel, "WGS_GRAPH_ADDR": procs[0].address, "WGS_DISPATCH_ADDR": procs[1].address}))
            with authed_channel(procs[2].address) as sup_ch, authed_channel(procs[0].address) as graph_ch:
                chat = chat_pb2_grpc.ChatServiceStub(sup_ch)
                graph = graph_pb2_grpc.GraphServiceStub(graph_ch)
                created = chat.CreateChat(chat_pb2.CreateChatRequest(executor="native", model=MODEL,
                                                                     endpoint="lab"), timeout=60).chat
                if created.runtime.state != runtime_pb2.RUNTIME_STATE_RUNNING:
                    raise RuntimeError(f"chat did not start: {created.runtime.last_error}")
                # Warm-up (not counted): the agent's first answer, and a message to watch from.
                fake.script(Reply(text="warm-up reply"))
                warm = chat.SendMessage(chat_pb2.SendMessageRequest(chat_id=created.id, text="warm up"),
                                        timeout=30).message
                last_seq = warm.seq
                for resp in chat.WatchChatMessages(chat_pb2.WatchChatMessagesRequest(
                        chat_id=created.id, after_seq=last_seq), timeout=60):
                    if resp.message.role in ANSWER_ROLES:
                        last_seq = resp.message.seq
                        break
                pids = {"agent": created.runtime.current_run.pid, "graph": procs[0].proc.pid,
                        "supervisor": procs[2].proc.pid}
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                results = []
                for n in range(args.messages):
                    r = one_message(chat, graph, fake, created.id, last_seq, n, args)
                    results.append(r)
                    last_seq = r["seq"] + 1  # the user message, then its reply
                cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        finally:
            for p in reversed(procs):
                p.terminate()
            kill_agents(state)
    total = [x for r in results for x in r["total_ms"]]
    return {
        "config": {"messages": args.messages, "chunks": args.chunks, "chunk_size": args.chunk_size,
                   "chunk_delay_s": args.chunk_delay, "tracing": not args.no_tracing},
        "baseline_server_to_httpx": stats(floor),
        "server_to_client": stats(total),
        "server_to_graph_watcher": stats([x for r in results for x in r["to_graph_ms"]]),
        "graph_to_client": stats([x for r in results for x in r["pass_through_ms"]]),
        "first_chunk": stats([r["first_chunk_ms"] for r in results]),
        "chunks_shown_before_the_stored_reply": sum(r["shown_as_partial"] for r in results),
        "chunks": len(total),
        "events_per_reply": statistics.median(r["supervisor_events"] for r in results),
        # CPU the stack spent while streaming, per piece handed to the watchers (the replies' other work
        # -- the message, the stored reply, status reports -- is in it too).
        "cpu_ms_per_event": {name: round(sec * 1000 / sum(r["supervisor_events"] for r in results), 2)
                             for name, sec in cpu.items()},
        "within_100ms": sum(1 for x in total if x <= 100) / len(total),
        "late_chunks": [{"reply": n, "chunk": i, "of": r["chunks"], "total_ms": round(x, 1),
                         "to_graph_ms": round(r["to_graph_ms"][i], 1)}
                        for n, r in enumerate(results) for i, x in enumerate(r["total_ms"]) if x > 100],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=100, help="chunks per reply")
    ap.add_argument("--chunk-size", type=int, default=4, help="characters per chunk")
    ap.add_argument("--chunk-delay", type=float, default=0.02, help="seconds between chunks")
    ap.add_argument("--no-tracing", action="store_true", help="OTEL_SDK_DISABLED=true in every process")
    ap.add_argument("--state-dir", help="keep the stack's state here (a new directory), e.g. for `wgs trace`")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "stream_latency.json"))
    args = ap.parse_args()
    out = run(args)
    print(f"{out['chunks']} chunks in {args.messages} replies ({args.chunks} chunks of {args.chunk_size} chars, "
          f"{args.chunk_delay * 1000:g} ms apart), tracing {'off' if args.no_tracing else 'on'}")
    print(f"{'what':<44} {'p50':>9} {'p99':>9} {'max':>9}")
    for key, label in (("baseline_server_to_httpx", "baseline: server -> httpx reading it directly"),
                       ("server_to_client", "server emits chunk -> ChatService client"),
                       ("first_chunk", "  first chunk of each reply"),
                       ("server_to_graph_watcher", "  server -> graph watcher (agent + graph)"),
                       ("graph_to_client", "  graph watcher -> client (supervisor)")):
        s = out[key]
        print(f"{label:<44} {s['p50_ms']:>7.1f}ms {s['p99_ms']:>7.1f}ms {s['max_ms']:>7.1f}ms")
    print(f"within 100 ms: {out['within_100ms'] * 100:.1f} % of chunks; shown before the stored reply: "
          f"{out['chunks_shown_before_the_stored_reply']} of {out['chunks']}; "
          f"events per reply (median): {out['events_per_reply']:g}")
    print("CPU per event: " + ", ".join(f"{k} {v:.2f} ms" for k, v in out["cpu_ms_per_event"].items()))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
