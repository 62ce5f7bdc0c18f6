"""The run backend for agents on this host: procs.py (per-run monitor as subreaper, pidfds, cgroups,
fencing, identity proofs) behind the RunBackend interface the lifecycle uses."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from services.supervisor import procs
from services.supervisor.backend import ExitCallback, ExitInfo, Leftover, RunHandle, RunSpec, SpawnFailed
from wgs.v1 import runtime_pb2

log = logging.getLogger("wgs.supervisor.backend")

# Idle run monitors kept started (procs.WarmMonitor). With one, each of several creates in quick
# succession waited for the interpreter start-up of the monitor the create before had started
# (10-20 ms of CreateChat's p50 in benchmarks/views.py, more on a busy machine); with three, each
# finds one started creates ago. Each costs ~10 MiB of RSS, mostly pages shared with the others.
WARM_MONITORS = 3


def _signal_name(number: int | None) -> str:
    if number is None:
        return ""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _exit_info(info: procs.ExitInfo) -> ExitInfo:
    unknown = info.exit_code is None and info.signal is None
    error = info.error
    if unknown and info.monitor_signal is not None:
        error = f"run monitor died ({_signal_name(info.monitor_signal)}) without an exit record"
    return ExitInfo(
        exit_code=info.exit_code, signal=info.signal, exited_at=info.exited_at, error=error,
        signal_name=info.signal_name, leftovers=info.leftovers, fenced=info.fenced, exec_errno=info.exec_errno,
        unknown=unknown and not info.exec_errno, stopped=info.stopped,
    )


class LocalProcessBackend:
    def __init__(self, state_dir: Path, supervisor_id: str, *, max_log_bytes: int = procs.DEFAULT_MAX_LOG_BYTES,
                 stop_grace: float = 5.0, warm_monitors: int = 1) -> None:
        self.state_dir = state_dir
        self.supervisor_id = supervisor_id
        self.hostname = socket.gethostname()
        self.max_log_bytes = max_log_bytes
        self.stop_grace = stop_grace
        # Idle monitors ready for spawns: at least WARM_MONITORS (creates in quick succession each find
        # one whose interpreter is up), and one per create allowed at once.
        self._warm = procs.WarmMonitor(state_dir, supervisor_id=supervisor_id, size=max(WARM_MONITORS, warm_monitors))
        digest = hashlib.sha256(supervisor_id.encode()).hexdigest()[:12]
        self.lease_file = state_dir / "run" / f"lease-{digest}.deadline"
        self._files = procs.RunFiles(state_dir)

    # -- files ------------------------------------------------------------------------------

    def log_path(self, chat_id: str, number: int) -> Path:
        return procs.run_paths(self.state_dir, chat_id, number)[0]

    def tail(self, handle_or_path: RunHandle | Path | str) -> str:
        return self.tails([handle_or_path])[0]

    def tails(self, handles_or_paths: Sequence[RunHandle | Path | str]) -> list[str]:
        """The tails of several runs' output files in one go; "" for a file that is not a run file of
        this state dir, is reached through a symlink, or is not a regular file (procs.RunFiles)."""
        return self._files.tails([h.log_path if isinstance(h, RunHandle) else h for h in handles_or_paths])

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
                display_argv=spec.display_argv, max_log_bytes=self.max_log_bytes, warm=self._warm,
                supervisor_id=self.supervisor_id, stop_grace=self.stop_grace, lease_file=self.lease_file)
        except procs.SpawnError as exc:
            raise SpawnFailed(exc.message, permanent=exc.permanent, errno=exc.errno) from None
        return self._handle(run)

    def _native(self, handle: RunHandle) -> procs.Run:
        if isinstance(handle.native, procs.Run):
            return handle.native
        log_path, exit_path = procs.run_paths(self.state_dir, handle.chat_id, handle.number)
        run = procs.Run(chat_id=handle.chat_id, number=handle.number, pid=handle.pid, start_ticks=handle.start_ticks,
                        monitor_pid=handle.monitor_pid, monitor_start_ticks=handle.monitor_start_ticks,
                        log_path=log_path, exit_path=exit_path, argv=list(handle.argv), started_at=handle.started_at,
                        supervisor_id=self.supervisor_id, state_dir=self.state_dir, stop_grace=self.stop_grace)
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
        report = await procs.stop_run(run, grace)
        if report.refused:
            log.warning("%s run %d: %s", handle.chat_id, handle.number, report.refused)
        return report.survivors

    def interrupt(self, handle: RunHandle) -> bool:
        return procs.interrupt(self._native(handle))

    def adopt(self, chat_id: str, run: runtime_pb2.Run) -> RunHandle | None:
        """A recorded run whose monitor is alive and proven ours (this state dir, this supervisor)."""
        if run.hostname and run.hostname != self.hostname:
            return None
        log_path, exit_path = procs.run_paths(self.state_dir, chat_id, run.number)
        why = procs.check_monitor(run.monitor_pid, run.monitor_start_ticks or None, self.state_dir,
                                  run.supervisor_id or self.supervisor_id, log_path=log_path)
        if why:
            if procs.monitor_identity(run.monitor_pid, run.monitor_start_ticks or None) is not None:
                log.warning("%s run %d: not adopting its monitor: %s", chat_id, run.number, why)
            return None
        native = procs.Run(chat_id=chat_id, number=run.number, pid=run.pid, start_ticks=run.process_start_ticks,
                           monitor_pid=run.monitor_pid, monitor_start_ticks=run.monitor_start_ticks,
                           log_path=log_path, exit_path=exit_path, argv=list(run.argv),
                           started_at=run.started_at.ToDatetime(tzinfo=UTC) if run.HasField("started_at")
                           else datetime.now(UTC),
                           supervisor_id=run.supervisor_id or self.supervisor_id, state_dir=self.state_dir,
                           stop_grace=self.stop_grace)
        return self._handle(native)

    async def end_leftovers(self, chat_id: str, runs: list[runtime_pb2.Run], grace: float) -> list[Leftover]:
        """Prove that no process of the chat's earlier runs lives here (recorded agents, their
        descendants, runs never recorded — found by their cgroup or WGS_RUN_ID); end any that does."""
        local = [procs.RunIdentity.from_record(r) for r in runs if not r.hostname or r.hostname == self.hostname]
        report = await procs.ensure_runs_ended(self.state_dir, chat_id, local, grace)
        for refusal in report.refused:
            log.warning("%s: not signalled (identity not proven): %s", chat_id, refusal)
        killed = {p.pid for p in report.killed}
        out = [Leftover(pid=p.pid, what=f"{p.role} of run {p.run_number}" + (f" ({p.name})" if p.name else ""),
                        outcome="killed after the grace" if p.pid in killed else "ended")
               for p in report.ended]
        out += [Leftover(pid=p.pid, what=f"{p.role} of run {p.run_number}", outcome="still alive after SIGKILL")
                for p in report.survivors]
        return out

    def set_lease_deadline(self, deadline: float) -> None:
        self.lease_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        procs.write_lease_deadline(self.lease_file, deadline)

    async def close(self) -> None:
        # The runs are left for the next supervisor to adopt: no stale deadline may fence them.
        self.lease_file.unlink(missing_ok=True)
        await asyncio.to_thread(self._warm.close)
