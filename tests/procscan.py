"""Which live processes belong to a state dir, found through /proc: their argv, environment or cwd names it.

"Nothing left behind" after `wgs down` means this list is empty: services, the stack keeper, run
monitors (idle ones included), agents and anything an agent forked that kept WGS_STATE_DIR.

"Never two agents for one chat" is watched by `Sampler`: it scans the processes of chats
(`chat_processes`) every few milliseconds and records any chat with live processes of two runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wgs.common.procfs import is_alive


@dataclass(frozen=True)
class Found:
    pid: int
    argv: str
    why: str  # "cmdline", "environ" or "cwd"

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.why}): {self.argv}"


def _names(value: bytes, needle: bytes) -> bool:
    """`value` (an argv word or an environment entry) is the path `needle` or lies under it."""
    for part in value.replace(b"=", b"\0").replace(b":", b"\0").split(b"\0"):
        if part == needle or part.startswith(needle + b"/"):
            return True
    return False


def _ancestors() -> set[int]:
    """This process and its parents: the test itself may run inside the state dir's tree of names."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            break
        pid = int(stat[stat.rfind(b")") + 2 :].split()[1])
    return out


def processes_of(state: Path) -> list[Found]:
    """Live processes (zombies excluded) whose cmdline, environ or cwd names `state` (resolved)."""
    needle = str(Path(state).resolve()).encode()
    skip = _ancestors()
    found: list[Found] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        base = f"/proc/{entry}"
        try:
            argv = Path(f"{base}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        why = ""
        if any(_names(a, needle) for a in argv if a):
            why = "cmdline"
        else:
            try:
                if any(_names(e, needle) for e in Path(f"{base}/environ").read_bytes().split(b"\0") if e):
                    why = "environ"
            except OSError:
                pass
        if not why:
            try:
                if _names(os.readlink(f"{base}/cwd").encode(), needle):
                    why = "cwd"
            except OSError:
                pass
        if why and is_alive(pid, None):
            found.append(Found(pid, b" ".join(argv).decode(errors="replace").strip(), why))
    return found


# -- agents per chat, and a sampler that proves "never two agents for one chat" -------------------

RUN_ID_VAR = b"WGS_RUN_ID="  # services/supervisor/procs.run_marker: <state>/chats/<chat>/run-<n>, inherited
MONITOR = b"runmon.py"


@dataclass(frozen=True)
class ChatProcess:
    """A live process of a chat's run: the agent, or anything it forked that kept its environment."""

    pid: int
    ticks: int  # start time in clock ticks since boot: with the pid, the process's identity
    chat: str
    run: str  # the run it belongs to (WGS_RUN_ID; its run number when that is missing)
    argv: str

    def __str__(self) -> str:
        return f"pid {self.pid} of {self.run}: {self.argv}"


def _live_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = stat[stat.rfind(b")") + 2 :].split()
    return None if rest[0] in (b"Z", b"X") else int(rest[19])


def chat_processes(*, state: Path | None = None, mark: str | None = None) -> dict[str, list[ChatProcess]]:
    """Live processes carrying WGS_CHAT_ID, run monitors excluded, by chat: those whose run lies in
    `state` (their WGS_STATE_DIR or WGS_RUN_ID names it), or whose argv contains `mark`."""
    state_b = str(Path(state).resolve()).encode() if state is not None else None
    mark_b = mark.encode() if mark is not None else None
    found: dict[str, list[ChatProcess]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
            if MONITOR in argv or (mark_b is not None and mark_b not in argv):
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(e.split(b"=", 1) for e in env if b"=" in e)
        chat = values.get(b"WGS_CHAT_ID", b"").decode(errors="replace")
        if not chat:
            continue
        run = values.get(RUN_ID_VAR[:-1], b"").decode(errors="replace")
        if state_b is not None:
            homes = (values.get(b"WGS_STATE_DIR", b""), run.encode())
            if not any(_names(h, state_b) for h in homes if h):
                continue
        ticks = _live_ticks(pid)
        if ticks is None:
            continue
        run = run or f"{chat} run {values.get(b'WGS_RUN_NUMBER', b'?').decode(errors='replace')}"
        text = argv.replace(b"\0", b" ").decode(errors="replace").strip()
        found.setdefault(chat, []).append(ChatProcess(pid, ticks, chat, run, text))
    return found


class Sampler(threading.Thread):
    """Scans /proc every `interval` seconds with `scan`; records every chat seen with live processes
    of two runs at once (two agents, or an earlier run's leftover beside a new agent).

    A scan reads one process after another, so a process read first may have died before the last
    was read: a suspected double counts only if the processes of both runs are still the same live
    processes (pid + start ticks) when read again after the scan — each then lived through the
    whole interval between its two reads, so they lived at the same time."""

    def __init__(self, scan: Callable[[], dict[str, list[ChatProcess]]], interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.scan = scan
        self.interval = interval
        self.doubles: list[tuple[str, list[ChatProcess]]] = []
        self.scans = 0
        self.seen: set[str] = set()  # every chat it saw a process of (so it is known to look at the right ones)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for chat, procs in self.scan().items():
                self.seen.add(chat)
                if len({p.run for p in procs}) > 1:
                    alive = [p for p in procs if _live_ticks(p.pid) == p.ticks]
                    if len({p.run for p in alive}) > 1:
                        self.doubles.append((chat, alive))
            self.scans += 1
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join(5)
