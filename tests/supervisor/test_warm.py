"""The warm (pre-started) run monitor, with real processes: same runs as one-shot, no leaks, no sharing.

The per-outcome checks (exit code + stderr, signal, exec failure, log cap, interrupt, group stop)
run for both monitor modes in test_procs.py; this file covers what only the warm path has.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.supervisor import procs
from wgs.common import procfs

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[procs.WarmMonitor]:
    w = procs.WarmMonitor(tmp_path)
    w.prime()
    try:
        yield w
    finally:
        w.close()


def _idle(w: procs.WarmMonitor) -> int:
    pid = w.idle_pid()
    assert pid is not None, "no warm monitor was started"
    return pid


def _wait_gone(pid: int, limit: float = 10.0) -> None:
    """Wait (poll on a pidfd) until `pid` has exited; a zombie awaiting a reaper other than us counts."""
    assert procfs.wait_exited(pid, None, limit), f"process {pid} did not exit within {limit}s"


async def _wait_exit(run: procs.Run, limit: float = 10.0) -> procs.ExitInfo:
    fut: asyncio.Future[procs.ExitInfo] = asyncio.get_running_loop().create_future()
    assert procs.watch(run, lambda r, info: fut.set_result(info))
    return await asyncio.wait_for(fut, limit)


SLEEP = os.path.realpath("/bin/sleep")


def _exe(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


PROBE = textwrap.dedent("""
    import os
    print("fd0", os.readlink("/proc/self/fd/0"))
    print("fd1", os.readlink("/proc/self/fd/1"))
    print("fd2", os.readlink("/proc/self/fd/2"))
    print("log mode", oct(os.fstat(1).st_mode & 0o777))
    print("cwd", os.getcwd())
    print("env", os.environ.get("WGS_GIVEN"), os.environ.get("WGS_SUPERVISOR_ONLY"))
    print("group leader is parent", os.getpgid(0) == os.getppid(), os.getsid(0) == os.getppid())
    print("fds", sorted(int(f) for f in os.listdir("/proc/self/fd")))
""")


async def test_agent_process_setup_is_the_same_as_one_shot(tmp_path: Path, warm: procs.WarmMonitor,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """stdin /dev/null, stdout+stderr = the 0600 run log (open before the agent runs), cwd, exactly the
    given environment, the monitor as session/group leader and parent, no stray fds."""
    monkeypatch.setenv("WGS_SUPERVISOR_ONLY", "not-for-agents")
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WGS_GIVEN": "given"}
    seen: dict[str, str] = {}
    for number, w in ((1, None), (2, warm)):
        idle = _idle(warm) if w is not None else None
        run = procs.spawn(tmp_path, ".chat-1", number, [PY, "-c", PROBE], env, str(work), warm=w)
        if w is not None:
            assert run.monitor_pid == idle
        assert _ppid(run.pid) == run.monitor_pid
        info = await _wait_exit(run)
        assert info.exit_code == 0 and info.signal is None
        seen["warm" if w else "one-shot"] = run.log_path.read_text().replace(str(run.log_path), "<log>")
    assert seen["warm"] == seen["one-shot"]
    out = seen["warm"]
    assert "fd0 /dev/null" in out and "fd1 <log>" in out and "fd2 <log>" in out
    assert "log mode 0o600" in out and f"cwd {work}" in out
    assert "env given None" in out
    assert "group leader is parent True True" in out
    assert "fds [0, 1, 2, 3]" in out  # 3: the listdir handle itself


async def test_agent_pid_reported_alive_and_stoppable(tmp_path: Path, warm: procs.WarmMonitor) -> None:
    idle = _idle(warm)
    run = procs.spawn(tmp_path, ".chat-1", 1, ["/bin/sleep", "30"], dict(os.environ), str(tmp_path), warm=warm)
    assert run.monitor_pid == idle and run.pid != idle
    assert procs.is_alive(run.pid, run.start_ticks) and procs.is_alive(run.monitor_pid, run.monitor_start_ticks)
    # The pid is reported right after the fork; the exec follows (no event for it: bounded re-check).
    for _ in range(500):
        if _exe(run.pid) == SLEEP:
            break
        await asyncio.sleep(0.01)
    assert _exe(run.pid) == SLEEP
    assert procs.is_alive(run.pid, run.start_ticks)  # same process after the exec
    assert set(procs.group_members(run.monitor_pid)) == {run.monitor_pid, run.pid}
    fut: asyncio.Future[procs.ExitInfo] = asyncio.get_running_loop().create_future()
    assert procs.watch(run, lambda r, info: fut.set_result(info))
    assert await procs.stop_group(run, grace=2.0) == []
    info = await asyncio.wait_for(fut, 10)
    assert info.signal == signal.SIGTERM
    assert procs.read_exit_file(run.exit_path) is not None


async def test_two_concurrent_spawns_get_two_monitors(tmp_path: Path, warm: procs.WarmMonitor) -> None:
    _idle(warm)
    runs = await asyncio.gather(*(asyncio.to_thread(
        procs.spawn, tmp_path, chat, 1, ["/bin/sleep", "30"], dict(os.environ), str(tmp_path), warm=warm)
        for chat in (".chat-1", ".chat-2")))
    try:
        a, b = runs
        assert a.monitor_pid != b.monitor_pid and a.pid != b.pid
        for run in runs:
            assert procs.is_alive(run.pid, run.start_ticks)
            assert _ppid(run.pid) == run.monitor_pid
            assert set(procs.group_members(run.monitor_pid)) == {run.monitor_pid, run.pid}
        assert warm.idle_pid() not in (a.monitor_pid, b.monitor_pid)  # a replacement, not a reused one
    finally:
        for run in runs:
            assert await procs.stop_group(run, grace=2.0) == []
            assert run.popen is not None
            run.popen.wait(timeout=10)


def test_a_pool_hands_out_distinct_started_monitors_and_ends_them_all(tmp_path: Path) -> None:
    """Creates in quick succession each get a monitor started beforehand (oldest first), never a
    shared one, and close() leaves none of them behind."""
    w = procs.WarmMonitor(tmp_path, size=3)
    w.prime()
    taken: list[procs._Idle] = []
    try:
        first = _idle(w)
        for _ in range(3):
            idle = w.take()
            assert idle is not None and idle.popen.poll() is None
            taken.append(idle)
        assert taken[0].popen.pid == first  # the oldest first
        assert len({i.popen.pid for i in taken}) == 3
        refill = _idle(w)  # replacements were started
        assert refill not in {i.popen.pid for i in taken}
    finally:
        for idle in taken:
            idle.discard()
        w.close()
    assert not Path(f"/proc/{refill}").exists()  # every idle monitor ended and reaped
    assert w.take() is None


async def test_concurrent_spawns_each_get_a_pre_started_monitor_and_all_are_ended_at_close(tmp_path: Path) -> None:
    """With as many idle monitors as spawns allowed at once, concurrent spawns do not wait for a
    replacement's interpreter start-up: each runs in one that was started before it was asked."""
    w = procs.WarmMonitor(tmp_path, size=3)
    w.prime()
    runs: list[procs.Run] = []
    refilled: list[int] = []
    try:
        idle = w.idle_pids()
        assert len(set(idle)) == 3
        runs = list(await asyncio.gather(*(asyncio.to_thread(
            procs.spawn, tmp_path, chat, 1, ["/bin/sleep", "30"], dict(os.environ), str(tmp_path), warm=w)
            for chat in (".chat-1", ".chat-2", ".chat-3"))))
        assert sorted(r.monitor_pid for r in runs) == sorted(idle)
        refilled = w.idle_pids()
        assert len(refilled) == 3 and not set(refilled) & set(idle)
    finally:
        w.close()
        for run in runs:
            assert await procs.stop_group(run, grace=2.0) == []
            assert run.popen is not None
            run.popen.wait(timeout=10)
    for pid in refilled:
        _wait_gone(pid)


async def test_dead_warm_monitor_falls_back_to_one_shot(tmp_path: Path, warm: procs.WarmMonitor) -> None:
    idle = _idle(warm)
    os.kill(idle, signal.SIGKILL)
    _wait_gone(idle)
    run = procs.spawn(tmp_path, ".chat-1", 1, [PY, "-c", "import sys; sys.stderr.write('fine\\n'); sys.exit(4)"],
                      dict(os.environ), str(tmp_path), warm=warm)
    assert run.monitor_pid != idle
    info = await _wait_exit(run)
    assert info.exit_code == 4 and "fine" in procs.tail_text(run.log_path)
    assert warm.idle_pid() not in (None, idle, run.monitor_pid)  # refilled


async def test_a_warm_monitor_that_cannot_take_the_run_leaves_nothing_of_it(tmp_path: Path,
                                                                          warm: procs.WarmMonitor) -> None:
    """A warm monitor that got the command but never reported (killed or stuck after forking the
    agent): the agent it may have forked is in a session of its own, and outside any cgroup on a
    host without one. Before the one-shot fallback starts the run, whatever carries this run's
    marker is ended — and nothing carrying another run's."""
    def marked(number: int) -> subprocess.Popen[bytes]:  # stands for the agent the lost monitor forked
        env = {**os.environ, procs.RUN_ID_VAR: procs.run_marker(tmp_path, ".chat-1", number)}
        return subprocess.Popen([SLEEP, "600"], env=env, start_new_session=True)

    escaped, other_run = marked(1), marked(2)
    idle = _idle(warm)
    os.kill(idle, signal.SIGSTOP)  # takes the command into its pipe, never answers
    try:
        run = await asyncio.to_thread(procs.spawn, tmp_path, ".chat-1", 1, [SLEEP, "600"], dict(os.environ),
                                      str(tmp_path), warm=warm)
        assert run.monitor_pid != idle and procfs.is_alive(run.pid, run.start_ticks)
        assert escaped.wait(5) == -signal.SIGKILL  # ended before the new run started
        assert other_run.poll() is None  # another run's process is not this run's to end
        await procs.stop_run(run, 1.0)
    finally:
        for proc in (escaped, other_run):
            proc.kill()
            proc.wait()
    _wait_gone(idle)


def test_spawn_error_leaves_the_warm_monitor_unused(tmp_path: Path, warm: procs.WarmMonitor) -> None:
    idle = _idle(warm)
    with pytest.raises(procs.SpawnError, match="executable not found"):
        procs.spawn(tmp_path, ".chat-1", 1, ["no-such-agent-xyz"], dict(os.environ), str(tmp_path), warm=warm)
    assert (tmp_path / "chats" / ".chat-1" / "run-1.log").exists()
    assert warm.idle_pid() == idle


def test_idle_monitor_holds_none_of_the_supervisors_environment(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WGS_TEST_SECRET_KEY", "sk-warm-monitor-must-not-hold-this")
    w = procs.WarmMonitor(tmp_path)
    w.prime()
    try:
        environ = Path(f"/proc/{_idle(w)}/environ").read_bytes()
        assert b"sk-warm-monitor-must-not-hold-this" not in environ
    finally:
        w.close()


def test_close_ends_the_idle_monitor_without_a_trace(tmp_path: Path) -> None:
    w = procs.WarmMonitor(tmp_path)
    w.prime()
    idle = _idle(w)
    assert str(tmp_path).encode() in _cmdline(idle)  # found by state dir
    w.close()
    assert not Path(f"/proc/{idle}").exists()  # exited and reaped: no process, no zombie
    assert not (tmp_path / "chats").exists()  # an idle monitor never became a run
    assert w.take() is None and w.idle_pid(timeout=0.1) is None  # closed: nothing restarted


def _cmdline(pid: int) -> bytes:
    """The command line of a just-started process: empty while its exec is still being set up
    (Popen returns once the exec is under way), so re-read it a bounded number of times."""
    for _ in range(1000):
        data = Path(f"/proc/{pid}/cmdline").read_bytes()
        if data:
            return data
        time.sleep(0.002)
    return b""


def _catches(pid: int, sig: int) -> bool:
    """True once `pid` has a handler for `sig` (SigCgt in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_idle_monitor_exits_on_sigterm(tmp_path: Path) -> None:
    """`wgs down` (or anyone stopping the stack) can end an idle monitor with SIGTERM: it exits 0."""
    w = procs.WarmMonitor(tmp_path, supervisor_id="sup-1")
    w.prime()
    try:
        pid = _idle(w)
        # Idle = its interpreter is up and its handler in place (before that, SIGTERM kills it outright).
        for _ in range(1000):
            if _catches(pid, signal.SIGTERM):
                break
            time.sleep(0.005)
        assert _catches(pid, signal.SIGTERM)
        ticks = procs.start_ticks(pid)
        assert procs.verify_monitor(pid, ticks, tmp_path, "sup-1")  # its identity is on its command line
        assert not procs.verify_monitor(pid, ticks, tmp_path, "sup-2")
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid)
        idle = w.take()
        assert idle is not None and idle.popen.pid == pid
        assert idle.popen.wait(timeout=10) == 0  # handled the signal and exited, no default-action death
        idle.discard()
    finally:
        w.close()
    assert not (tmp_path / "chats").exists()


async def test_spawn_with_a_stopped_idle_monitor_falls_back(tmp_path: Path) -> None:
    w = procs.WarmMonitor(tmp_path, supervisor_id="sup-1")
    w.prime()
    try:
        pid = _idle(w)
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid)
        run = procs.spawn(tmp_path, ".chat-1", 1, [PY, "-c", "raise SystemExit(6)"], dict(os.environ),
                          str(tmp_path), warm=w, supervisor_id="sup-1")
        assert run.monitor_pid != pid
        assert (await _wait_exit(run)).exit_code == 6
    finally:
        w.close()


def test_idle_monitor_exits_when_the_supervisor_dies(tmp_path: Path) -> None:
    """kill -9 of the supervisor closes the command pipe: the idle monitor exits, no leak."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from services.supervisor import procs
        w = procs.WarmMonitor(Path({str(tmp_path)!r}))
        w.prime()
        print(w.idle_pid(), flush=True)
        sys.stdin.read()  # until the test has opened a pidfd
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    sup = subprocess.Popen([PY, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sup.stdout is not None and sup.stdin is not None
    idle = int(sup.stdout.readline())
    ticks = procfs.start_ticks(idle)  # identity taken while the "supervisor" still holds it
    assert ticks is not None
    sup.stdin.close()
    assert sup.wait(timeout=10) == -signal.SIGKILL
    assert procfs.wait_exited(idle, ticks, 10), "the idle monitor outlived the supervisor"
    stat = Path(f"/proc/{idle}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    assert not (tmp_path / "chats").exists()
