"""Process identity from /proc: pid plus start ticks, zombies and missing pids count as gone."""

from __future__ import annotations

import os
import subprocess

from wgs.common.procfs import is_alive, start_ticks


def test_start_ticks_of_self_and_missing_pid() -> None:
    assert start_ticks(os.getpid()) is not None
    assert is_alive(os.getpid(), None)
    assert start_ticks(2**22 + 7) is None and not is_alive(2**22 + 7, None)


def test_a_reused_pid_or_a_zombie_is_not_the_same_process() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        ticks = start_ticks(child.pid)
        assert ticks is not None and is_alive(child.pid, ticks)
        assert not is_alive(child.pid, ticks + 1)  # same pid, other start time: another process
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
        assert start_ticks(child.pid) is None and not is_alive(child.pid, ticks)
    finally:
        child.kill()
        child.wait()
