"""Overload: CreateChat offered beyond what the machine serves, 2,000 live chats, 900 deaths at once.

Every mode runs a real stack as `wgs up --detach` runs it (keeper, graph, dispatch, supervisor; the
stack secret in the state dir, so authentication is on; tracing and logging as configured by
default), talks to it as a client does (the operator token, a deadline per call), stops it with
`wgs down` and then scans /proc (cmdline, environ, cwd: tests/procscan.py) for anything of the state
dir left. The agent is `/bin/sleep`: what is measured is wgs, not an agent's start-up.

- **storm** (issue 9, item 6): first the baseline in the same run — `--sequential` CreateChat calls
  one after another (rate and p50/p99). Then `--rate` CreateChat/s offered open-loop for `--seconds`
  (each call `--deadline` seconds, as a client would), with rolling deletes: once `--window` newer
  chats have been created, the oldest is deleted. Outcomes by status code, the served rate (creates
  answered OK per second of offered load), p50/p99 of accepted and of refused calls, delete
  outcomes and latency. Then the records are checked: every chat whose create returned OK is in the
  graph (deleted if its delete returned OK, else RUNNING with its agent alive), and every agent
  process of the state dir is the live run of a recorded chat. Goals: served rate >= sequential
  rate, p99 of accepted <= 10x the sequential p99, no INTERNAL/UNKNOWN, no lost record, nothing
  left after `wgs down`.
- **live**: `--live` chats (default 2,000) held with WGS_MAX_LIVE_CHATS raised: supervisor RSS, open
  fds and threads, the monitors' memory, and CreateChat p50/p99 at that level against the same at
  zero live chats.
- **deaths** (issue 13, item 7): `--deaths` agents (default 900) SIGKILLed at once; the time from
  the kill until every exit is recorded (seen on WatchChat, which publishes after the graph's
  write). On PostgreSQL (`--database-url`) and on SQLite. WGS_RESTART_MAX_FAILURES=0 (the first
  failure is final), so what is measured is the exit records, not 900 restarts.

The machine is reported with each run (cores, load average before and after): on a shared machine
figures move with the load, so compare ratios within one run. The load generator (this process)
runs at `--client-nice` (10) and the stack at the normal priority: on one machine a client's CPU is
taken from the stack it measures, which a remote client's is not.

Usage: python benchmarks/overload.py storm [--rate 200] [--seconds 60] [--window 300]
       python benchmarks/overload.py live [--live 2000]
       python benchmarks/overload.py deaths [--deaths 900] [--database-url postgresql+psycopg://...]
       [--json PATH] [--env NAME=VALUE ...] (extra environment for the stack, e.g. admission settings)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

from tests.procscan import processes_of  # noqa: E402
from wgs.cli.stackfile import read_stack  # noqa: E402
from wgs.common import auth  # noqa: E402
from wgs.common.clients import aio_channel, sync_channel  # noqa: E402
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2, task_pb2  # noqa: E402

AGENT = ["/bin/sleep", "36000"]
R = runtime_pb2
SERVICES = ("graph", "dispatch", "supervisor")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def dist(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(pct(ms, 0.99), 2),
            "max_ms": round(max(ms), 2)}


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------------------------------ the stack


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def agents_of(state: Path) -> dict[int, str]:
    """Live agent processes of the state dir: pid -> the chat id in their environment."""
    found: dict[int, str] = {}
    needle = str(state).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] in "ZX":
            continue
        values = dict(e.split(b"=", 1) for e in env if b"=" in e)
        if values.get(b"WGS_CHAT_ID") and values.get(b"WGS_STATE_DIR") == needle:
            found[int(entry)] = values[b"WGS_CHAT_ID"].decode()
    return found


def monitors_of(state: Path) -> list[int]:
    needle = str(state).encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"runmon.py") for c in cmd) and needle in cmd:
            out.append(int(entry))
    return out


def _normal_priority() -> None:
    """The stack runs at the priority it would have without this benchmark's client's nice."""
    os.setpriority(os.PRIO_PROCESS, 0, BASE_NICE)


BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)


@dataclass
class Stack:
    """A stack started with `wgs up --detach` in its own state dir, every service on a free port."""

    state: Path
    env: dict[str, str]
    token: str = ""
    addresses: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def wgs(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wgs.cli.main", *args, "--state-dir", str(self.state)],
                              env=self.env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, preexec_fn=_normal_priority)

    def up(self) -> None:
        done = self.wgs("up", "--detach", timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"wgs up failed:\n{done.stdout}\n{done.stderr}")
        record = read_stack(self.state)
        assert record is not None
        for name in SERVICES:
            self.addresses[name] = record.services[name].address
            self.pids[name] = record.services[name].pid
        token = auth.operator_token(self.state)
        assert token is not None, "no stack secret: authentication is off"
        self.token = token

    def channel(self) -> grpc.Channel:
        return sync_channel(self.addresses["supervisor"], token=self.token)

    def aio_channel(self) -> grpc.aio.Channel:
        return aio_channel(self.addresses["supervisor"], token=self.token)

    def down(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        done = self.wgs("down")
        took = time.perf_counter() - t0
        left = [str(f) for f in processes_of(self.state)]
        return {"down_exit_code": done.returncode, "down_seconds": round(took, 2), "left_after_down": left,
                "down_output_tail": (done.stdout + done.stderr)[-400:] if done.returncode or left else ""}


@contextmanager
def stack(extra: dict[str, str], keep: Path | None = None) -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="wgs-bench-overload-")) if keep is None else keep
    state = tmp / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WGS_", "OTEL_"))}
    for name in SERVICES:
        env[f"WGS_{name.upper()}_LISTEN"] = "127.0.0.1:0"
    env.update(extra)
    s = Stack(state, env)
    s.up()
    try:
        yield s
    finally:
        if read_stack(state) is not None:  # not yet stopped by the mode itself
            s.down()
        if keep is None and not processes_of(state):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def database(base: str) -> Iterator[str]:
    import sqlalchemy as sa

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


# ------------------------------------------------------------------------------------------ helpers


def list_all(stub: chat_pb2_grpc.ChatServiceStub) -> list[chat_pb2.Chat]:
    out: list[chat_pb2.Chat] = []
    token = ""
    while True:
        resp = stub.ListChats(chat_pb2.ListChatsRequest(include_ended=True, page_size=1000, page_token=token),
                              timeout=60)
        out.extend(resp.chats)
        token = resp.next_page_token
        if not token:
            return out


def settled(stub: chat_pb2_grpc.ChatServiceStub, timeout: float = 120) -> list[chat_pb2.Chat]:
    """The chats once none is STARTING any more (creates whose callers gave up finish meanwhile)."""
    end = time.monotonic() + timeout
    while True:
        chats = list_all(stub)
        if all(c.runtime.state != R.RUNTIME_STATE_STARTING for c in chats) or time.monotonic() > end:
            return chats
        time.sleep(0.5)


def retry_delay(exc: grpc.aio.AioRpcError) -> float | None:
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToMilliseconds() / 1000
    return None


def sequential(stub: chat_pb2_grpc.ChatServiceStub, n: int, prefix: str, deadline: float
               ) -> tuple[list[float], list[str], float]:
    times, ids = [], []
    t_start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        resp = stub.CreateChat(chat_pb2.CreateChatRequest(name=f"{prefix}-{i}", command=AGENT), timeout=deadline)
        times.append((time.perf_counter() - t0) * 1000)
        if resp.chat.runtime.state != R.RUNTIME_STATE_RUNNING:
            raise RuntimeError(f"{resp.chat.id} not running: {resp.chat.runtime.last_error}")
        ids.append(resp.chat.id)
    return times, ids, n / (time.perf_counter() - t_start)


def fill(st: Stack, n: int, prefix: str, clients: int = 4) -> list[str]:
    """Create n chats with `clients` concurrent callers (each retrying a refused create after its hint)."""
    ids: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        with st.channel() as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                while True:
                    try:
                        resp = stub.CreateChat(chat_pb2.CreateChatRequest(
                            name=f"{prefix}-{i}", command=AGENT, request_id=f"{prefix}-{i}"), timeout=30)
                        break
                    except grpc.RpcError as exc:
                        if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                            raise
                        time.sleep(0.2)
                with lock:
                    ids.append(resp.chat.id)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids


# ------------------------------------------------------------------------------------------ storm


@dataclass
class Call:
    kind: str  # "create" | "delete"
    index: int
    offset: float  # seconds after the load started
    ms: float
    code: str
    chat_id: str = ""
    retry_after: float | None = None


async def open_loop(st: Stack, rate: float, seconds: float, window: int, deadline: float) -> tuple[list[Call], float]:
    ch = st.aio_channel()
    stub = chat_pb2_grpc.ChatServiceStub(ch)
    calls: list[Call] = []
    live: deque[str] = deque()
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def delete(chat_id: str, index: int) -> None:
        t0 = time.perf_counter()
        try:
            await stub.DeleteChat(chat_pb2.DeleteChatRequest(chat_id=chat_id), timeout=deadline)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        calls.append(Call("delete", index, t0 - start, (time.perf_counter() - t0) * 1000, code, chat_id))

    async def create(i: int) -> None:
        t0 = time.perf_counter()
        chat_id, retry = "", None
        try:
            resp = await stub.CreateChat(chat_pb2.CreateChatRequest(
                name=f"storm-{i}", command=AGENT, request_id=f"storm-{i}"), timeout=deadline)
            code, chat_id = "OK", resp.chat.id
        except grpc.aio.AioRpcError as exc:
            code, retry = exc.code().name, retry_delay(exc)
        calls.append(Call("create", i, t0 - start, (time.perf_counter() - t0) * 1000, code, chat_id, retry))
        if chat_id:
            live.append(chat_id)
            if len(live) > window:
                spawn(delete(live.popleft(), i))

    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        spawn(create(i))
    offered_for = time.perf_counter() - start
    while tasks:
        await asyncio.gather(*list(tasks))
    await ch.close()
    return calls, offered_for


def check_records(st: Stack, calls: list[Call]) -> dict[str, Any]:
    """Every OK create is recorded (deleted if its delete was OK, else RUNNING with its agent); every
    agent process belongs to a recorded live run."""
    with st.channel() as ch:
        chats = settled(chat_pb2_grpc.ChatServiceStub(ch))
    by_id = {c.id: c for c in chats}
    deleted_ok = {c.chat_id for c in calls if c.kind == "delete" and c.code == "OK"}
    lost, wrong = [], []
    for c in calls:
        if c.kind != "create" or c.code != "OK":
            continue
        chat = by_id.get(c.chat_id)
        if chat is None:
            lost.append(c.chat_id)
        elif c.chat_id in deleted_ok:
            if chat.status != task_pb2.TASK_STATUS_ABANDONED or chat.runtime.state == R.RUNTIME_STATE_RUNNING:
                wrong.append(f"{c.chat_id}: deleted but {R.RuntimeState.Name(chat.runtime.state)}")
        elif chat.runtime.state != R.RUNTIME_STATE_RUNNING:
            wrong.append(f"{c.chat_id}: {R.RuntimeState.Name(chat.runtime.state)} {chat.runtime.last_error}")
    agents = agents_of(st.state)
    running = {c.id: c.runtime.current_run.pid for c in chats if c.runtime.state == R.RUNTIME_STATE_RUNNING}
    unknown = [f"pid {pid} ({chat})" for pid, chat in agents.items() if running.get(chat) != pid]
    without_agent = [chat for chat, pid in running.items() if pid not in agents]
    ok_ids = {c.chat_id for c in calls if c.kind == "create" and c.code == "OK"}
    completed_after_give_up = [c.id for c in chats if c.name.startswith("storm-") and c.id not in ok_ids]
    return {"chats_recorded": len(chats), "ok_creates_missing": lost, "ok_creates_in_wrong_state": wrong[:20],
            "agents_without_a_recorded_live_run": unknown, "running_chats_without_agent": without_agent,
            "creates_completed_after_the_caller_gave_up": len(completed_after_give_up),
            "still_starting": sum(1 for c in chats if c.runtime.state == R.RUNTIME_STATE_STARTING),
            "live_agents_before_down": len(agents)}


def mode_storm(ns: argparse.Namespace, extra: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"machine_before": machine(), "settings": extra}
    with stack({"WGS_MAX_LIVE_CHATS": str(ns.window * 3 + 500), **extra}) as st:
        with st.channel() as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            _, warm_ids, _ = sequential(stub, 20, "warm", ns.deadline)
            for chat_id in warm_ids:
                stub.DeleteChat(chat_pb2.DeleteChatRequest(chat_id=chat_id), timeout=ns.deadline)
            seq, ids, seq_rate = sequential(stub, ns.sequential, "seq", ns.deadline)
            seq_del = []
            for chat_id in ids:
                t0 = time.perf_counter()
                stub.DeleteChat(chat_pb2.DeleteChatRequest(chat_id=chat_id), timeout=ns.deadline)
                seq_del.append((time.perf_counter() - t0) * 1000)
        out["sequential_create"] = {**dist(seq), "rate_per_s": round(seq_rate, 1)}
        out["sequential_delete"] = dist(seq_del)
        cpu0 = {n: cpu_seconds(st.pids[n]) for n in SERVICES}
        calls, offered_for = asyncio.run(open_loop(st, ns.rate, ns.seconds, ns.window, ns.deadline))
        cpu = {n: round(cpu_seconds(st.pids[n]) - cpu0[n], 1) for n in SERVICES}
        creates = [c for c in calls if c.kind == "create"]
        deletes = [c for c in calls if c.kind == "delete"]
        ok = [c for c in creates if c.code == "OK"]
        last_ok = max((c.offset + c.ms / 1000 for c in ok), default=offered_for)
        served_rate = len(ok) / max(offered_for, last_ok)
        refused = [c for c in creates if c.code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE")]
        out["storm"] = {
            "offered": len(creates), "offered_rate_per_s": round(len(creates) / offered_for, 1),
            "offered_for_s": round(offered_for, 1), "deadline_s": ns.deadline, "window": ns.window,
            "outcomes": dict(Counter(c.code for c in creates)),
            "served_rate_per_s": round(served_rate, 1),
            "accepted": dist([c.ms for c in ok]),
            "refused": dist([c.ms for c in refused]),
            "refused_with_retry_info": sum(1 for c in refused if c.retry_after),
            "retry_after_p50_s": round(statistics.median([c.retry_after for c in refused if c.retry_after]), 2)
            if any(c.retry_after for c in refused) else None,
            "deletes": {"outcomes": dict(Counter(c.code for c in deletes)), **dist([c.ms for c in deletes])},
            "cpu_seconds": cpu,
        }
        out["records"] = check_records(st, calls)
        out["machine_after_load"] = machine()
        out.update(st.down())
    s, seq_d = out["storm"], out["sequential_create"]
    p99_ratio = s["accepted"].get("p99_ms", float("inf")) / seq_d["p99_ms"]
    rec = out["records"]
    out["goals"] = {
        "served_rate_ge_sequential": s["served_rate_per_s"] >= seq_d["rate_per_s"],
        "served_vs_sequential_rate": round(s["served_rate_per_s"] / seq_d["rate_per_s"], 2),
        "accepted_p99_le_10x_sequential_p99": p99_ratio <= 10,
        "accepted_p99_vs_sequential_p99": round(p99_ratio, 2),
        "no_internal": not any(k in s["outcomes"] for k in ("INTERNAL", "UNKNOWN")),
        "no_lost_record": not (rec["ok_creates_missing"] or rec["ok_creates_in_wrong_state"]
                               or rec["agents_without_a_recorded_live_run"] or rec["running_chats_without_agent"]),
        "nothing_left": not out["left_after_down"] and out["down_exit_code"] == 0,
    }
    return out


# ------------------------------------------------------------------------------------------ live


def mode_live(ns: argparse.Namespace, extra: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"machine_before": machine(), "settings": extra, "live_target": ns.live}
    with stack({"WGS_MAX_LIVE_CHATS": str(ns.live + 200), **extra}) as st:
        sup = st.pids["supervisor"]
        with st.channel() as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            sequential(stub, 20, "warm", ns.deadline)
            out["supervisor_at_20_live"] = proc_status(sup)
            base, base_ids, base_rate = sequential(stub, ns.sequential, "base", ns.deadline)
            for chat_id in base_ids:
                stub.DeleteChat(chat_pb2.DeleteChatRequest(chat_id=chat_id), timeout=ns.deadline)
            out["create_at_20_live"] = {**dist(base), "rate_per_s": round(base_rate, 1)}
            t0 = time.perf_counter()
            fill(st, ns.live - 20, "live")
            out["fill_seconds"] = round(time.perf_counter() - t0, 1)
            out["machine_at_level"] = machine()
            t0, cpu0 = time.monotonic(), cpu_seconds(sup)
            time.sleep(10)
            out["supervisor_idle_cpu_pct"] = round((cpu_seconds(sup) - cpu0) / (time.monotonic() - t0) * 100, 2)
            out["supervisor_at_level"] = proc_status(sup)
            monitors = monitors_of(st.state)
            agents = agents_of(st.state)
            out["live_agents"] = len(agents)
            out["monitors"] = {"count": len(monitors), "pss_mib_total": round(sum(pss_kib(p) for p in monitors) / 1024),
                               "pss_mib_per_monitor": round(statistics.median([pss_kib(p) for p in monitors[:200]]) / 1024,
                                                            2) if monitors else 0}
            out["supervisor_pss_mib"] = round(pss_kib(sup) / 1024, 1)
            times, ids = [], []
            for i in range(ns.sequential):  # create one and delete one: the level stays where it is
                t0 = time.perf_counter()
                resp = stub.CreateChat(chat_pb2.CreateChatRequest(name=f"top-{i}", command=AGENT), timeout=ns.deadline)
                times.append((time.perf_counter() - t0) * 1000)
                ids.append(resp.chat.id)
                stub.DeleteChat(chat_pb2.DeleteChatRequest(chat_id=ids.pop(0)), timeout=ns.deadline)
            out["create_at_level"] = dist(times)
            t0 = time.perf_counter()
            chats = list_all(stub)
            out["list_chats_all_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            out["running_chats"] = sum(1 for c in chats if c.runtime.state == R.RUNTIME_STATE_RUNNING)
        out["machine_after_load"] = machine()
        out.update(st.down())
    out["create_p50_ratio"] = round(out["create_at_level"]["p50_ms"] / out["create_at_20_live"]["p50_ms"], 2)
    out["create_p99_ratio"] = round(out["create_at_level"]["p99_ms"] / out["create_at_20_live"]["p99_ms"], 2)
    return out


# ------------------------------------------------------------------------------------------ deaths


def deaths_once(n: int, extra: dict[str, str], db_url: str | None) -> dict[str, Any]:
    env = {"WGS_MAX_LIVE_CHATS": str(n + 100), "WGS_RESTART_MAX_FAILURES": "0", **extra}
    if db_url:
        env["WGS_DATABASE_URL"] = db_url
    out: dict[str, Any] = {"database": "postgresql" if db_url else "sqlite", "machine_before": machine()}
    with stack(env) as st:
        ids = fill(st, n, "die")
        with st.channel() as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            chats = list_all(stub)
            pids = {c.id: c.runtime.current_run.pid for c in chats if c.runtime.state == R.RUNTIME_STATE_RUNNING}
            if not set(ids) <= set(pids):
                bad = [f"{c.id} {R.RuntimeState.Name(c.runtime.state)} {c.runtime.last_error}" for c in chats
                       if c.id not in pids]
                raise RuntimeError(f"{len(bad)} chats not running before the kill: {bad[:10]}")
            out["machine_at_kill"] = machine()
            watch = stub.WatchChat(chat_pb2.WatchChatRequest(), timeout=600)
            it = iter(watch)
            seen: set[str] = set()
            for event in it:  # the snapshot first: the kill comes after it, so no exit is missed
                seen.add(event.chat.id)
                if seen >= set(pids):
                    break
            pending = dict(pids)
            t_kill = time.perf_counter()
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            kill_ms = (time.perf_counter() - t_kill) * 1000
            arrivals = []
            for event in it:
                run = event.chat.runtime.current_run
                if event.chat.id in pending and run.pid == pending[event.chat.id] and run.HasField("signal"):
                    del pending[event.chat.id]
                    arrivals.append((time.perf_counter() - t_kill) * 1000)
                    if not pending:
                        break
            watch.cancel()
        out.update({"agents_killed": len(pids), "kill_loop_ms": round(kill_ms, 1),
                    "first_exit_recorded_ms": round(arrivals[0], 1),
                    "half_recorded_ms": round(arrivals[len(arrivals) // 2], 1),
                    "all_exits_recorded_ms": round(arrivals[-1], 1)})
        out["machine_after_load"] = machine()
        out.update(st.down())
    return out


def mode_deaths(ns: argparse.Namespace, extra: dict[str, str]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    if ns.database_url:
        with database(ns.database_url) as url:
            runs.append(deaths_once(ns.deaths, extra, url))
    runs.append(deaths_once(ns.deaths, extra, None))
    return {"settings": extra, "runs": runs}


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("storm", "live", "deaths"))
    ap.add_argument("--rate", type=float, default=200.0, help="CreateChat calls offered per second (storm)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the load is offered (storm)")
    ap.add_argument("--window", type=int, default=300, help="a chat is deleted once this many newer ones exist")
    ap.add_argument("--deadline", type=float, default=10.0, help="per-call deadline in seconds")
    ap.add_argument("--sequential", type=int, default=100, help="calls of the sequential baseline")
    ap.add_argument("--live", type=int, default=2000, help="live chats to hold (live)")
    ap.add_argument("--deaths", type=int, default=900, help="agents killed at once (deaths)")
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="PostgreSQL server for `deaths` (a fresh database is made there); '' for SQLite only")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the stack (repeatable)")
    ap.add_argument("--client-nice", type=int, default=10,
                    help="nice of this load generator (the stack keeps its own): on one machine the client's "
                         "CPU is taken from the stack it measures, which a remote client's is not")
    ap.add_argument("--json", type=Path, default=None)
    ns = ap.parse_args()
    if ns.client_nice:
        os.nice(ns.client_nice)  # before the first channel: gRPC's threads inherit it
    extra = dict(e.split("=", 1) for e in ns.env)
    result = {"storm": mode_storm, "live": mode_live, "deaths": mode_deaths}[ns.mode](ns, extra)
    text = json.dumps(result, indent=2)
    print(text)
    path = ns.json or REPO / "benchmarks" / "results" / f"overload-{ns.mode}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
