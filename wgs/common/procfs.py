"""Process identity from Linux /proc, shared by the graph (Reconcile), the supervisor and the CLI.

A pid can be reused after its process dies, so a process is identified by its pid together with
its start time in clock ticks since boot (field 22 of /proc/<pid>/stat). A zombie counts as gone:
it has exited and only waits to be reaped.
"""

from __future__ import annotations


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, pgrp, ...), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return data[data.rfind(b")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot; None if it does not exist or is a zombie."""
    rest = stat_fields(pid)
    if not rest or rest[0] in (b"Z", b"X"):
        return None
    try:
        return int(rest[19])  # field 22 overall; rest starts at field 3
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, ticks: int | None) -> bool:
    """True if `pid` is a live process and, when `ticks` is given, the same one (start ticks match)."""
    if pid <= 0:
        return False
    current = start_ticks(pid)
    return current is not None and (ticks is None or current == ticks)
