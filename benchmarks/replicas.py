"""Supervisor replicas: CreateChat throughput and latency with 3 replicas against 1, and failover time.

Both set-ups run in the same invocation on one fresh PostgreSQL database each (machines are noisy:
the 1-replica figures are the baseline of the 3-replica ones):

- **1 replica**: one graph, one supervisor; `--clients` threads create `--chats` chats.
- **3 replicas**: two graphs, three supervisors; the same clients, each on its own connection to
  one of the supervisors (as a Kubernetes Service spreads connections), create the same number.
- **failover** (3 replicas): `--rounds` times, one replica is killed with its run monitors and
  agents (a lost pod); for each of its chats, the time from the kill until the chat is RUNNING on
  a survivor. Reported beside the bound the design promises: lease + one failover scan (lease/3)
  + the restart delay.

The agent is `/bin/sleep`: what is measured is the supervisors' work, not an agent's start-up.
On a 2-core machine three replicas compete for the same cores, so more replicas buy availability
here, not speed; on a cluster each replica has its own.

Usage: python benchmarks/replicas.py [--chats 120] [--clients 6] [--rounds 3] [--lease 9]
       [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from tests.harness import ServiceProcess, authed_channel, kill_agents, start_service  # noqa: E402
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2  # noqa: E402

AGENT = ["/bin/sleep", "3600"]
R = runtime_pb2


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextmanager
def database(base: str) -> Iterator[str]:
    name = f"wgs_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Cluster:
    tmp: Path
    graphs: list[ServiceProcess]
    dispatch: ServiceProcess
    lease: int
    supervisors: dict[str, ServiceProcess] = field(default_factory=dict)

    def add_supervisor(self, sid: str) -> ServiceProcess:
        graph = self.graphs[len(self.supervisors) % len(self.graphs)]
        env = {"WGS_GRAPH_ADDR": graph.address, "WGS_DISPATCH_ADDR": self.dispatch.address, "WGS_SUPERVISOR_ID": sid,
               "WGS_LEASE_SECONDS": str(self.lease), "WGS_STOP_GRACE_SECONDS": "1", "WGS_MAX_LIVE_CHATS": "1000",
               "WGS_MAX_CONCURRENT_CREATES": "32", "WGS_CHAT_MEMORY_BYTES": "0",
               "WGS_RESTART_INITIAL_BACKOFF_SECONDS": "0.5"}
        proc = start_service("supervisor", self.tmp / sid, env)
        self.supervisors[sid] = proc
        return proc

    def close(self) -> None:
        for sid, proc in self.supervisors.items():
            proc.terminate()
            kill_agents(self.tmp / sid)
        self.dispatch.terminate()
        for g in self.graphs:
            g.terminate()


@contextmanager
def cluster(db_url: str, graphs: int, replicas: int, lease: int) -> Iterator[Cluster]:
    tmp = Path(tempfile.mkdtemp(prefix="wgs-bench-replicas-"))
    gs = [start_service("graph", tmp / f"graph-{i}", env={"WGS_DATABASE_URL": db_url}) for i in range(graphs)]
    c = Cluster(tmp, gs, start_service("dispatch", tmp / "dispatch"), lease)
    try:
        for i in range(replicas):
            c.add_supervisor(f"sup-{i + 1}")
        yield c
    finally:
        c.close()


def create_load(c: Cluster, chats: int, clients: int) -> dict[str, float]:
    """`clients` threads, each on its own connection to one replica (round robin), create `chats` in all."""
    addresses = [p.address for p in c.supervisors.values()]
    per_client = [chats // clients + (1 if i < chats % clients else 0) for i in range(clients)]
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        with authed_channel(addresses[i % len(addresses)]) as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            stub.ListChats(chat_pb2.ListChatsRequest(page_size=1), timeout=10)  # connected before timing
            start.wait()
            for _ in range(per_client[i]):
                t0 = time.perf_counter()
                try:
                    resp = stub.CreateChat(chat_pb2.CreateChatRequest(command=AGENT), timeout=60)
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
                    continue
                ms = (time.perf_counter() - t0) * 1000
                assert resp.chat.runtime.state == R.RUNTIME_STATE_RUNNING
                with lock:
                    latencies.append(ms)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} creates failed, e.g. {errors[0]}")
    return {"chats": len(latencies), "wall_s": wall, "per_second": len(latencies) / wall,
            "p50_ms": statistics.median(latencies), "p99_ms": pct(latencies, 0.99)}


def owners(c: Cluster, via: str) -> dict[str, str]:
    with authed_channel(c.supervisors[via].address) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        out, token = {}, ""
        while True:
            resp = stub.ListChats(chat_pb2.ListChatsRequest(page_size=500, page_token=token), timeout=30)
            out.update({x.id: x.runtime.supervisor_id for x in resp.chats})
            token = resp.next_page_token
            if not token:
                return out


def failover_round(c: Cluster, victim: str, survivor: str) -> list[float]:
    """Kill `victim` with its agents; seconds until each of its chats runs on a survivor."""
    everything = owners(c, survivor)
    lost = [chat for chat, owner in everything.items() if owner == victim]
    done: dict[str, float] = {}
    ready = threading.Event()  # the snapshot of every chat has gone by: what follows are changes

    def watch() -> None:
        with authed_channel(c.supervisors[survivor].address) as ch:
            stream = chat_pb2_grpc.ChatServiceStub(ch).WatchChat(chat_pb2.WatchChatRequest(), timeout=c.lease * 6)
            try:
                for n, resp in enumerate(stream, 1):
                    if n == len(everything):
                        ready.set()
                    rt = resp.chat.runtime
                    if (resp.chat.id in lost and resp.chat.id not in done and rt.state == R.RUNTIME_STATE_RUNNING
                            and rt.supervisor_id not in ("", victim) and rt.current_run.supervisor_id == rt.supervisor_id):
                        done[resp.chat.id] = time.monotonic()
                        if len(done) == len(lost):
                            return
            except grpc.RpcError:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    ready.wait(30)
    killed = time.monotonic()
    c.supervisors[victim].kill9()
    kill_agents(c.tmp / victim)
    watcher.join()
    if len(done) != len(lost):
        raise SystemExit(f"failover: {len(lost) - len(done)} of {len(lost)} chats of {victim} never ran again")
    del c.supervisors[victim]
    return [t - killed for t in done.values()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chats", type=int, default=120)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lease", type=int, default=9)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with database(args.database_url) as url, cluster(url, graphs=1, replicas=1, lease=args.lease) as one:
        single = create_load(one, args.chats, args.clients)
    with database(args.database_url) as url, cluster(url, graphs=2, replicas=3, lease=args.lease) as three:
        triple = create_load(three, args.chats, args.clients)
        spread = {sid: list(owners(three, "sup-1").values()).count(sid) for sid in three.supervisors}
        times: list[float] = []
        for r in range(args.rounds):
            victim = sorted(three.supervisors)[0]
            survivor = sorted(three.supervisors)[-1]
            times += failover_round(three, victim, survivor)
            three.add_supervisor(f"sup-r{r + 1}")  # the StatefulSet brings a pod back
    bound = args.lease + args.lease / 3 + 0.5
    result = {
        "one_replica": single, "three_replicas": triple, "spread": spread,
        "throughput_ratio_3_vs_1": triple["per_second"] / single["per_second"],
        "p50_ratio_3_vs_1": triple["p50_ms"] / single["p50_ms"], "p99_ratio_3_vs_1": triple["p99_ms"] / single["p99_ms"],
        "failover": {"chats": len(times), "p50_s": statistics.median(times), "p99_s": pct(times, 0.99),
                     "max_s": max(times), "lease_s": args.lease, "bound_s": bound,
                     "p50_ratio_vs_bound": statistics.median(times) / bound, "p99_ratio_vs_bound": pct(times, 0.99) / bound},
    }
    print(f"CreateChat, {args.chats} chats from {args.clients} clients")
    for name, r in (("1 replica", single), ("3 replicas", triple)):
        print(f"  {name:<11} {r['per_second']:7.1f}/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms")
    print(f"  3 vs 1:     throughput x{result['throughput_ratio_3_vs_1']:.2f}  p50 x{result['p50_ratio_3_vs_1']:.2f}  "
          f"p99 x{result['p99_ratio_3_vs_1']:.2f}  spread {spread}")
    f = result["failover"]
    print(f"failover ({f['chats']} chats over {args.rounds} kills, lease {args.lease}s, bound {bound:.1f}s): "
          f"p50 {f['p50_s']:.1f}s (x{f['p50_ratio_vs_bound']:.2f} of the bound)  p99 {f['p99_s']:.1f}s "
          f"(x{f['p99_ratio_vs_bound']:.2f})  max {f['max_s']:.1f}s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
