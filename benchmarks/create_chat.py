"""CreateChat latency against raw spawn and supervisord, and 1,000 live chats under one supervisor.

Usage: python benchmarks/create_chat.py [--chats 200] [--live 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import xmlrpc.client
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from tests.harness import authed_channel, kill_agents, start_service  # noqa: E402
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2  # noqa: E402

AGENT_ARGV = ["/bin/sleep", "3600"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def summarize(name: str, ms: list[float], base: dict[str, float] | None) -> dict[str, float | str]:
    out: dict[str, float | str] = {
        "name": name, "n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": pct(ms, 0.99), "max_ms": max(ms),
    }
    if base:
        out["p50_ratio_vs_raw"] = float(out["p50_ms"]) / base["p50_ms"]
        out["p99_ratio_vs_raw"] = float(out["p99_ms"]) / base["p99_ms"]
    return out


def bench_raw(n: int) -> list[float]:
    times, procs = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.Popen(AGENT_ARGV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        times.append((time.perf_counter() - t0) * 1000)
        procs.append(p)
    for p in procs:
        p.kill()
        p.wait()
    return times


def bench_supervisord(n: int, workdir: Path) -> list[float]:
    sock = workdir / "supervisor.sock"
    conf = workdir / "supervisord.conf"
    conf.write_text(textwrap.dedent(f"""
        [unix_http_server]
        file={sock}
        [supervisord]
        logfile={workdir}/supervisord.log
        pidfile={workdir}/supervisord.pid
        nodaemon=true
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [program:agent]
        command={' '.join(AGENT_ARGV)}
        process_name=%(program_name)s_%(process_num)04d
        numprocs={n}
        autostart=false
        autorestart=false
        startsecs=0
        stdout_logfile={workdir}/%(program_name)s_%(process_num)04d.log
        redirect_stderr=true
    """))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "supervisord"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from supervisor.xmlrpc import SupervisorTransport

    def connect() -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy("http://127.0.0.1",
                                         transport=SupervisorTransport(None, None, f"unix://{sock}"))

    times = []
    try:
        deadline = time.monotonic() + 20
        while True:
            server = connect()  # a failed request leaves the transport unusable: new one per try
            try:
                server.supervisor.getState()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"supervisord did not start: {(workdir / 'supervisord.log').read_text()}") from None
                time.sleep(0.05)
        for i in range(n):
            t0 = time.perf_counter()
            server.supervisor.startProcess(f"agent:agent_{i:04d}", True)
            times.append((time.perf_counter() - t0) * 1000)
        server.supervisor.stopAllProcesses(True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return times


def start_stack(state: Path, max_chats: int) -> list:
    graph = start_service("graph", state)
    dispatch = start_service("dispatch", state)
    sup = start_service("supervisor", state, env={
        "WGS_GRAPH_ADDR": graph.address, "WGS_DISPATCH_ADDR": dispatch.address,
        "WGS_MAX_LIVE_CHATS": str(max_chats + 10), "WGS_LOG_LEVEL": "WARNING",
        # Measure exit recording, not restarts: the first failure is final (FAILED).
        "WGS_RESTART_MAX_FAILURES": "0",
    })
    return [graph, dispatch, sup]


def bench_wgs(n: int, stub: chat_pb2_grpc.ChatServiceStub) -> tuple[list[float], list[str]]:
    times, ids = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = stub.CreateChat(chat_pb2.CreateChatRequest(command=AGENT_ARGV), timeout=30)
        times.append((time.perf_counter() - t0) * 1000)
        chat = resp.chat
        if chat.runtime.state != runtime_pb2.RUNTIME_STATE_RUNNING or not chat.runtime.current_run.pid:
            raise RuntimeError(f"chat {chat.id} not running: {chat.runtime.last_error}")
        ids.append(chat.id)
    return times, ids


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_exit(watch_iter, chat_id: str, pid: int) -> None:
    for event in watch_iter:
        run = event.chat.runtime.current_run
        if event.chat.id == chat_id and run.pid == pid and run.HasField("signal"):
            return
    raise RuntimeError(f"watch ended before the exit of {chat_id} was recorded")


def bench_live(total: int, stub: chat_pb2_grpc.ChatServiceStub, sup_pid: int, ids: list[str],
               single_kills: int) -> dict[str, float]:
    while len(ids) < total:
        resp = stub.CreateChat(chat_pb2.CreateChatRequest(command=AGENT_ARGV), timeout=30)
        ids.append(resp.chat.id)
    time.sleep(2)  # let start-up work settle before measuring idle CPU
    rss = proc_rss_kib(sup_pid)
    cpu0, t0 = proc_cpu_seconds(sup_pid), time.monotonic()
    time.sleep(10)
    idle_cpu_pct = (proc_cpu_seconds(sup_pid) - cpu0) / (time.monotonic() - t0) * 100
    pids = {}
    for chat_id in ids:
        chat = stub.GetChat(chat_pb2.GetChatRequest(chat_id=chat_id), timeout=30).chat
        pids[chat_id] = chat.runtime.current_run.pid

    # One death at a time: from SIGKILL to the exit recorded in the graph (WatchChat publishes after
    # the graph write), the latency a user of one chat sees.
    watch = stub.WatchChat(chat_pb2.WatchChatRequest(), timeout=600)
    it = iter(watch)
    single = []
    for chat_id in ids[:single_kills]:
        t_kill = time.perf_counter()
        os.kill(pids[chat_id], signal.SIGKILL)
        _wait_exit(it, chat_id, pids[chat_id])
        single.append((time.perf_counter() - t_kill) * 1000)

    # Then every remaining agent at once.
    pending = set(ids[single_kills:])
    t_kill = time.perf_counter()
    for chat_id in pending:
        try:
            os.kill(pids[chat_id], signal.SIGKILL)
        except ProcessLookupError:
            pass
    for event in it:
        run = event.chat.runtime.current_run
        if event.chat.id in pending and run.pid == pids[event.chat.id] and run.HasField("signal"):
            pending.discard(event.chat.id)
            if not pending:
                break
    all_recorded_ms = (time.perf_counter() - t_kill) * 1000
    watch.cancel()
    return {"live_chats": total, "supervisor_rss_mib": rss / 1024, "supervisor_idle_cpu_pct": idle_cpu_pct,
            "single_death_to_recorded_p50_ms": statistics.median(single),
            "single_death_to_recorded_p99_ms": pct(single, 0.99),
            "single_death_to_recorded_max_ms": max(single),
            "kill_all_remaining": total - single_kills,
            "kill_all_to_all_exits_recorded_ms": all_recorded_ms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chats", type=int, default=200)
    ap.add_argument("--live", type=int, default=1000)
    ap.add_argument("--single-kills", type=int, default=100, help="agents killed one at a time")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "create_chat.json")
    ns = ap.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        raw = bench_raw(ns.chats)
        base = summarize("raw Popen", raw, None)
        sd_dir = tmpdir / "supervisord"
        sd_dir.mkdir()
        sd = bench_supervisord(ns.chats, sd_dir)
        stack = start_stack(tmpdir / "wgs", max(ns.chats, ns.live))
        try:
            with authed_channel(stack[2].address) as ch:
                stub = chat_pb2_grpc.ChatServiceStub(ch)
                wgs_times, ids = bench_wgs(ns.chats, stub)
                rows = [base, summarize("supervisord startProcess", sd, base),
                        summarize("wgs CreateChat (running pid)", wgs_times, base)]
                results["latency"] = rows
                if ns.live:
                    results["live"] = bench_live(ns.live, stub, stack[2].proc.pid, ids, ns.single_kills)
        finally:
            for svc in reversed(stack):
                svc.terminate(60)
            kill_agents(tmpdir / "wgs")
    for row in results["latency"]:  # type: ignore[union-attr]
        ratio = f"  p50 x{row.get('p50_ratio_vs_raw', 1):.2f}  p99 x{row.get('p99_ratio_vs_raw', 1):.2f}"
        print(f"{row['name']:<32} n={row['n']:<5} p50={row['p50_ms']:.2f} ms  p99={row['p99_ms']:.2f} ms{ratio}")
    if "live" in results:
        print(json.dumps(results["live"], indent=2))
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
