"""`wgs up`, `wgs down`, `wgs status`: run the three services as a local, self-healing stack.

`wgs up` keeps a small parent, the keeper (wgs/cli/keeper.py), that starts graph, dispatch and
supervisor and restarts a crashed one on the same address; with `--detach` the keeper runs
detached and `wgs up` returns once all services serve. The stack is recorded in
<state>/run/stack.json (wgs/cli/stackfile.py); every other command finds the services through it.
`wgs down` releases the keeper first (so nothing is restarted), then stops the services in order.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc

from services.supervisor import procs
from wgs.cli.keeper import Keeper, Policy, Reporter, health_status, release_keeper
from wgs.cli.output import CliError, dumps
from wgs.cli.procs import terminate, wait_gone
from wgs.cli.stackfile import (
    FAILED,
    RESTARTING,
    SERVING,
    STOPPED,
    ServiceRecord,
    StackRecord,
    client_target,
    open_private_append,
    read_stack,
    record_summary,
    remove_stack,
    resolve_state_dir,
    secure_state_dir,
    stack_log_path,
    stack_path,
    stack_problem,
    state_flag,
)
from wgs.common import auth, procfs
from wgs.common.clients import set_process_token, sync_channel
from wgs.common.settings import DEFAULT_PORTS, SERVICES, env_float, env_str, rpc_timeout
from wgs.v1 import supervisor_pb2, supervisor_pb2_grpc

__all__ = ["ServiceRecord", "StackRecord", "client_target", "resolve_state_dir", "stop_services"]


def grace_seconds() -> float:
    return env_float("WGS_SHUTDOWN_GRACE_SECONDS", 10.0) + 5.0


# ---------------------------------------------------------------------------------------------
# wgs up


def _print_serving(record: StackRecord, out: TextIO) -> None:
    print(f"wgs: stack serving (state {record.state_dir})", file=out)
    for name in SERVICES:
        s = record.services[name]
        print(f"  {name:<10} {s.address:<22} pid {s.pid:<8} log {s.log}", file=out)
    if record.keeper is not None:
        print(f"  {'keeper':<10} {'':<22} pid {record.keeper.pid:<8} log {record.keeper.log}", file=out)


def _secure(state: Path) -> None:
    """State dir 0700, stack files 0600; one line (stderr and stack.log) if an older stack left them wider."""
    notes = secure_state_dir(state)
    if notes:
        line = "tightened file modes an older stack left wider: " + ", ".join(notes)
        print(f"wgs: {line}", file=sys.stderr, flush=True)
        fd = open_private_append(stack_log_path(state))
        try:
            os.write(fd, f"{datetime.now(UTC).isoformat(timespec='seconds')} WARNING wgs: {line}\n".encode())
        finally:
            os.close(fd)


def cmd_up(ns: argparse.Namespace) -> int:
    state = resolve_state_dir(ns.state_dir)
    if ns.keeper_ready_fd is not None:
        return _run_detached_keeper(ns, state, ns.keeper_ready_fd)
    _secure(state)
    auth.ensure_stack_secret(state)  # the stack credential (0600), unless given through the environment
    set_process_token(auth.operator_token(state, auth.SUPERVISOR))  # the keeper asks the supervisor to stop agents
    if ns.detach:
        return _up_detached(ns, state)
    out = sys.stdout
    report = Reporter(stack_log_path(state), out=out, err=sys.stderr)

    def ready(record: StackRecord) -> None:
        _print_serving(record, out)
        print("press Ctrl-C to stop", file=out, flush=True)

    def failed(message: str) -> None:
        print(f"wgs: {message}", file=sys.stderr, flush=True)

    keeper = Keeper(state, detached=False, keep_agents=ns.keep_agents, stop_services=stop_services,
                    report=report, on_ready=ready, on_start_failed=failed, policy=Policy.from_env())
    try:
        return keeper.run()
    finally:
        report.close()


def _run_detached_keeper(ns: argparse.Namespace, state: Path, ready_fd: int) -> int:
    """This process is the detached keeper; it tells the `wgs up --detach` that started it on `ready_fd`."""
    set_process_token(auth.operator_token(state, auth.SUPERVISOR))  # to ask the supervisor to stop its agents (StopAgents)
    report = Reporter(stack_log_path(state))

    def tell(text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, text.encode())
            os.close(ready_fd)

    keeper = Keeper(state, detached=True, keep_agents=ns.keep_agents, stop_services=stop_services, report=report,
                    on_ready=lambda _record: tell("ok\n"), on_start_failed=lambda msg: tell("fail\n" + msg),
                    policy=Policy.from_env())
    try:
        return keeper.run()
    finally:
        with contextlib.suppress(OSError):
            os.close(ready_fd)
        report.close()


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _up_detached(ns: argparse.Namespace, state: Path) -> int:
    """Start the keeper in its own session (stdio off the terminal); return once the stack serves."""
    record = read_stack(state)
    if record is not None and record.keeper_alive():
        raise CliError(f"a stack is already running for {state}: {', '.join(record.live_processes())}; "
                       f"stop it with `wgs down{state_flag(ns.state_dir)}` (or use another --state-dir)")
    Policy.from_env()  # a bad WGS_STACK_* value is a configuration error here, not in the keeper's log
    log = stack_log_path(state)
    rfd, wfd = os.pipe()
    log_fd = open_private_append(log)
    argv = [sys.executable, "-m", "wgs.cli.main", "up", "--state-dir", str(state), "--keeper-ready-fd", str(wfd)]
    if ns.keep_agents:
        argv.append("--keep-agents")
    try:
        keeper = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(wfd,),
                                  start_new_session=True)
    finally:
        os.close(wfd)
        os.close(log_fd)
    chunks: list[bytes] = []
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:  # EOF once the keeper has said "ok"/"fail" and closed its end, or died
            data = os.read(rfd, 65536)
            if not data:
                break
            chunks.append(data)
    except KeyboardInterrupt:
        print("wgs: interrupted during start-up; stopping the services", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        keeper.send_signal(signal.SIGTERM)  # the keeper's orderly stop
        keeper.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        os.close(rfd)
    text = b"".join(chunks).decode(errors="replace")
    if text.startswith("ok"):
        record = read_stack(state)
        if record is None:
            raise CliError(f"the stack keeper reported serving but {stack_path(state)} is gone; see {log}")
        _print_serving(record, sys.stdout)
        print(f"stop it with: wgs down{state_flag(ns.state_dir)}", flush=True)
        return 0
    code = keeper.wait()
    if text.startswith("fail\n"):
        print(f"wgs: {text[5:]}", file=sys.stderr, flush=True)
    else:
        print(f"wgs: the stack keeper (pid {keeper.pid}) exited with code {code} before the stack served; "
              f"see {log}", file=sys.stderr, flush=True)
    return 1


# ---------------------------------------------------------------------------------------------
# stopping: the order is the same for `wgs down` and for the keeper


def stop_agents_via_supervisor(address: str, timeout: float, out: TextIO) -> bool:
    """Ask the supervisor to stop its agents (recorded as a shutdown: they resume on the next start).
    False if it could not be asked (then the caller stops verified local runs itself)."""
    with sync_channel(address) as ch:
        try:
            resp = supervisor_pb2_grpc.SupervisorServiceStub(ch).StopAgents(
                supervisor_pb2.StopAgentsRequest(reason="shutdown (wgs down)"), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "error"
            print(f"wgs: the supervisor could not stop its agents ({code}); stopping them here", file=sys.stderr)
            return False
    for agent in resp.stopped:
        print(f"  agent      pid {agent.pid:<8} {agent.outcome} ({agent.chat_id} run #{agent.run_number})", file=out)
    return True


def local_run_monitors(state: Path) -> list[procs.MonitorIdentity]:
    """The run monitors of this state dir on this host, each proven by its /proc identity (runmon.py,
    our uid, --state-dir of this stack): nothing else is ever signalled."""
    out: list[procs.MonitorIdentity] = []
    for pid in procfs.pids():
        identity = procs.monitor_identity(pid, None)
        if identity is not None and Path(identity.state_dir) == state:
            out.append(identity)
    return out


def stop_local_runs(state: Path, grace: float, out: TextIO) -> None:
    """With the supervisor dead: end this stack's runs on this host. SIGTERM to each verified run
    monitor asks it to stop its run (agent and every descendant, SIGKILL after its own grace, exit
    recorded as a stop, so the next supervisor resumes the chat); a monitor that does not finish in
    time gets SIGUSR1 (kill the run now), then SIGKILL. Cgroups emptied by killed monitors are removed."""
    monitors = local_run_monitors(state)
    for m in monitors:
        procfs.signal_process(m.pid, m.start_ticks, signal.SIGTERM)
    for m in monitors:
        if wait_gone(m.pid, m.start_ticks, grace + 3.0):
            print(f"  run monitor pid {m.pid:<8} stopped its run", file=out)
            continue
        procfs.signal_process(m.pid, m.start_ticks, signal.SIGUSR1)
        if not wait_gone(m.pid, m.start_ticks, 3.0):
            procfs.signal_process(m.pid, m.start_ticks, signal.SIGKILL)
            wait_gone(m.pid, m.start_ticks, 3.0)
        print(f"  run monitor pid {m.pid:<8} killed its run (it did not stop within {grace + 3:g}s)", file=out)
    procs.remove_stale_cgroups(state, wait=1.0)


def stop_agents(state: Path, supervisor_address: str | None, grace: float, out: TextIO) -> None:
    if supervisor_address and stop_agents_via_supervisor(supervisor_address, max(rpc_timeout(), grace * 2 + 10),
                                                          out):
        return
    stop_local_runs(state, grace, out)


def stop_services(record: StackRecord, keep_agents: bool, out: TextIO) -> None:
    """Stop the recorded services: first the agents (unless kept for the next supervisor to adopt) —
    the supervisor stops them, recorded as a shutdown so they resume on the next start, or, if it is
    dead, this process stops the verified local runs of this state dir — then the supervisor,
    dispatch and graph: SIGTERM, grace, SIGKILL; only processes whose pid, start ticks and argv
    match the record.

    Used by `wgs down` (after `release_keeper`) and by the keeper (SIGTERM/SIGINT, or giving up).
    """
    grace = grace_seconds()
    sup = record.services.get("supervisor")
    if not keep_agents:
        alive = sup is not None and sup.alive()
        stop_agents(Path(record.state_dir), sup.address if alive and sup is not None else None, grace, out)
    if sup is not None:
        result = terminate(sup.pid, sup.start_ticks, grace) if sup.alive() else "not running"
        print(f"  {'supervisor':<10} pid {sup.pid:<8} {result}", file=out)
    for name in ("dispatch", "graph"):
        svc = record.services.get(name)
        if svc is None:
            continue
        result = terminate(svc.pid, svc.start_ticks, grace) if svc.alive() else "not running"
        print(f"  {name:<10} pid {svc.pid:<8} {result}", file=out)


# ---------------------------------------------------------------------------------------------
# wgs down / status


def cmd_down(ns: argparse.Namespace) -> int:
    state = resolve_state_dir(ns.state_dir)
    record = read_stack(state)
    if record is None:
        print(f"wgs: no stack recorded in {state} (nothing to stop)")
        return 0
    set_process_token(auth.operator_token(state, auth.SUPERVISOR))  # to ask the supervisor to stop its agents (StopAgents)
    if record.keeper is not None and record.keeper.alive():
        # First the keeper, so that nothing is restarted while the services stop.
        result = release_keeper(record.keeper, grace_seconds() * 3 + 10)
        print(f"  {'keeper':<10} pid {record.keeper.pid:<8} {result}")
        record = read_stack(state) or record  # its last word: a service it restarted just now is on it
    stop_services(record, ns.keep_agents, sys.stdout)
    left = record.live_processes()
    if left:
        raise CliError(f"could not stop: {', '.join(left)}")
    remove_stack(state)
    if record.state == FAILED and record.failure:
        print(f"wgs: the stack had already stopped: {record.failure}")
    print("wgs: stack stopped")
    return 0


def _last_exit_text(svc: ServiceRecord) -> str:
    e = svc.last_exit
    if e is None:
        return "-"
    return f"{e.at} {e.detail or e.how}"


def _status_hint(record: StackRecord, state: Path, arg: str | None) -> str | None:
    """What to do, agreeing with what `wgs up` / `wgs down` actually do with this record."""
    problem = stack_problem(record, state, arg)
    if problem is not None:
        return problem
    if not record.keeper_alive():
        pid = f" (pid {record.keeper.pid})" if record.keeper else ""
        return (f"the stack keeper{pid} is not running, so a crashed service would not be restarted; "
                f"`wgs up{state_flag(arg)}` takes the stack over (it restarts nothing that serves)")
    return None


def _health_text(row: dict[str, Any]) -> str:
    """The HEALTH column: the health check of a live service, else what the keeper records."""
    state: str | None = row["state"]
    health: str = row["health"]
    if row["alive"] is not False:
        return health if state in (None, SERVING) or health == "SERVING" else f"{state}, {health}"
    if state == RESTARTING:
        return f"restarting, next try {row['next_start_at'][11:]}" if row["next_start_at"] else "restarting"
    if state is not None and state in (STOPPED, FAILED):
        return state
    return "unreachable (process gone)"


def replica_rows(address: str, state: Path) -> tuple[list[dict[str, Any]], str]:
    """Each supervisor replica the graph knows (live and lapsed), with its chats and headroom; or
    why they could not be listed."""
    with sync_channel(address, token=auth.operator_token(state)) as ch:
        try:
            resp = supervisor_pb2_grpc.SupervisorServiceStub(ch).ListReplicas(
                supervisor_pb2.ListReplicasRequest(include_expired=True), timeout=rpc_timeout())
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "error"
            details = exc.details() if hasattr(exc, "details") else ""
            return [], f"{code}: {details}"
    now = datetime.now(UTC)
    rows = []
    for r in resp.replicas:
        expires = r.lease_expires_at.ToDatetime(tzinfo=UTC) if r.HasField("lease_expires_at") else None
        beat = r.heartbeat_at.ToDatetime(tzinfo=UTC) if r.HasField("heartbeat_at") else None
        rows.append({
            "supervisor_id": r.supervisor_id, "address": r.advertise_address,
            "live": expires is not None and expires > now, "answered": r.supervisor_id == resp.answered_by,
            "owned_chats": r.owned_chats, "live_chats": r.live_chats, "max_live_chats": r.max_live_chats,
            "free_capacity": r.free_capacity, "memory_used_bytes": r.memory_used_bytes,
            "memory_limit_bytes": r.memory_limit_bytes,
            "heartbeat_seconds_ago": round((now - beat).total_seconds(), 1) if beat else None,
        })
    return rows, ""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f}" if n else "-"


def _print_replicas(rows: list[dict[str, Any]], problem: str) -> None:
    if problem:
        print(f"  replicas: could not be listed ({problem})")
        return
    table = [("REPLICA", "ADDRESS", "STATE", "CHATS", "LIVE/MAX", "FREE", "MEMORY MiB", "HEARTBEAT")]
    for r in rows:
        beat = "-" if r["heartbeat_seconds_ago"] is None else f"{r['heartbeat_seconds_ago']:g}s ago"
        table.append((r["supervisor_id"] + (" *" if r["answered"] else ""), r["address"] or "-",
                      "live" if r["live"] else "LOST", str(r["owned_chats"]),
                      f"{r['live_chats']}/{r['max_live_chats'] or '-'}", str(r["free_capacity"]) if r["live"] else "-",
                      f"{_mib(r['memory_used_bytes'])}/{_mib(r['memory_limit_bytes'])}", beat))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  " + " ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + " " + row[-1])


def cmd_status(ns: argparse.Namespace) -> int:
    state = resolve_state_dir(ns.state_dir)
    record = read_stack(state)
    rows: list[dict[str, Any]] = []
    for name in SERVICES:
        svc = record.services.get(name) if record else None
        if svc is not None:
            alive = svc.alive()
            health = health_status(svc.address) if alive and svc.address else "unreachable (process gone)"
            last = svc.last_exit
            rows.append({
                "service": name, "address": svc.address, "pid": svc.pid, "alive": alive, "health": health,
                "state": svc.state, "restarts": svc.restarts, "log": svc.log,
                "next_start_at": svc.next_start_at or None,
                "last_exit": None if last is None else {
                    "at": last.at, "pid": last.pid, "how": last.detail or last.how, "returncode": last.returncode,
                    "uptime_seconds": last.uptime_seconds},
            })
        else:
            address = env_str(f"WGS_{name.upper()}_ADDR", f"127.0.0.1:{DEFAULT_PORTS[name]}")
            rows.append({"service": name, "address": address, "pid": None, "alive": None,
                         "health": health_status(address), "state": None, "restarts": None, "log": None,
                         "next_start_at": None, "last_exit": None})
    ok = all(r["health"] == "SERVING" for r in rows)
    sup_row = next(r for r in rows if r["service"] == "supervisor")
    replicas, replica_problem = (replica_rows(sup_row["address"], state) if sup_row["health"] == "SERVING"
                                 else ([], "the supervisor is not serving"))
    hint = _status_hint(record, state, ns.state_dir) if record else (
        None if ok else "not all services are serving; start the stack with `wgs up`")
    if ns.json:
        doc: dict[str, Any] = {"state_dir": str(state), "source": "stack.json" if record else "environment",
                               "serving": ok, "services": rows, "hint": hint, "replicas": replicas,
                               "replicas_problem": replica_problem or None}
        if record is not None:
            doc.update({"state": record.state, "failure": record.failure or None, "keeper": record_summary(record)})
        print(dumps(doc))
        return 0 if ok else 1
    if record is None:
        print(f"wgs: no stack recorded in {state}; using WGS_*_ADDR")
    else:
        k = record.keeper
        keeper = "no keeper" if k is None else (
            f"keeper pid {k.pid}{', detached' if k.detached else ''}"
            + ("" if record.keeper_alive() else ", not running"))
        print(f"wgs: stack recorded in {stack_path(state)} ({keeper}; {record.state})")
    print(f"  {'SERVICE':<10} {'ADDRESS':<22} {'PID':<8} {'HEALTH':<30} {'RESTARTS':<8} LAST EXIT")
    for r in rows:
        pid = str(r["pid"]) if r["pid"] else "-"
        restarts = "-" if r["restarts"] is None else str(r["restarts"])
        health = _health_text(r)
        svc = record.services.get(r["service"]) if record else None
        last_text = _last_exit_text(svc) if svc is not None else "-"
        print(f"  {r['service']:<10} {r['address']:<22} {pid:<8} {health:<30} {restarts:<8} {last_text}")
    if record is not None and record.keeper is not None:
        alive = record.keeper_alive()
        print(f"  {'keeper':<10} {'-':<22} {record.keeper.pid:<8} {'running' if alive else 'not running':<30} "
              f"{'-':<8} log {record.keeper.log or stack_log_path(state)}")
    _print_replicas(replicas, replica_problem)
    if hint:
        print(f"wgs: {hint}", file=sys.stderr)
    return 0 if ok else 1


def add_parsers(sub: Any) -> None:
    up = sub.add_parser("up", help="start graph, dispatch and supervisor as a local stack that restarts crashed services")
    up.add_argument("--state-dir", help="state directory (default: $WGS_STATE_DIR or ./.wgs)")
    up.add_argument("--detach", action="store_true",
                    help="run the keeper in the background; return once all services serve; stop with `wgs down`")
    up.add_argument("--keep-agents", action="store_true",
                    help="when the keeper stops the stack (Ctrl-C, SIGTERM, or giving up on a crashing service) "
                         "leave chat agents running for the next `wgs up` to adopt")
    up.add_argument("--keeper-ready-fd", type=int, default=None, help=argparse.SUPPRESS)  # the detached keeper
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the stack started by `wgs up`")
    down.add_argument("--state-dir", help="state directory (default: $WGS_STATE_DIR or ./.wgs)")
    down.add_argument("--keep-agents", action="store_true",
                      help="leave chat agents running; the next `wgs up` adopts them")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="address, pid, health, restarts and last exit of each service")
    status.add_argument("--state-dir", help="state directory (default: $WGS_STATE_DIR or ./.wgs)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)
