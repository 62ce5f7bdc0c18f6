"""The run backend for agents on this host: procs.py (per-run monitor, pidfds, cgroups) behind the
RunBackend interface the lifecycle uses."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path

from services.supervisor import procs
from services.supervisor.backend import ExitCallback, ExitInfo, Leftover, RunHandle, RunSpec, SpawnFailed
from wgs.common.procfs import is_alive
from wgs.v1 import runtime_pb2


def _exit_info(info: procs.ExitInfo) -> ExitInfo:
    return ExitInfo(
        exit_code=info.exit_code, signal=info.signal, exited_at=info.exited_at, error=info.error,
        signal_name=info.signal_name, leftovers=int(getattr(info, "leftovers", 0) or 0),
        fenced=bool(getattr(info, "fenced", False)), exec_errno=getattr(info, "exec_errno", None),
        unknown=info.exit_code is None and info.signal is None and info.error.startswith("exit status unknown"),
    )


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_gone(processes: list[tuple[int, int]], limit: float) -> bool:
    """Wait (on pidfds: no polling) until none of the (pid, start ticks) lives; False on timeout."""
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    fds: list[int] = []
    for pid, ticks in processes:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        if not is_alive(pid, ticks or None):
            os.close(fd)
            continue
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, fut)
        fds.append(fd)
        waits.append(fut)
    try:
        if not waits:
            return True
        _, pending = await asyncio.wait(waits, timeout=limit)
        return not pending
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def _permanent(exc: procs.SpawnError) -> bool:
    """Whether retrying cannot help: the program is missing or not executable, or its directory is."""
    flagged = getattr(exc, "permanent", None)
    if flagged is not None:
        return bool(flagged)
    return exc.message.startswith(("executable not found", "not executable", "working directory"))


class LocalProcessBackend:
    def __init__(self, state_dir: Path, supervisor_id: str, *, max_log_bytes: int = procs.DEFAULT_MAX_LOG_BYTES,
                 stop_grace: float = 5.0) -> None:
        self.state_dir = state_dir
        self.supervisor_id = supervisor_id
        self.hostname = socket.gethostname()
        self.max_log_bytes = max_log_bytes
        self.stop_grace = stop_grace
        self._warm = procs.WarmMonitor(state_dir)
        digest = hashlib.sha256(supervisor_id.encode()).hexdigest()[:12]
        self.lease_file = state_dir / "run" / f"lease-{digest}.deadline"

    # -- files ------------------------------------------------------------------------------

    def log_path(self, chat_id: str, number: int) -> Path:
        return procs.run_paths(self.state_dir, chat_id, number)[0]

    def tail(self, handle_or_path: RunHandle | Path | str) -> str:
        path = handle_or_path.log_path if isinstance(handle_or_path, RunHandle) else handle_or_path
        if not self._in_state_dir(path):
            return ""
        return procs.tail_text(path)

    def _in_state_dir(self, path: Path | str) -> bool:
        try:
            return Path(path).resolve().is_relative_to((self.state_dir / "chats").resolve())
        except (OSError, ValueError):
            return False

    # -- runs -------------------------------------------------------------------------------

    def prime(self) -> None:
        self._warm.prime()

    def _handle(self, run: procs.Run) -> RunHandle:
        return RunHandle(chat_id=run.chat_id, number=run.number, pid=run.pid, start_ticks=run.start_ticks,
                         monitor_pid=run.monitor_pid, monitor_start_ticks=run.monitor_start_ticks,
                         log_path=run.log_path, argv=list(run.argv), started_at=run.started_at,
                         hostname=self.hostname, native=run)

    async def spawn(self, spec: RunSpec) -> RunHandle:
        try:
            run = await asyncio.to_thread(
                procs.spawn, self.state_dir, spec.chat_id, spec.number, spec.argv, spec.env, spec.cwd,
                display_argv=spec.display_argv, max_log_bytes=self.max_log_bytes, warm=self._warm)
        except procs.SpawnError as exc:
            raise SpawnFailed(exc.message, permanent=_permanent(exc)) from None
        return self._handle(run)

    def _native(self, handle: RunHandle) -> procs.Run:
        if isinstance(handle.native, procs.Run):
            return handle.native
        log_path, exit_path = procs.run_paths(self.state_dir, handle.chat_id, handle.number)
        run = procs.Run(chat_id=handle.chat_id, number=handle.number, pid=handle.pid, start_ticks=handle.start_ticks,
                        monitor_pid=handle.monitor_pid, monitor_start_ticks=handle.monitor_start_ticks,
                        log_path=log_path, exit_path=exit_path, argv=list(handle.argv), started_at=handle.started_at)
        handle.native = run
        return run

    def watch(self, handle: RunHandle, on_exit: ExitCallback) -> bool:
        return procs.watch(self._native(handle), lambda _run, info: on_exit(handle, _exit_info(info)))

    def unwatch(self, handle: RunHandle) -> None:
        procs.unwatch(self._native(handle))

    def collect_exit(self, handle: RunHandle) -> ExitInfo:
        return _exit_info(procs.collect_exit(self._native(handle)))

    async def stop(self, handle: RunHandle, grace: float) -> list[int]:
        run = self._native(handle)
        run.stop_requested = True
        return await procs.stop_group(run, grace)

    def interrupt(self, handle: RunHandle) -> bool:
        return procs.interrupt(self._native(handle))

    def adopt(self, chat_id: str, run: runtime_pb2.Run) -> RunHandle | None:
        if run.hostname and run.hostname != self.hostname:
            return None
        if not is_alive(run.monitor_pid, run.monitor_start_ticks or None):
            return None
        log_path, exit_path = procs.run_paths(self.state_dir, chat_id, run.number)
        native = procs.Run(chat_id=chat_id, number=run.number, pid=run.pid, start_ticks=run.process_start_ticks,
                           monitor_pid=run.monitor_pid, monitor_start_ticks=run.monitor_start_ticks,
                           log_path=log_path, exit_path=exit_path, argv=list(run.argv),
                           started_at=run.started_at.ToDatetime(tzinfo=UTC) if run.HasField("started_at")
                           else datetime.now(UTC))
        return self._handle(native)

    async def end_leftovers(self, chat_id: str, runs: list[runtime_pb2.Run], grace: float) -> list[Leftover]:
        """Agents of earlier runs still alive (their monitor gone), with their descendants: end them."""
        found: list[tuple[int, int, str]] = []
        for run in runs:
            if run.pid <= 0 or (run.hostname and run.hostname != self.hostname):
                continue
            if is_alive(run.monitor_pid, run.monitor_start_ticks or None):
                continue  # a live monitor ends its run itself when asked (stop), never a leftover
            if is_alive(run.pid, run.process_start_ticks or None):
                found.append((run.pid, run.process_start_ticks, f"agent of run {run.number}"))
                found += [(p, t, f"descendant of run {run.number}'s agent") for p, t in procs.descendants(run.pid)]
        if not found:
            return []
        for pid, ticks, _ in found:
            if is_alive(pid, ticks or None):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        await wait_gone([(p, t) for p, t, _ in found], grace)
        out: list[Leftover] = []
        for pid, ticks, what in found:
            outcome = "ended"
            if is_alive(pid, ticks or None):
                try:
                    os.kill(pid, signal.SIGKILL)
                    outcome = "killed after the grace"
                except ProcessLookupError:
                    pass
            out.append(Leftover(pid=pid, what=what, outcome=outcome))
        return out

    def set_lease_deadline(self, deadline: float) -> None:
        writer = getattr(procs, "write_lease_deadline", None)
        if writer is not None:
            writer(self.lease_file, deadline)
            return
        self.lease_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.lease_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(f"{deadline:.3f}\n")
        os.chmod(tmp, 0o600)
        tmp.replace(self.lease_file)

    async def close(self) -> None:
        await asyncio.to_thread(self._warm.close)
