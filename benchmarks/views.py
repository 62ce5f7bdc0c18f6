"""Views and creation in one run: GetChat and ListChats of 1,000 live chats against a health Check,
CreateChat against supervisord's startProcess (issue 10, item 8).

The stack runs as `wgs up` runs it: graph, dispatch and supervisor as processes, authentication on
(every call presents a token), tracing on with the embedded file exporter unless `--no-tracing`.
Baselines are measured in the same run: a health Check on the same supervisor (the cost of one
gRPC round trip to that process, for the views) and supervisord 4.x `startProcess` of the same
program (for CreateChat). The view calls are interleaved with the Checks (one Check, one GetChat,
and a ListChats every few rounds) so machine noise falls on baseline and measured call alike.

Goals: GetChat p50 <= 2x Check p50; ListChats of 1,000 chats p50 <= 50 ms; CreateChat p50 <= 2.5x
startProcess p50 and p99 <= 30 ms.

Usage: python benchmarks/views.py [--chats 1000] [--creates 200] [--rounds 600] [--lists 60]
                                  [--no-tracing] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from create_chat import AGENT_ARGV, bench_supervisord, pct  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from tests.harness import authed_channel, kill_agents, start_service  # noqa: E402
from wgs.common import auth  # noqa: E402
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2, runtime_service_pb2, runtime_service_pb2_grpc  # noqa: E402


def stats(name: str, ms: list[float], base: dict[str, float] | None = None,
          base_name: str = "") -> dict[str, float | str]:
    out: dict[str, float | str] = {"name": name, "n": len(ms), "p50_ms": statistics.median(ms),
                                   "p99_ms": pct(ms, 0.99), "max_ms": max(ms)}
    if base is not None:
        out["baseline"] = base_name
        out["p50_ratio"] = float(out["p50_ms"]) / float(base["p50_ms"])
        out["p99_ratio"] = float(out["p99_ms"]) / float(base["p99_ms"])
    return out


def start_stack(state: Path, chats: int, tracing: bool) -> list:
    otel = {"OTEL_SDK_DISABLED": "false"} if tracing else {}
    graph = start_service("graph", state, env=otel)
    dispatch = start_service("dispatch", state, env=otel)
    sup = start_service("supervisor", state, env={
        **otel, "WGS_GRAPH_ADDR": graph.address, "WGS_DISPATCH_ADDR": dispatch.address,
        "WGS_MAX_LIVE_CHATS": str(chats + 10),
    })
    return [graph, dispatch, sup]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chats", type=int, default=1000, help="live chats (agent /bin/sleep 3600) to list")
    ap.add_argument("--creates", type=int, default=200, help="first creates compared with supervisord")
    ap.add_argument("--rounds", type=int, default=600, help="Check + GetChat pairs")
    ap.add_argument("--lists", type=int, default=60, help="ListChats calls (page_size 1000) among the rounds")
    ap.add_argument("--no-tracing", action="store_true", help="OTEL_SDK_DISABLED=true in every process")
    ap.add_argument("--state-dir", type=Path, help="keep the stack's state here (default: a temporary dir)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "views.json")
    ns = ap.parse_args()
    tracing = not ns.no_tracing
    results: dict[str, object] = {"chats": ns.chats, "tracing": tracing, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        sd_dir = tmpdir / "supervisord"
        sd_dir.mkdir()
        sd = bench_supervisord(ns.creates, sd_dir)
        state = ns.state_dir or tmpdir / "wgs"
        stack = start_stack(state, ns.chats, tracing)
        try:
            with authed_channel(stack[2].address) as ch, \
                    authed_channel(stack[0].address, auth.SUPERVISOR) as graph_ch:
                stub = chat_pb2_grpc.ChatServiceStub(ch)
                health = health_pb2_grpc.HealthStub(ch)
                check = health_pb2.HealthCheckRequest(service="wgs.v1.ChatService")
                # Where GetChat's time goes: the same record read straight from the graph, as the
                # supervisor reads it, beside a Check on the graph.
                graph = runtime_service_pb2_grpc.RuntimeServiceStub(graph_ch)
                graph_health = health_pb2_grpc.HealthStub(graph_ch)
                graph_check = health_pb2.HealthCheckRequest(service="")
                for _ in range(20):  # warm the channels and the servers' code paths
                    health.Check(check, timeout=10)
                    graph_health.Check(graph_check, timeout=10)
                creates, ids = [], []
                for _ in range(ns.chats):
                    t0 = time.perf_counter()
                    resp = stub.CreateChat(chat_pb2.CreateChatRequest(command=AGENT_ARGV), timeout=30)
                    creates.append((time.perf_counter() - t0) * 1000)
                    rt = resp.chat.runtime
                    if rt.state != runtime_pb2.RUNTIME_STATE_RUNNING or not rt.current_run.pid:
                        raise RuntimeError(f"chat {resp.chat.id} not running: {rt.last_error}")
                    ids.append(resp.chat.id)
                time.sleep(2)  # let the creates' background work (spans, logs) settle
                checks, gets, lists, graph_checks, graph_gets = [], [], [], [], []
                every = max(1, ns.rounds // max(1, ns.lists))
                list_req = chat_pb2.ListChatsRequest(page_size=1000)
                for i in range(ns.rounds):
                    t0 = time.perf_counter()
                    health.Check(check, timeout=10)
                    checks.append((time.perf_counter() - t0) * 1000)
                    get = chat_pb2.GetChatRequest(chat_id=ids[(i * 7919) % len(ids)])
                    t0 = time.perf_counter()
                    stub.GetChat(get, timeout=10)
                    gets.append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    graph_health.Check(graph_check, timeout=10)
                    graph_checks.append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    graph.GetChatRecord(runtime_service_pb2.GetChatRecordRequest(chat_id=get.chat_id), timeout=10)
                    graph_gets.append((time.perf_counter() - t0) * 1000)
                    if i % every == 0 and len(lists) < ns.lists:
                        t0 = time.perf_counter()
                        listed = stub.ListChats(list_req, timeout=30)
                        lists.append((time.perf_counter() - t0) * 1000)
                        if len(listed.chats) != min(1000, ns.chats):
                            raise RuntimeError(f"ListChats returned {len(listed.chats)} chats, not {ns.chats}")
                chat = stub.GetChat(chat_pb2.GetChatRequest(chat_id=ids[0]), timeout=10).chat
                if not chat.pid:
                    raise RuntimeError(f"{ids[0]} has no live pid")
        finally:
            for svc in reversed(stack):
                svc.terminate(60)
            kill_agents(state)
    results["load_after"] = os.getloadavg()
    sd_row = stats("supervisord startProcess", sd)
    check_row = stats("health Check (supervisor)", checks)
    graph_check_row = stats("health Check (graph)", graph_checks)
    rows = [
        check_row,
        stats("GetChat (live chat)", gets, check_row, "health Check"),
        graph_check_row,
        stats("graph GetChatRecord (same chat)", graph_gets, graph_check_row, "graph Check"),
        stats(f"ListChats ({min(1000, ns.chats)} live chats)", lists, check_row, "health Check"),
        sd_row,
        stats(f"CreateChat (first {ns.creates})", creates[:ns.creates], sd_row, "startProcess"),
        stats(f"CreateChat (all {len(creates)})", creates, sd_row, "startProcess"),
    ]
    results["rows"] = rows
    print(f"tracing {'on' if tracing else 'off'}; load average before {results['load_before'][0]:.1f}, "  # type: ignore[index]
          f"after {results['load_after'][0]:.1f}")  # type: ignore[index]
    for row in rows:
        ratio = (f"  p50 x{row['p50_ratio']:.2f}  p99 x{row['p99_ratio']:.2f} vs {row['baseline']}"
                 if "baseline" in row else "")
        print(f"{row['name']:<32} n={row['n']:<5} p50={row['p50_ms']:7.2f} ms  p99={row['p99_ms']:7.2f} ms{ratio}")
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
