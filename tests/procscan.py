"""Which live processes belong to a state dir, found through /proc: their argv, environment or cwd names it.

"Nothing left behind" after `wgs down` means this list is empty: services, the stack keeper, run
monitors (idle ones included), agents and anything an agent forked that kept WGS_STATE_DIR.
"""

from __future__ import annotations

import os
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
