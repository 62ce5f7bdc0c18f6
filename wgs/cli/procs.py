"""Process identity and termination helpers (Linux /proc), shared by `wgs up/down/status`.

A pid alone can be reused after the process dies, so a process is identified by its pid together
with its start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from wgs.common.procfs import is_alive, start_ticks

__all__ = ["describe_exit", "is_alive", "start_ticks"]


def describe_exit(returncode: int | None) -> str:
    """Popen returncode in words: "exit code 2" or "killed by SIGKILL" (None: "status unknown")."""
    if returncode is None:
        return "status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


def exit_phrase(returncode: int | None) -> str:
    """The end of "supervisor ... after it ...": "was killed by SIGKILL", "exited with code 2"."""
    if returncode is None:
        return "exited (status unknown)"
    if returncode < 0:
        return "was " + describe_exit(returncode)
    return f"exited with code {returncode}"


def wait_readable(fds: Iterable[int], timeout: float | None) -> list[int]:
    """poll(2) the descriptors for input (a pidfd is readable once its process exited); the ready ones.

    poll, not select: select() fails for descriptors >= 1024. `timeout` None waits without bound;
    EINTR (a signal) returns an empty list so the caller re-checks its flags.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    try:
        return [fd for fd, _ in poller.poll(ms)]
    except InterruptedError:
        return []


def cmdline(pid: int) -> list[bytes]:
    """argv of a live process (empty if it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def wait_gone(pid: int, ticks: int | None, timeout: float) -> bool:
    """Wait until the process is gone (event-driven via pidfd where possible); True if it is."""
    if not is_alive(pid, ticks):
        return True
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return not is_alive(pid, ticks)
    try:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return not is_alive(pid, ticks)
            ready = wait_readable([fd], min(remaining, 0.5))
            # A pidfd becomes readable when the process exits; a zombie child of ours is also "gone".
            if ready or not is_alive(pid, ticks):
                return True
    finally:
        os.close(fd)


def terminate(pid: int, ticks: int | None, grace: float) -> str:
    """SIGTERM, wait up to `grace`, then SIGKILL. Returns what happened, for messages."""
    if not is_alive(pid, ticks):
        return "not running"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    if wait_gone(pid, ticks, grace):
        return "stopped"
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "stopped"
    wait_gone(pid, ticks, 5.0)
    return f"killed (did not stop within {grace:g}s of SIGTERM)"


def tail_lines(path: Path, n: int = 20, offset: int = 0, max_bytes: int = 64 * 1024) -> list[str]:
    """Last `n` lines of a file, reading only after byte `offset` (the current run's part)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(offset, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return [line for line in lines if line.strip()][-n:]
