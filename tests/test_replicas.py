"""Several supervisor replicas on one database, as a cluster runs them: real processes on loopback.

Three supervisors (each with its own state dir: a pod's own disk), one dispatch, and the graph —
two graph replicas on PostgreSQL (what production runs), one on SQLite. Clients talk to any
supervisor; a sampler over /proc checks the promise that matters most here: never two live agents
for one chat, while replicas are killed or frozen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.harness import (
    REPO,
    ServiceProcess,
    authed_channel,
    base_env,
    fresh_database,
    kill_agents,
    start_service,
    test_database_urls,
    token,
)
from tests.procscan import Sampler, chat_processes
from wgs.common import traceview
from wgs.common.auth import CLIENT
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2, supervisor_pb2, supervisor_pb2_grpc

R = runtime_pb2
PY = sys.executable
MARK = "wgs-replica-test-agent"
AGENT = [PY, "-c", f"import time\nprint('agent up', flush=True)\ntime.sleep(600)  # {MARK}"]
LEASE = 9  # seconds: renewals every 3 s, runs fence themselves 4 s before the lease lapses
FAILOVER_BOUND = LEASE + 3 + 1 + 10  # lease + one failover scan + the restart delay, plus slack for a busy CI host

def agents() -> dict[str, list[int]]:
    """The live agents of this test by chat (run monitors excluded)."""
    return {chat: [p.pid for p in procs] for chat, procs in chat_processes(mark=MARK).items()}


def agent_sampler() -> Sampler:
    return Sampler(lambda: chat_processes(mark=MARK))


@dataclass
class Cluster:
    tmp: Path
    graphs: list[ServiceProcess]
    dispatch: ServiceProcess
    supervisors: dict[str, ServiceProcess]
    channels: list[grpc.Channel] = field(default_factory=list)

    def state_dir(self, sup: str) -> Path:
        return self.tmp / sup

    def chat(self, sup: str) -> chat_pb2_grpc.ChatServiceStub:
        ch = authed_channel(self.supervisors[sup].address)
        self.channels.append(ch)
        return chat_pb2_grpc.ChatServiceStub(ch)

    def admin(self, sup: str) -> supervisor_pb2_grpc.SupervisorServiceStub:
        ch = authed_channel(self.supervisors[sup].address)
        self.channels.append(ch)
        return supervisor_pb2_grpc.SupervisorServiceStub(ch)

    def owners(self, via: str) -> dict[str, str]:
        chats = self.chat(via).ListChats(chat_pb2.ListChatsRequest(), timeout=10).chats
        return {c.id: c.runtime.supervisor_id for c in chats}


def _start_cluster(tmp: Path, db_url: str, graphs: int, extra_env: dict[str, str] | None = None) -> Cluster:
    graph_procs = [start_service("graph", tmp / f"graph-{i}", env={"WGS_DATABASE_URL": db_url})
                   for i in range(graphs)]
    dispatch = start_service("dispatch", tmp / "dispatch")
    sups: dict[str, ServiceProcess] = {}
    for i in range(3):
        sid = f"sup-{i + 1}"
        env = {"WGS_GRAPH_ADDR": graph_procs[i % graphs].address, "WGS_DISPATCH_ADDR": dispatch.address,
               "WGS_SUPERVISOR_ID": sid, "WGS_LEASE_SECONDS": str(LEASE), "WGS_STOP_GRACE_SECONDS": "1",
               "WGS_RESTART_INITIAL_BACKOFF_SECONDS": "0.2", "WGS_MAX_LIVE_CHATS": "20", **(extra_env or {})}
        sups[sid] = start_service("supervisor", tmp / sid, env)
    return Cluster(tmp, graph_procs, dispatch, sups)


@contextmanager
def running_cluster(kind: str, tmp_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    graphs = 2 if kind == "postgresql" else 1  # several graph replicas need a shared server
    with fresh_database(kind, tmp_path) as db_url:
        c = _start_cluster(tmp_path, db_url, graphs, extra_env)
        try:
            yield c
        finally:
            for ch in c.channels:
                ch.close()
            for sup, proc in c.supervisors.items():
                if proc.proc.poll() is None:
                    os.kill(proc.proc.pid, signal.SIGCONT)
                proc.terminate()
                kill_agents(c.state_dir(sup))
            c.dispatch.terminate()
            for g in c.graphs:
                g.terminate()


@pytest.fixture(params=test_database_urls())
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(request.param, tmp_path) as c:
        yield c


def one_each(what: str, chat_ids: list[str]) -> None:
    """Each chat has exactly one agent process (a run just recorded may still be between fork and exec)."""
    def counts() -> dict[str, int]:
        found = agents()
        return {c: len(found.get(c, [])) for c in chat_ids}
    try:
        wait_for(f"{what}: one agent each", lambda: set(counts().values()) == {1}, 10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; agents per chat: {counts()}") from None


def runs_on(chat: chat_pb2.Chat, supervisors: tuple[str, ...]) -> bool:
    """RUNNING with a run started by one of `supervisors` (not just claimed by it)."""
    rt = chat.runtime
    return (rt.state == R.RUNTIME_STATE_RUNNING and rt.supervisor_id in supervisors
            and rt.current_run.supervisor_id == rt.supervisor_id)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def create(stub: chat_pb2_grpc.ChatServiceStub, n: int) -> list[chat_pb2.Chat]:
    return [stub.CreateChat(chat_pb2.CreateChatRequest(command=AGENT, request_id=f"create-{n}-{i}"), timeout=30).chat
            for i in range(n)]


def wait_for(what: str, cond: Callable[[], bool], timeout: float) -> None:
    """Poll a condition that no single event announces (ownership across replicas), bounded."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def follow(stub: chat_pb2_grpc.ChatServiceStub, chat_id: str, pred: Callable[[chat_pb2.Chat], bool],
           timeout: float) -> chat_pb2.Chat:
    """WatchChat until `pred` holds."""
    seen = []
    stream = stub.WatchChat(chat_pb2.WatchChatRequest(chat_id=chat_id), timeout=timeout)
    try:
        for resp in stream:
            seen.append(resp.chat)
            if pred(resp.chat):
                return resp.chat
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    last = seen[-1] if seen else None
    raise AssertionError(f"{chat_id}: condition not reached within {timeout}s; last: "
                         f"{R.RuntimeState.Name(last.runtime.state) if last else '-'} on "
                         f"{last.runtime.supervisor_id if last else '-'}: {last.runtime.last_error if last else ''}")


# -- placement and forwarding ------------------------------------------------------------------


def test_new_chats_spread_and_every_call_works_through_any_replica(cluster: Cluster) -> None:
    entry = cluster.chat("sup-1")
    chats = create(entry, 6)  # all through one replica, as a client behind one Service connection would
    owners = cluster.owners("sup-3")
    assert set(owners) == {c.id for c in chats}  # every replica lists every chat
    spread = Counter(owners.values())
    assert set(spread) == {"sup-1", "sup-2", "sup-3"} and max(spread.values()) <= 3, spread

    # A chat owned by sup-2, driven entirely through sup-3.
    chat_id = next(c for c, o in owners.items() if o == "sup-2")
    via = cluster.chat("sup-3")
    shown = via.GetChat(chat_pb2.GetChatRequest(chat_id=chat_id), timeout=10).chat
    assert shown.runtime.state == R.RUNTIME_STATE_RUNNING and shown.pid > 0
    assert pid_alive(shown.pid)
    assert str(cluster.state_dir("sup-2")) in shown.runtime.current_run.stderr_path  # it runs on sup-2's host
    wait_for("the agent's first line", lambda: "agent up" in via.GetChat(
        chat_pb2.GetChatRequest(chat_id=chat_id), timeout=10).chat.stderr_tail, 20)  # the live tail, from sup-2

    sent = via.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat_id, text="hello from anywhere"), timeout=10)
    assert sent.message.content == "hello from anywhere" and not sent.respawned
    log = b"".join(i.data for i in via.StreamChatLog(chat_pb2.StreamChatLogRequest(chat_id=chat_id), timeout=10))
    assert b"agent up" in log  # the run file lives on sup-2's disk; sup-3 streamed it

    stopped = via.StopChat(chat_pb2.StopChatRequest(chat_id=chat_id), timeout=20).chat
    assert stopped.runtime.state == R.RUNTIME_STATE_STOPPED and stopped.runtime.supervisor_id == "sup-2"
    assert not pid_alive(shown.pid) and chat_id not in agents()
    again = via.RestartChat(chat_pb2.RestartChatRequest(chat_id=chat_id), timeout=20).chat
    assert again.runtime.state == R.RUNTIME_STATE_RUNNING and again.runtime.current_run.number == 2
    assert again.runtime.supervisor_id == "sup-2"  # restarted where it lives, not moved by the call

    # An error of the owner reaches the caller unchanged through the hop.
    with pytest.raises(grpc.RpcError) as err:
        via.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat_id, text=""), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text" in (err.value.details() or "")
    status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
    assert status is not None, "the owner's structured details were lost on the hop"
    violations = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations += [v.field for v in bad.field_violations]
    assert violations == ["text"]

    # `wgs chat logs --previous` (run 1, which printed) against a replica that does not own the chat, as a
    # user outside the cluster runs it.
    env = base_env(cluster.tmp / "cli", {"WGS_SUPERVISOR_ADDR": cluster.supervisors["sup-1"].address,
                                         "WGS_TOKEN": token(CLIENT)})
    env.pop("WGS_AUTH_SECRET_FILE")
    (cluster.tmp / "cli").mkdir()
    out = subprocess.run([PY, "-m", "wgs.cli.main", "chat", "logs", "--previous", chat_id], env=env, cwd=str(REPO),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "agent up" in out.stdout

    # `wgs status` shows each replica's chats and headroom, from any replica.
    env.update({"WGS_GRAPH_ADDR": cluster.graphs[0].address, "WGS_DISPATCH_ADDR": cluster.dispatch.address})
    status = subprocess.run([PY, "-m", "wgs.cli.main", "status", "--json"], env=env, cwd=str(REPO),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {r["supervisor_id"]: r for r in json.loads(status.stdout)["replicas"]}
    assert set(rows) == {"sup-1", "sup-2", "sup-3"} and all(r["live"] for r in rows.values())
    assert sum(r["owned_chats"] for r in rows.values()) == 6 and rows["sup-1"]["answered"]
    assert all(r["max_live_chats"] == 20 and r["free_capacity"] + r["live_chats"] == 20 for r in rows.values())

    replicas = cluster.admin("sup-1").ListReplicas(supervisor_pb2.ListReplicasRequest(), timeout=10)
    assert {r.supervisor_id for r in replicas.replicas} == {"sup-1", "sup-2", "sup-3"}
    assert all(r.advertise_address and r.max_live_chats == 20 for r in replicas.replicas)


def test_a_forwarded_call_keeps_the_callers_trace_and_deadline(tmp_path: Path) -> None:
    tracing = {"OTEL_SDK_DISABLED": "false", "OTEL_BSP_SCHEDULE_DELAY": "50"}  # spans to <state>/traces/
    with running_cluster("sqlite", tmp_path, tracing) as cluster:
        create(cluster.chat("sup-1"), 6)
        chat_id = next(c for c, o in cluster.owners("sup-1").items() if o == "sup-2")
        via = cluster.chat("sup-3")
        trace_id = uuid.uuid4().hex
        traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
        via.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat_id, text="traced"), timeout=10,
                        metadata=(("traceparent", traceparent),))

        def owner_spans() -> list[traceview.Span]:
            return [s for s in traceview.load_spans(cluster.state_dir("sup-2") / "traces")
                    if s.trace_id == trace_id]

        # The owner's server span of the forwarded call is in the caller's trace.
        def hops() -> list[traceview.Span]:  # sup-3's client span of the forwarded call
            return [s for s in traceview.load_spans(cluster.state_dir("sup-3") / "traces")
                    if s.trace_id == trace_id and s.name.endswith("SendMessage") and s.kind == 3]

        wait_for("both ends of the hop exported", lambda: bool(hops()) and any(
            s.name.endswith("SendMessage") and s.kind == 2 for s in owner_spans()), 20)
        [hop] = hops()
        assert any(s.parent_span_id == hop.span_id for s in owner_spans())

        # `wgs chat logs --follow` through a replica that does not own the chat: the run file is streamed
        # from the owner's disk as it grows, until the run ends.
        env = base_env(cluster.tmp / "cli", {"WGS_SUPERVISOR_ADDR": cluster.supervisors["sup-3"].address,
                                             "WGS_TOKEN": token(CLIENT)})
        env.pop("WGS_AUTH_SECRET_FILE")
        (cluster.tmp / "cli").mkdir()
        follow_proc = subprocess.Popen([PY, "-m", "wgs.cli.main", "chat", "logs", "--follow", chat_id], env=env,
                                       cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert follow_proc.stdout is not None
            first = follow_proc.stdout.readline()  # blocks until the stream delivers the agent's line
            assert "agent up" in first
            cluster.chat("sup-1").StopChat(chat_pb2.StopChatRequest(chat_id=chat_id), timeout=20)
            _, err_text = follow_proc.communicate(timeout=30)  # the follow ends with the run
            assert follow_proc.returncode == 0, err_text
        finally:
            if follow_proc.poll() is None:
                follow_proc.kill()
        restarted = via.RestartChat(chat_pb2.RestartChatRequest(chat_id=chat_id), timeout=20).chat
        assert restarted.runtime.supervisor_id == "sup-2"

        # The caller's deadline travels too: with the owner frozen, the caller hears why (UNAVAILABLE, the
        # owner named) before its own deadline, instead of a bare DEADLINE_EXCEEDED.
        os.kill(cluster.supervisors["sup-2"].proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.RpcError) as err:
                via.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat_id, text="frozen owner"), timeout=5)
        finally:
            os.kill(cluster.supervisors["sup-2"].proc.pid, signal.SIGCONT)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "'sup-2'" in (err.value.details() or "") and "cannot be reached" in (err.value.details() or "")


# -- failover and fencing ----------------------------------------------------------------------


def test_a_lost_replicas_chats_run_on_the_survivors_each_explained(cluster: Cluster) -> None:
    chats = create(cluster.chat("sup-1"), 6)
    owners = cluster.owners("sup-1")
    lost = [c for c, o in owners.items() if o == "sup-2"]
    assert lost, owners
    sampler = agent_sampler()
    sampler.start()
    try:
        # A lost pod: the supervisor, its run monitors and its agents die at once.
        cluster.supervisors["sup-2"].kill9()
        kill_agents(cluster.state_dir("sup-2"))
        killed_at = time.monotonic()
        watch = cluster.chat("sup-1")
        for chat_id in lost:
            chat = follow(watch, chat_id, lambda c: runs_on(c, ("sup-1", "sup-3")), FAILOVER_BOUND)
            previous = next((r for r in chat.runtime.previous_runs if r.supervisor_id == "sup-2"), None)
            assert previous is not None, chat.runtime
            assert previous.end == R.RUN_END_UNKNOWN
            assert "supervisor 'sup-2' was lost" in previous.error and "is unknown" in previous.error
            assert f"now runs on supervisor {chat.runtime.supervisor_id}" in previous.error
        took = time.monotonic() - killed_at
    finally:
        sampler.stop()
    assert sampler.scans > 10 and sampler.doubles == []
    assert took < FAILOVER_BOUND
    # The untouched chats stayed where they were, and every chat has exactly one agent now.
    final = cluster.owners("sup-3")
    assert all(final[c] == o for c, o in owners.items() if o != "sup-2")
    one_each("every chat", [c.id for c in chats])


def test_a_frozen_replica_stops_its_agents_before_a_survivor_starts_theirs(cluster: Cluster) -> None:
    create(cluster.chat("sup-1"), 6)
    owners = cluster.owners("sup-1")
    frozen = [c for c, o in owners.items() if o == "sup-3"]
    assert frozen, owners
    one_each("the frozen replica's chats", frozen)
    before = {c: agents()[c] for c in frozen}
    sampler = agent_sampler()
    sampler.start()
    try:
        os.kill(cluster.supervisors["sup-3"].proc.pid, signal.SIGSTOP)  # frozen: no renewals, no exits seen
        watch = cluster.chat("sup-2")
        for chat_id in frozen:
            follow(watch, chat_id, lambda c: runs_on(c, ("sup-1", "sup-2")), FAILOVER_BOUND)
        # Its agents fenced themselves (their run monitors did, with the supervisor frozen).
        assert not any(pid_alive(p) for pids in before.values() for p in pids)
        sup3 = cluster.supervisors["sup-3"]
        os.kill(sup3.proc.pid, signal.SIGCONT)
        # Back, it learns at its next renewal that the chats are not its own, and drops them.
        wait_for("sup-3 dropping the chats it lost", lambda: "dropping them" in sup3.stderr(), FAILOVER_BOUND)
        assert not any(pid_alive(p) for pids in before.values() for p in pids)
    finally:
        sampler.stop()
    assert sampler.scans > 10 and sampler.doubles == []
    final = cluster.owners("sup-1")
    assert all(final[c] in ("sup-1", "sup-2") for c in frozen)
    one_each("every chat", list(final))
