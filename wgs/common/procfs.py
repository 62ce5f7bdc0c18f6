"""Process identity from Linux /proc, shared by the graph (Reconcile), the supervisor and the CLI.

A pid can be reused after its process dies, so a process is identified by its pid together with
its start time in clock ticks since boot (field 22 of /proc/<pid>/stat). A zombie counts as gone:
it has exited and only waits to be reaped.

Signals go through a pidfd opened *before* the start ticks are checked (`signal_process`), so the
signal reaches the process that was checked even if the pid is reused meanwhile. Waits use poll
on a pidfd, never select() (which fails for descriptors >= 1024).
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterable


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


def parent_pid(pid: int) -> int | None:
    rest = stat_fields(pid)
    try:
        return int(rest[1]) if rest else None
    except (IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str] | None:
    """argv of `pid` as it shows in /proc (None if gone; [] for a zombie or kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]  # each argument ends with one NUL; an empty last argument stays
    return [a.decode("utf-8", "surrogateescape") for a in data.split(b"\0")]


def owner_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def environ_has(pid: int, entry: str) -> bool:
    """True if the environment `pid` was exec'd with contains exactly `entry` ("NAME=value")."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return entry.encode("utf-8", "surrogateescape") in data.split(b"\0")


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of `pid` (the "0::<path>" line of /proc/<pid>/cgroup), None if unknown."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as fh:
            lines = fh.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


def fd_target(pid: int, fd: int) -> str | None:
    """Where fd `fd` of `pid` points (readlink of /proc/<pid>/fd/<fd>), None if unknown."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


def pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's /proc/<pid>/task/<tid>/children)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                out.extend(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            pass
    return out


def _children_files_exist() -> bool:
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


_HAS_CHILDREN_FILES = _children_files_exist()


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live descendant of `root`, whatever its process group or session.

    Walks the children files (cost proportional to the tree); on kernels without them
    (CONFIG_PROC_CHILDREN off) a scan of every process's ppid."""
    tree: dict[int, list[int]] | None = None
    if not _HAS_CHILDREN_FILES:
        tree = {}
        for pid in pids():
            ppid = parent_pid(pid)
            if ppid is not None:
                tree.setdefault(ppid, []).append(pid)
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    todo = list(tree.get(root, ()) if tree is not None else children(root))
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        ticks = start_ticks(pid)
        if ticks is not None:
            out.append((pid, ticks))
        todo.extend(tree.get(pid, ()) if tree is not None else children(pid))
    return out


def signal_process(pid: int, ticks: int | None, sig: int) -> bool:
    """Send `sig` to `pid` only if it is (still) the process started at `ticks`. True if sent.

    The pidfd is opened first and the identity checked after, so a pid reused between the check
    and the signal cannot receive it."""
    if pid <= 0:
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not is_alive(pid, ticks):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def wait_exited(pid: int, ticks: int | None, timeout: float) -> bool:
    """Wait (poll on a pidfd) until the process has exited; True if it has. A zombie counts as exited."""
    if not is_alive(pid, ticks):
        return True
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return not is_alive(pid, ticks)
    try:
        if not is_alive(pid, ticks):  # reused meanwhile: ours is gone
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if poller.poll(remaining * 1000):
                return True
    finally:
        os.close(fd)


def wait_all_exited(procs: Iterable[tuple[int, int | None]], timeout: float) -> list[tuple[int, int | None]]:
    """Wait until every (pid, ticks) has exited or `timeout` passes; returns those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if is_alive(*p)]
    for pid, ticks in list(left):
        if wait_exited(pid, ticks, max(0.0, deadline - time.monotonic())):
            left.remove((pid, ticks))
    return left
