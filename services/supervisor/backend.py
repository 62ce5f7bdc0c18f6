"""The run backend: what the chat lifecycle needs from the layer that runs agent processes.

One interface (as JupyterHub's Spawner), implemented for local processes by
`local_backend.LocalProcessBackend` (per-run monitor, pidfds, cgroups) and in the lifecycle tests
by a fake that runs nothing. The lifecycle never touches processes, files of runs or /proc itself.

A `RunHandle` is the typed record of one live (or just ended) run the lifecycle holds: what was
started, how to reach it, and what the lifecycle learned about it (why it is being stopped, how it
ended). It replaces an untyped `extra` dict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from opentelemetry.trace import SpanContext

from wgs.v1 import runtime_pb2


class SpawnFailed(Exception):
    """The agent could not be started. `permanent`: retrying cannot help (executable missing, not
    executable, bad format, working directory missing) — the chat goes FAILED at once. `errno`: the
    error behind it (ENOENT, EACCES, ...), which names the fix."""

    def __init__(self, message: str, *, permanent: bool = False, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.errno = errno


@dataclass(frozen=True)
class ExitInfo:
    """How a run ended, as its monitor recorded it (or why that is unknown)."""

    exit_code: int | None
    signal: int | None
    exited_at: datetime
    error: str = ""  # exec failure or why the status is unknown
    leftovers: int = 0  # descendants of the agent ended after it exited
    fenced: bool = False  # ended by its monitor: the supervisor's lease was not renewed in time
    exec_errno: int | None = None  # the exec failed with this errno (ENOENT, EACCES, ENOEXEC: permanent)
    unknown: bool = False  # the end was not observed (monitor or supervisor lost)
    signal_name: str = ""
    stopped: bool = False  # the run's monitor was asked to stop it (wgs down while the supervisor was away)

    def describe(self) -> str:
        if self.error and self.exit_code is None and self.signal is None:
            return self.error
        if self.signal is not None:
            return f"killed by signal {self.signal} ({self.signal_name or 'SIG' + str(self.signal)})"
        text = f"exited with code {self.exit_code}"
        return f"{text}: {self.error}" if self.error else text


@dataclass(frozen=True)
class RunSpec:
    """What to start: one run of one chat."""

    chat_id: str
    number: int
    argv: list[str]
    display_argv: list[str]  # argv with secrets redacted, for records and logs
    env: dict[str, str]
    cwd: str


@dataclass(eq=False)
class RunHandle:
    """One run the lifecycle supervises."""

    chat_id: str
    number: int
    pid: int
    start_ticks: int
    monitor_pid: int
    monitor_start_ticks: int
    log_path: Path
    argv: list[str]
    started_at: datetime
    hostname: str
    native: object = None  # the backend's own object for this run
    # What the lifecycle learns about the run:
    span: SpanContext | None = None  # the spawn span (exit spans link to it)
    trace_id: str = ""
    stop_reason: str = ""  # set when wgs stops it ("StopChat", "shutdown", ...): a stop, not a crash
    exit: ExitInfo | None = None  # once the end is known
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    leftovers_checked: bool = False  # after an unknown end: what lived of the run was proven and ended
    recorded: bool = False  # the end is recorded in the graph
    recorded_event: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self) -> runtime_pb2.Run:
        """The run as the graph records it when it starts."""
        out = runtime_pb2.Run(
            number=self.number, pid=self.pid, process_start_ticks=self.start_ticks, monitor_pid=self.monitor_pid,
            monitor_start_ticks=self.monitor_start_ticks, argv=self.argv, stderr_path=str(self.log_path),
            hostname=self.hostname, trace_id=self.trace_id)
        out.started_at.FromDatetime(self.started_at)
        return out


@dataclass(frozen=True)
class Leftover:
    """A process of an earlier run of a chat that was still alive before a restart, and its fate."""

    pid: int
    what: str  # "agent of run 2 (sh)", "descendant of run 2 (sleep)", "monitor of run 2", ...
    outcome: str  # "ended", "killed after the grace", "still alive"

    @property
    def is_agent(self) -> bool:
        return self.what.startswith("agent")


def describe_leftovers(leftovers: list[Leftover]) -> str:
    """E.g. "agent of run 1 pid 4242 ended; descendant of run 1 pid 4243 killed after the grace"."""
    return "; ".join(f"{lo.what} pid {lo.pid} {lo.outcome}" for lo in leftovers)


ExitCallback = Callable[[RunHandle, ExitInfo], None]


class RunBackend(Protocol):
    """Runs agents. Blocking work happens off the event loop inside the implementation."""

    hostname: str

    def prime(self) -> None:
        """Prepare for the first spawn (e.g. start a warm monitor); returns at once."""

    def log_path(self, chat_id: str, number: int) -> Path:
        """Where run `number` of the chat writes its stdout/stderr."""
        ...

    async def spawn(self, spec: RunSpec) -> RunHandle:
        """Start the run; its log file exists before the process. Raises SpawnFailed."""
        ...

    def watch(self, handle: RunHandle, on_exit: ExitCallback) -> bool:
        """Call on_exit(handle, info) once when the run ends; False if it already has (then call
        `collect_exit`)."""
        ...

    def unwatch(self, handle: RunHandle) -> None:
        """Stop watching (supervisor shutdown: the run lives on for the next supervisor)."""

    def collect_exit(self, handle: RunHandle) -> ExitInfo:
        """How a run that is no longer alive ended (its exit record, or unknown)."""
        ...

    async def stop(self, handle: RunHandle, grace: float) -> list[int]:
        """End the run whole: SIGTERM, `grace`, SIGKILL, its descendants included. Returns pids that
        survived (none expected). The exit arrives through the watch callback."""
        ...

    def interrupt(self, handle: RunHandle) -> bool:
        """SIGINT to the agent; True only if a live agent (identity proven) received it."""
        ...

    def adopt(self, chat_id: str, run: runtime_pb2.Run) -> RunHandle | None:
        """A handle for a recorded run whose monitor is alive and provably ours, else None."""
        ...

    async def end_leftovers(self, chat_id: str, runs: list[runtime_pb2.Run], grace: float) -> list[Leftover]:
        """Prove that no process of the chat's earlier runs lives on this host (recorded agents,
        their descendants, runs started but never recorded); end any that does."""
        ...

    def tail(self, handle_or_path: RunHandle | Path | str) -> str:
        """The last lines of a run's output file (blocking file read: call off the event loop)."""
        ...

    def tails(self, handles_or_paths: Sequence[RunHandle | Path | str]) -> list[str]:
        """`tail` of each, read together (blocking file reads: call off the event loop)."""
        ...

    def set_lease_deadline(self, deadline: float) -> None:
        """Fencing: runs end themselves when this wall-clock time passes without a renewal."""

    async def close(self) -> None:
        """Release what the backend holds (warm monitor, watches); runs keep running."""
