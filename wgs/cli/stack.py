"""`wgs up`, `wgs down`, `wgs status`: run the three services as a local stack.

The running stack is recorded in <state>/run/stack.json (pids with their /proc start ticks, so a
reused pid is never mistaken for a service, and the addresses the services actually bound, read
from their WGS_ADDRESS_FILE). Other commands find the services through this record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wgs.cli.output import CliError, dumps
from wgs.cli.procs import describe_exit, is_alive, start_ticks, tail_lines, terminate, wait_gone
from wgs.common import auth
from wgs.common.clients import set_process_token, sync_channel
from wgs.common.settings import DEFAULT_PORTS, SERVICES, env_float, env_str, rpc_timeout, service_env
from wgs.v1 import graph_pb2, graph_pb2_grpc, runtime_pb2

STACK_FILE = "stack.json"
START_TIMEOUT = 60.0  # per phase: a fresh SQLite/PostgreSQL migration can take a few seconds
HEALTH_TIMEOUT = 2.0


def resolve_state_dir(arg: str | None) -> Path:
    """--state-dir, else WGS_STATE_DIR, else ./.wgs (absolute, so children and records agree)."""
    raw = arg or env_str("WGS_STATE_DIR", "./.wgs")
    return Path(raw).expanduser().resolve()


def client_target(bound: str) -> str:
    """A bound listen address as a client target (0.0.0.0 / [::] are not connectable everywhere)."""
    host, _, port = bound.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


@dataclass
class ServiceRecord:
    name: str
    pid: int
    start_ticks: int | None
    address: str
    log: str
    log_offset: int = 0


@dataclass
class StackRecord:
    state_dir: str
    started_at: str
    detached: bool
    owner_pid: int | None  # the foreground `wgs up`, if any
    owner_start_ticks: int | None
    services: dict[str, ServiceRecord] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StackRecord:
        doc = json.loads(text)
        services = {k: ServiceRecord(**v) for k, v in doc.get("services", {}).items()}
        return cls(
            state_dir=doc["state_dir"], started_at=doc["started_at"], detached=bool(doc.get("detached")),
            owner_pid=doc.get("owner_pid"), owner_start_ticks=doc.get("owner_start_ticks"), services=services,
        )

    def live_processes(self) -> list[str]:
        """Descriptions of the recorded processes that are still alive."""
        out = []
        if self.owner_pid and is_alive(self.owner_pid, self.owner_start_ticks):
            out.append(f"wgs up (pid {self.owner_pid})")
        for s in self.services.values():
            if is_alive(s.pid, s.start_ticks):
                out.append(f"{s.name} (pid {s.pid}, {s.address})")
        return out


def stack_path(state: Path) -> Path:
    return state / "run" / STACK_FILE


def read_stack(state: Path) -> StackRecord | None:
    path = stack_path(state)
    try:
        return StackRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"cannot read {path}: {exc}; remove it if no stack is running") from None


def write_stack(state: Path, record: StackRecord) -> None:
    path = stack_path(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(record.to_json())
    tmp.replace(path)


def remove_stack(state: Path) -> None:
    stack_path(state).unlink(missing_ok=True)


def service_address(service: str, state_dir: str | None = None) -> str:
    """Where a client finds a service: the live stack record of the state dir, else WGS_<S>_ADDR."""
    state = resolve_state_dir(state_dir)
    try:
        record = read_stack(state)
    except CliError:
        record = None
    if record is not None:
        svc = record.services.get(service)
        if svc is not None and is_alive(svc.pid, svc.start_ticks):
            return svc.address
    return env_str(f"WGS_{service.upper()}_ADDR", f"127.0.0.1:{DEFAULT_PORTS[service]}")


def health_status(address: str, timeout: float = HEALTH_TIMEOUT) -> str:
    """SERVING, NOT_SERVING, or `unreachable (<reason>)` for one service (grpc.health.v1 Check)."""
    with sync_channel(address) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAVAILABLE or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "unreachable"
            return f"unreachable ({code.name.lower() if code else 'error'})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def wait_serving(address: str, timeout: float) -> bool:
    """Block until the service reports SERVING through health Watch (event-driven), bounded."""
    deadline = time.monotonic() + timeout
    with sync_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                for resp in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=remaining):
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return False
                if code != grpc.StatusCode.UNAVAILABLE:
                    # Watch not usable on this server: fall back to Check.
                    if health_status(address, min(HEALTH_TIMEOUT, remaining)) == "SERVING":
                        return True
                time.sleep(0.05)  # not connectable yet; the channel backs off itself


# ---------------------------------------------------------------------------------------------
# wgs up


class StackFailed(Exception):
    """A service died or did not become ready; the message names it and why."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_offset: int
    addr_file: Path
    address: str = ""
    ticks: int | None = None

    def death_message(self) -> str:
        rc = self.proc.returncode
        lines = tail_lines(self.log, 20, self.log_offset)
        head = f"{self.name} service (pid {self.proc.pid}) exited: {describe_exit(rc)}"
        if rc == 2:
            head += " (configuration error)"
        if not lines:
            return head + f"; nothing on its stderr ({self.log})"
        return head + f"; last lines of {self.log}:\n" + "\n".join("    " + line for line in lines)


def grace_seconds() -> float:
    return env_float("WGS_SHUTDOWN_GRACE_SECONDS", 10.0) + 5.0


class Stack:
    """The three service processes of one `wgs up`."""

    def __init__(self, state: Path, detach: bool, out: TextIO) -> None:
        self.state = state
        self.detach = detach
        self.out = out
        self.children: dict[str, Child] = {}

    def spawn(self, name: str, extra_env: dict[str, str]) -> Child:
        run_dir = self.state / "run"
        logs = self.state / "logs"
        run_dir.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        addr_file = run_dir / f"{name}.addr"
        addr_file.unlink(missing_ok=True)
        log = logs / f"{name}.log"
        env = service_env(name, os.environ)  # least privilege: API keys reach the supervisor only
        env.update({"WGS_STATE_DIR": str(self.state), "WGS_ADDRESS_FILE": str(addr_file), "PYTHONUNBUFFERED": "1"})
        env.update(extra_env)
        with log.open("ab") as fh:
            offset = fh.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", "wgs.cli.main", "serve", name],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, env=env,
                start_new_session=True,  # Ctrl-C reaches only `wgs up`, which stops services in order
            )
        child = Child(name, proc, log, offset, addr_file, ticks=start_ticks(proc.pid))
        self.children[name] = child
        return child

    def wait_ready(self, names: list[str], timeout: float) -> None:
        """Wait for each child's address file (written once it serves), then health SERVING."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            for name in list(pending):
                child = self.children[name]
                if child.proc.poll() is not None:
                    raise StackFailed(child.death_message())
                if child.addr_file.exists():
                    text = child.addr_file.read_text().strip()
                    if text:
                        child.address = client_target(text)
                        pending.remove(name)
            if pending:
                if time.monotonic() > deadline:
                    raise StackFailed(
                        f"{', '.join(pending)} did not start within {timeout:g}s; see "
                        + ", ".join(str(self.children[n].log) for n in pending)
                    )
                self._wait_any_exit(0.05)
        for name in names:
            child = self.children[name]
            remaining = max(1.0, deadline - time.monotonic())
            if not wait_serving(child.address, remaining):
                if child.proc.poll() is not None:
                    raise StackFailed(child.death_message())
                raise StackFailed(f"{name} at {child.address} is not SERVING after {timeout:g}s; see {child.log}")

    def _wait_any_exit(self, timeout: float) -> None:
        """Sleep up to `timeout`, waking early if a child exits (pidfds)."""
        fds = []
        try:
            for c in self.children.values():
                if c.proc.poll() is None:
                    with contextlib.suppress(OSError):
                        fds.append(os.pidfd_open(c.proc.pid))
            if fds:
                select.select(fds, [], [], timeout)
            else:
                time.sleep(timeout)
        finally:
            for fd in fds:
                os.close(fd)

    def record(self) -> StackRecord:
        me = os.getpid()
        return StackRecord(
            state_dir=str(self.state),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            detached=self.detach,
            owner_pid=None if self.detach else me,
            owner_start_ticks=None if self.detach else start_ticks(me),
            services={
                c.name: ServiceRecord(c.name, c.proc.pid, c.ticks, c.address, str(c.log), c.log_offset)
                for c in self.children.values()
            },
        )

    def stop_all(self, agents: bool = True) -> None:
        """Supervisor first (it still needs graph and dispatch to record its chats), then its agents
        (unless kept for adoption), then the rest."""
        grace = grace_seconds()
        order = [n for n in ("supervisor", "dispatch", "graph") if n in self.children]
        for name in order:
            graph = self.children.get("graph")
            if (name == "dispatch" and agents and "supervisor" in self.children and graph is not None
                    and graph.address and graph.proc.poll() is None):
                stop_agents(graph.address, grace, self.out)
            child = self.children[name]
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    print(f"wgs: {name} did not stop within {grace:g}s of SIGTERM; killing it", file=sys.stderr)
                    child.proc.kill()
                    child.proc.wait(5)

    def watch(self) -> int:
        """Foreground: block until SIGINT/SIGTERM (clean stop, exit 0) or a service dies (exit 1)."""
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        received: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            received.append(signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        old_wakeup = signal.set_wakeup_fd(wfd)
        pidfds = {os.pidfd_open(c.proc.pid): c for c in self.children.values()}
        try:
            while True:
                dead = [c for c in self.children.values() if c.proc.poll() is not None]
                if dead:
                    for c in dead:
                        print(f"wgs: {c.death_message()}", file=sys.stderr)
                    print("wgs: stopping the other services", file=sys.stderr)
                    return 1
                if received:
                    name = signal.Signals(received[0]).name
                    print(f"wgs: {name} received; stopping the services", file=self.out, flush=True)
                    return 0
                with contextlib.suppress(InterruptedError):
                    select.select([rfd, *pidfds], [], [])
                with contextlib.suppress(BlockingIOError):
                    os.read(rfd, 512)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            for fd in pidfds:
                os.close(fd)
            os.close(rfd)
            os.close(wfd)


def _check_no_live_stack(state: Path) -> None:
    record = read_stack(state)
    if record is None:
        return
    live = record.live_processes()
    if live:
        raise CliError(
            f"a stack is already running for {state}: {', '.join(live)}; "
            "stop it with `wgs down` (or use another --state-dir)"
        )
    remove_stack(state)  # stale record of a stack that is gone


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_up(ns: argparse.Namespace) -> int:
    state = resolve_state_dir(ns.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    _check_no_live_stack(state)
    auth.ensure_stack_secret(state)
    set_process_token(auth.operator_token(state, auth.SUPERVISOR))  # stop_all lists the agents
    out = sys.stdout
    stack = Stack(state, ns.detach, out)
    # SIGTERM during start-up must still stop what was started.
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            stack.spawn("graph", {})
            stack.spawn("dispatch", {})
            stack.wait_ready(["graph", "dispatch"], START_TIMEOUT)
            stack.spawn("supervisor", {
                "WGS_GRAPH_ADDR": stack.children["graph"].address,
                "WGS_DISPATCH_ADDR": stack.children["dispatch"].address,
            })
            stack.wait_ready(["supervisor"], START_TIMEOUT)
        except StackFailed as exc:
            print(f"wgs: {exc}", file=sys.stderr)
            stack.stop_all()
            print("wgs: the stack did not start; nothing is left running", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("wgs: interrupted during start-up; stopping the services", file=sys.stderr)
            stack.stop_all()
            return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    write_stack(state, stack.record())
    print(f"wgs: stack serving (state {state})", file=out)
    for name in SERVICES:
        c = stack.children[name]
        print(f"  {name:<10} {c.address:<22} pid {c.proc.pid:<8} log {c.log}", file=out)
    if ns.detach:
        print("stop it with: wgs down" + _state_flag(ns.state_dir), file=out, flush=True)
        return 0
    print("press Ctrl-C to stop", file=out, flush=True)
    try:
        code = stack.watch()
    finally:
        # Finish the orderly stop even if the user presses Ctrl-C again or `wgs down` signals us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop_all(agents=not ns.keep_agents)
        remove_stack(state)
    if code == 0:
        print("wgs: all services stopped", file=out, flush=True)
    return code


def _state_flag(arg: str | None) -> str:
    return f" --state-dir {arg}" if arg else ""


# ---------------------------------------------------------------------------------------------
# wgs down / status


def live_agent_runs(graph_address: str, timeout: float) -> list[tuple[str, runtime_pb2.Run]]:
    """(chat id, run) of every agent run on this host that the graph records as not yet exited."""
    host = socket.gethostname()
    out: list[tuple[str, runtime_pb2.Run]] = []
    with sync_channel(graph_address) as ch:
        stub = graph_pb2_grpc.GraphServiceStub(ch)
        token = ""
        while True:
            resp = stub.ListChatRecords(
                graph_pb2.ListChatRecordsRequest(include_ended=True, page_size=1000, page_token=token), timeout=timeout
            )
            for rec in resp.chats:
                run = rec.runtime.current_run
                if (rec.runtime.HasField("current_run") and run.monitor_pid and not run.HasField("exited_at")
                        and run.hostname == host and is_alive(run.monitor_pid, run.monitor_start_ticks or None)):
                    out.append((rec.task.id, run))
            token = resp.next_page_token
            if not token:
                return out


def stop_agent_group(run: runtime_pb2.Run, grace: float) -> str:
    """SIGTERM the run's process group (the per-run monitor leads it and records the exit), then SIGKILL."""
    pgid, ticks = run.monitor_pid, run.monitor_start_ticks or None
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    if wait_gone(pgid, ticks, grace):
        return "stopped"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    wait_gone(pgid, ticks, 5.0)
    return f"killed (did not stop within {grace:g}s of SIGTERM)"


def stop_agents(graph_address: str, grace: float, out: TextIO) -> None:
    try:
        runs = live_agent_runs(graph_address, rpc_timeout())
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "error"  # type: ignore[attr-defined]
        print(f"wgs: could not list agents from the graph ({code}); agents may still run", file=sys.stderr)
        return
    for chat_id, run in runs:
        print(f"  agent      pid {run.pid:<8} {stop_agent_group(run, grace)} ({chat_id} run #{run.number})", file=out)


def cmd_down(ns: argparse.Namespace) -> int:
    state = resolve_state_dir(ns.state_dir)
    record = read_stack(state)
    if record is None:
        print(f"wgs: no stack recorded in {state} (nothing to stop)")
        return 0
    grace = grace_seconds()
    set_process_token(auth.operator_token(state, auth.SUPERVISOR))  # stop_agents lists the agents
    if record.owner_pid and is_alive(record.owner_pid, record.owner_start_ticks):
        # A foreground `wgs up`: it stops its services in order itself and removes the record.
        result = terminate(record.owner_pid, record.owner_start_ticks, grace * 2 + 10)
        print(f"  wgs up     pid {record.owner_pid:<8} {result}")
    sup = record.services.get("supervisor")
    if sup is not None:
        result = terminate(sup.pid, sup.start_ticks, grace)
        print(f"  {'supervisor':<10} pid {sup.pid:<8} {result}")
    graph = record.services.get("graph")
    if not ns.keep_agents and graph is not None and is_alive(graph.pid, graph.start_ticks):
        # The supervisor leaves agents running on purpose (a restarted supervisor adopts them);
        # `wgs down` means nothing of the stack keeps running, so stop them here.
        stop_agents(graph.address, grace, sys.stdout)
    for name in ("dispatch", "graph"):
        svc = record.services.get(name)
        if svc is None:
            continue
        result = terminate(svc.pid, svc.start_ticks, grace)
        print(f"  {name:<10} pid {svc.pid:<8} {result}")
    left = record.live_processes()
    if left:
        raise CliError(f"could not stop: {', '.join(left)}")
    remove_stack(state)
    print("wgs: stack stopped")
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    state = resolve_state_dir(ns.state_dir)
    record = read_stack(state)
    rows: list[dict[str, Any]] = []
    for name in SERVICES:
        svc = record.services.get(name) if record else None
        if svc is not None:
            alive = is_alive(svc.pid, svc.start_ticks)
            address = svc.address
            health = health_status(address) if alive else "unreachable (process gone)"
            rows.append({"service": name, "address": address, "pid": svc.pid, "alive": alive,
                         "health": health, "log": svc.log})
        else:
            address = env_str(f"WGS_{name.upper()}_ADDR", f"127.0.0.1:{DEFAULT_PORTS[name]}")
            rows.append({"service": name, "address": address, "pid": None, "alive": None,
                         "health": health_status(address), "log": None})
    ok = all(r["health"] == "SERVING" for r in rows)
    if ns.json:
        print(dumps({"state_dir": str(state), "source": "stack.json" if record else "environment",
                     "serving": ok, "services": rows}))
    else:
        source = f"stack recorded in {stack_path(state)}" if record else f"no stack recorded in {state}; using WGS_*_ADDR"
        print(f"wgs: {source}")
        for r in rows:
            pid = str(r["pid"]) if r["pid"] else "-"
            print(f"  {r['service']:<10} {r['address']:<22} pid {pid:<8} {r['health']}")
        if not ok:
            print("wgs: not all services are serving; start the stack with `wgs up`", file=sys.stderr)
    return 0 if ok else 1


def add_parsers(sub: Any) -> None:
    up = sub.add_parser("up", help="start graph, dispatch and supervisor as a local stack")
    up.add_argument("--state-dir", help="state directory (default: $WGS_STATE_DIR or ./.wgs)")
    up.add_argument("--detach", action="store_true", help="return once all services serve; stop with `wgs down`")
    up.add_argument("--keep-agents", action="store_true",
                    help="foreground: on Ctrl-C leave chat agents running for the next `wgs up` to adopt")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the stack started by `wgs up`")
    down.add_argument("--state-dir", help="state directory (default: $WGS_STATE_DIR or ./.wgs)")
    down.add_argument("--keep-agents", action="store_true",
                      help="leave chat agents running; the next `wgs up` adopts them")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="address, pid and health of each service")
    status.add_argument("--state-dir", help="state directory (default: $WGS_STATE_DIR or ./.wgs)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

