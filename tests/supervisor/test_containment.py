"""A run dies whole, nothing is signalled without proof, no earlier run survives a restart.

Real processes only (procs.spawn + runmon), driven in asyncio; no service runs. Every containment
test runs twice: with per-run cgroups (where this host delegates a writable cgroup v2) and with
cgroups forced off (the monitor as child subreaper alone). Agents tell the test what they forked
through a FIFO (an event, not a guess) and wait for a "go" on another one.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.supervisor import procs
from wgs.common import procfs

PY = sys.executable
SUP = "sup-test"
CHAT = ".chat-1"


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["subreaper", "cgroup"])
def containment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """WGS_CGROUP_ROOT forced off, or the delegated cgroup v2 (skipped only where there is none)."""
    if request.param == "subreaper":
        monkeypatch.setenv(procs.CGROUP_ENV, "off")
        yield "subreaper"
        return
    root = procs.cgroup_root("auto")
    if root is None:
        pytest.skip("this host delegates no writable cgroup v2 to this process (see /proc/self/cgroup and "
                    "the cgroup2 mount in /proc/self/mountinfo): the cgroup path cannot run here")
    monkeypatch.setenv(procs.CGROUP_ENV, str(root))
    yield "cgroup"


@pytest.fixture(params=["one-shot", "warm"])
def warm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[procs.WarmMonitor | None]:
    if request.param == "one-shot":
        yield None
        return
    w = procs.WarmMonitor(tmp_path, supervisor_id=SUP)
    w.prime()
    try:
        yield w
    finally:
        w.close()


def _marked_processes(state_dir: Path) -> list[tuple[int, int]]:
    """Live processes whose environment carries a WGS_RUN_ID under `state_dir`."""
    prefix = f"{procs.RUN_ID_VAR}={os.path.abspath(state_dir)}/".encode()
    out: list[tuple[int, int]] = []
    for pid in procfs.pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        ticks = procfs.start_ticks(pid)
        if ticks is not None and any(e.startswith(prefix) for e in env.split(b"\0")):
            out.append((pid, ticks))
    return out


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path: Path) -> Iterator[None]:
    """After every test: no process of its runs lives and no run cgroup is left (then clean up if one is)."""
    yield
    left = _marked_processes(tmp_path)
    for pid, ticks in left:
        procfs.signal_process(pid, ticks, signal.SIGKILL)
    root = procs.cgroup_root("auto")
    stale = procs.run_cgroups(tmp_path, root) if root is not None else []
    for cg in stale:
        procs._cgroup_kill(cg)
        procfs.wait_all_exited(procs.cgroup_members(cg), 5.0)
        cg.rmdir()
    assert left == [], f"processes of the test's runs were left behind: {left}"
    assert stale == [], f"run cgroups were left behind: {stale}"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Fifo:
    """A named pipe the agent writes lines to; reading it waits on the event loop (add_reader)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # a writer always exists: no early EOF
        self._buf = b""

    async def line(self, limit: float = 10.0) -> str:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buf:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fd, _resolve, ready)
            try:
                await asyncio.wait_for(ready, limit)
            finally:
                loop.remove_reader(self.fd)
            try:
                self._buf += os.read(self.fd, 4096)
            except BlockingIOError:
                pass
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._keep)


async def _go(path: Path) -> None:
    """Tell the agent to go on: it blocks opening the FIFO for reading until we write."""
    def write() -> None:
        with open(path, "w") as fh:
            fh.write("go\n")

    await asyncio.to_thread(write)


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[tuple[Fifo, Path]]:
    ready = Fifo(tmp_path / "ready")
    go = tmp_path / "go"
    os.mkfifo(go)
    try:
        yield ready, go
    finally:
        ready.close()


def _spawn(tmp_path: Path, argv: list[str], *, warm: procs.WarmMonitor | None = None, number: int = 1,
           chat: str = CHAT, **kw: object) -> procs.Run:
    env = {**os.environ, "READY": str(tmp_path / "ready"), "GO": str(tmp_path / "go")}
    idle = warm.idle_pid() if warm is not None else None
    run = procs.spawn(tmp_path, chat, number, argv, env, str(tmp_path), warm=warm, supervisor_id=SUP,
                      **kw)  # type: ignore[arg-type]
    if warm is not None:
        assert idle is not None and run.monitor_pid == idle  # the pre-started monitor ran it
    return run


def _sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def _check_cgroup(run: procs.Run, mode: str) -> None:
    """In cgroup mode the agent is in the run's own cgroup and the monitor is not; else no cgroup."""
    name = procs.run_cgroup_name(run.state, run.chat_id, run.number)
    agent_cg = procfs.cgroup_of(run.pid) or ""
    if mode == "cgroup":
        assert run.cgroup is not None and run.cgroup.name == name and run.cgroup.is_dir()
        assert agent_cg.endswith("/" + name)
        assert not (procfs.cgroup_of(run.monitor_pid) or "").endswith("/" + name)
    else:
        assert run.cgroup is None and not agent_cg.endswith("/" + name)


def _watch(run: procs.Run, alive_at_exit: list[tuple[int, int]]) -> asyncio.Future[tuple[procs.ExitInfo, list[int]]]:
    """Future of (exit info, the given processes still alive at the moment the exit is recorded)."""
    fut: asyncio.Future[tuple[procs.ExitInfo, list[int]]] = asyncio.get_running_loop().create_future()

    def on_exit(_run: procs.Run, info: procs.ExitInfo) -> None:
        fut.set_result((info, [p for p, t in alive_at_exit if procfs.is_alive(p, t)]))

    assert procs.watch(run, on_exit)
    return fut


def _children_of(pid: int) -> list[tuple[int, int]]:
    return procfs.descendants(pid)


def _assert_cgroup_removed(run: procs.Run) -> None:
    if run.cgroup is not None:
        assert not run.cgroup.exists(), f"the run's cgroup {run.cgroup} was left behind"


# ---------------------------------------------------------------------------------------- a run dies whole


async def test_forking_agent_killed_its_children_end_before_the_exit_is_recorded(
        tmp_path: Path, containment: str, warm: procs.WarmMonitor | None, fifos: tuple[Fifo, Path]) -> None:
    ready, _go_path = fifos
    run = _spawn(tmp_path, _sh('sleep 1000 & sleep 1000 & echo "$!" > "$READY"; wait'), warm=warm)
    await ready.line()
    _check_cgroup(run, containment)
    children = _children_of(run.pid)
    assert len(children) == 2
    exited = _watch(run, children)
    os.kill(run.pid, signal.SIGKILL)  # the test's own agent: it may signal it directly
    info, alive = await asyncio.wait_for(exited, 20)
    assert alive == [], "children of the run were alive when its exit was recorded"
    assert info.signal == signal.SIGKILL and info.exit_code is None  # the agent's own status is kept
    assert info.leftovers == 2 and info.contained
    assert "2 leftover processes ended" in info.describe()
    assert "ending 2 leftover process(es)" in procs.tail_text(run.log_path)  # the reason is in the log
    _assert_cgroup_removed(run)


async def test_agent_exiting_0_leaves_a_child_that_is_ended(
        tmp_path: Path, containment: str, fifos: tuple[Fifo, Path]) -> None:
    ready, go = fifos
    run = _spawn(tmp_path, _sh('sleep 1000 & echo "$!" > "$READY"; read x < "$GO"; exit 0'))
    child = int(await ready.line())
    ticks = procfs.start_ticks(child)
    assert ticks is not None and procfs.parent_pid(child) == run.pid
    exited = _watch(run, [(child, ticks)])
    await _go(go)
    info, alive = await asyncio.wait_for(exited, 20)
    assert alive == []
    assert info.exit_code == 0 and info.signal is None and info.leftovers == 1
    assert not info.stopped and not info.fenced
    _assert_cgroup_removed(run)


DOUBLE_FORK = textwrap.dedent("""
    import os, sys, time
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:                      # leaves the session and process group, then orphans its child
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(1000)
            os._exit(0)
        os.write(w, b"%d" % grandchild)
        os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 64))
    os.waitpid(middle, 0)
    with open(os.environ["READY"], "w") as fh:
        fh.write("%d\\n" % grandchild)
    with open(os.environ["GO"]) as fh:
        fh.read()
""")


async def test_child_that_left_the_session_by_double_fork_is_ended(
        tmp_path: Path, containment: str, warm: procs.WarmMonitor | None, fifos: tuple[Fifo, Path]) -> None:
    ready, go = fifos
    run = _spawn(tmp_path, [PY, "-c", DOUBLE_FORK], warm=warm)
    grandchild = int(await ready.line())
    ticks = procfs.start_ticks(grandchild)
    assert ticks is not None
    assert os.getsid(grandchild) != os.getsid(run.pid) and os.getpgid(grandchild) != run.monitor_pid
    assert procfs.parent_pid(grandchild) == run.monitor_pid  # orphaned: re-parented to the subreaper
    exited = _watch(run, [(grandchild, ticks)])
    await _go(go)
    info, alive = await asyncio.wait_for(exited, 20)
    assert alive == []
    assert info.exit_code == 0 and info.leftovers == 1
    _assert_cgroup_removed(run)


async def test_agent_without_leftovers_records_none(tmp_path: Path, containment: str) -> None:
    run = _spawn(tmp_path, _sh("exit 3"))
    info, _ = await asyncio.wait_for(_watch(run, []), 20)
    assert info.exit_code == 3 and info.leftovers == 0 and info.contained
    assert info.describe() == "exited with code 3"
    _assert_cgroup_removed(run)


STUBBORN = textwrap.dedent("""
    import os, signal, subprocess, sys
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"],
        start_new_session=True)
    with open(os.environ["READY"], "w") as fh:
        fh.write("%d\\n" % child.pid)
    signal.pause()
""")


async def test_stop_ends_a_stubborn_agent_and_its_escaped_child_through_the_monitor(
        tmp_path: Path, containment: str, warm: procs.WarmMonitor | None, fifos: tuple[Fifo, Path]) -> None:
    """The supervisor's grace (0.3 s) is shorter than the monitor's (5 s): SIGUSR1 makes it kill now."""
    ready, _go_path = fifos
    run = _spawn(tmp_path, [PY, "-c", STUBBORN], warm=warm)
    child = int(await ready.line())
    ticks = procfs.start_ticks(child)
    assert ticks is not None
    exited = _watch(run, [(run.pid, run.start_ticks), (child, ticks)])
    report = await procs.stop_run(run, grace=0.3)
    assert report.refused == "" and report.monitor_finished and not report.monitor_stuck
    assert report.ended is None and report.survivors == []
    info, alive = await asyncio.wait_for(exited, 20)
    assert alive == []
    assert info.signal == signal.SIGKILL and info.stop_signal == signal.SIGTERM and info.stopped
    assert info.leftovers == 1
    _assert_cgroup_removed(run)


async def test_stop_of_a_cooperative_agent_is_recorded_as_a_stop(tmp_path: Path, containment: str) -> None:
    run = _spawn(tmp_path, ["/bin/sleep", "1000"])
    exited = _watch(run, [])
    assert await procs.stop_group(run, grace=5.0) == []
    info, _ = await asyncio.wait_for(exited, 20)
    assert info.signal == signal.SIGTERM and info.stop_signal == signal.SIGTERM and info.leftovers == 0
    _assert_cgroup_removed(run)


async def test_stuck_monitor_is_bypassed_and_the_run_still_ends(
        tmp_path: Path, containment: str, fifos: tuple[Fifo, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGSTOPped monitor cannot stop its run: procs ends the monitor's descendants (or its cgroup) itself."""
    monkeypatch.setattr(procs, "STOP_MARGIN", 0.5)
    ready, _go_path = fifos
    run = _spawn(tmp_path, _sh('sleep 1000 & echo "$!" > "$READY"; wait'))
    child = int(await ready.line())
    ticks = procfs.start_ticks(child)
    assert ticks is not None
    os.kill(run.monitor_pid, signal.SIGSTOP)
    report = await procs.stop_run(run, grace=0.2)
    assert report.monitor_stuck and report.ended is not None and report.survivors == []
    ended = {p.pid: p for p in report.ended.ended}
    assert {run.monitor_pid, run.pid, child} <= set(ended)
    assert ended[run.pid].role == "agent" and ended[run.monitor_pid].role == "monitor"
    for pid, t in ((run.pid, run.start_ticks), (child, ticks), (run.monitor_pid, run.monitor_start_ticks)):
        assert not procfs.is_alive(pid, t)
    assert run.popen is not None and run.popen.wait(timeout=10) == -signal.SIGKILL
    _assert_cgroup_removed(run)


# ---------------------------------------------------------------------------------------- proof before a restart


async def test_killed_monitor_its_live_agent_is_found_and_ended_before_a_restart(
        tmp_path: Path, containment: str, warm: procs.WarmMonitor | None, fifos: tuple[Fifo, Path]) -> None:
    ready, _go_path = fifos
    run = _spawn(tmp_path, _sh('sleep 1000 & sleep 1000 & echo "$!" > "$READY"; wait'), warm=warm)
    await ready.line()
    children = _children_of(run.pid)
    assert len(children) == 2
    exited = _watch(run, [])
    os.kill(run.monitor_pid, signal.SIGKILL)
    info, _ = await asyncio.wait_for(exited, 20)
    assert "the run monitor died (SIGKILL) without an exit record" in info.describe()
    assert info.monitor_signal == signal.SIGKILL and not info.contained
    assert procfs.is_alive(run.pid, run.start_ticks)  # the agent outlived its monitor

    # What the graph recorded of the run is all the supervisor passes in.
    record = procs.RunIdentity(number=1, pid=run.pid, start_ticks=run.start_ticks, monitor_pid=run.monitor_pid,
                               monitor_start_ticks=run.monitor_start_ticks, supervisor_id=SUP)
    found = procs.live_processes_of_runs(tmp_path, CHAT, [record])
    assert found.refused == []
    by_pid = {p.pid: p for p in found.processes}
    assert set(by_pid) == {run.pid, *(p for p, _t in children)}
    assert by_pid[run.pid].role == "agent"
    proof = "in the run's cgroup" if containment == "cgroup" else f"carries {procs.RUN_ID_VAR}"
    assert by_pid[run.pid].proof == proof

    report = await procs.end_processes(found, grace=2.0)
    assert report.survivors == [] and {p.pid for p in report.ended} == set(by_pid)
    assert report.describe().startswith(f"agent pid {run.pid} (sh) and 2 other processes ended")
    for pid, ticks in [(run.pid, run.start_ticks), *children]:
        assert not procfs.is_alive(pid, ticks)
    assert not procs.live_processes_of_runs(tmp_path, CHAT, [record], scan_environ=True)
    _assert_cgroup_removed(run)


async def test_an_adopted_monitor_killed_while_watched_is_not_blamed_on_a_supervisor_outage(
        tmp_path: Path, fifos: tuple[Fifo, Path]) -> None:
    ready, _go_path = fifos
    spawned = _spawn(tmp_path, _sh('echo up > "$READY"; exec sleep 1000'))
    await ready.line()
    # As a restarted supervisor adopts it: the same run from its record, the monitor not its child.
    adopted = procs.Run(chat_id=spawned.chat_id, number=1, pid=spawned.pid, start_ticks=spawned.start_ticks,
                        monitor_pid=spawned.monitor_pid, monitor_start_ticks=spawned.monitor_start_ticks,
                        log_path=spawned.log_path, exit_path=spawned.exit_path, argv=spawned.argv,
                        started_at=spawned.started_at, supervisor_id=SUP, state_dir=tmp_path)
    exited = _watch(adopted, [])
    os.kill(spawned.monitor_pid, signal.SIGKILL)
    info, _ = await asyncio.wait_for(exited, 20)
    assert info.error == f"exit status unknown: the run monitor (pid {spawned.monitor_pid}) died without an exit record"
    assert procfs.is_alive(spawned.pid, spawned.start_ticks)  # its agent is left for the proof before restart
    report = await procs.ensure_runs_ended(tmp_path, CHAT, [adopted.identity], grace=2.0)
    assert [p.pid for p in report.ended] == [spawned.pid] and not procfs.is_alive(spawned.pid, spawned.start_ticks)
    assert spawned.popen is not None
    spawned.popen.wait(5)


async def test_ensure_runs_ended_covers_several_earlier_runs(tmp_path: Path, containment: str,
                                                             fifos: tuple[Fifo, Path]) -> None:
    """Two earlier runs whose monitors were killed, and one that ended cleanly: all proven, all ended."""
    ready, _go_path = fifos
    # Each agent says it runs (it has joined its cgroup and exec'd) before its monitor is killed. A
    # monitor killed earlier leaves a child that has not joined yet: spawning run 3 then removes run
    # 2's still-empty cgroup, and the child dies reporting its failed join to the dead monitor
    # (SIGPIPE) — one earlier agent fewer to end, which made this test flaky.
    runs = [_spawn(tmp_path, _sh('echo up > "$READY"; exec /bin/sleep 1000'), number=n) for n in (1, 2)]
    for _ in runs:
        assert await ready.line() == "up"
    for run in runs:
        exited = _watch(run, [])
        os.kill(run.monitor_pid, signal.SIGKILL)
        await asyncio.wait_for(exited, 20)
    clean = _spawn(tmp_path, _sh("exit 0"), number=3)
    await asyncio.wait_for(_watch(clean, []), 20)
    records = [r.identity for r in (*runs, clean)]
    report = await procs.ensure_runs_ended(tmp_path, CHAT, records, grace=2.0)
    assert sorted(p.pid for p in report.ended) == sorted(r.pid for r in runs)
    assert report.survivors == [] and report.refused == []
    assert not procs.live_processes_of_runs(tmp_path, CHAT, records, scan_environ=True)
    for run in runs:
        _assert_cgroup_removed(run)


async def test_a_cleanly_ended_run_needs_no_scan_and_finds_nothing(tmp_path: Path, containment: str) -> None:
    run = _spawn(tmp_path, _sh("exit 0"))
    await asyncio.wait_for(_watch(run, []), 20)
    found = procs.live_processes_of_runs(tmp_path, CHAT, [run.identity])
    assert not found and found.refused == [] and found.cgroups == []


# ---------------------------------------------------------------------------------------- signal only what you started


VICTIM = textwrap.dedent("""
    import signal, sys
    got = []
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCONT):
        signal.signal(s, lambda n, f: (sys.stdout.write(signal.Signals(n).name + "\\n"), sys.stdout.flush()))
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    while True:
        signal.pause()
""")


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[str]]:
    """An unrelated process that reports every signal it receives."""
    proc = subprocess.Popen([PY, "-c", VICTIM], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _signals_received(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out


async def test_a_forged_record_naming_an_unrelated_process_is_never_signalled(
        tmp_path: Path, victim: subprocess.Popen[str]) -> None:
    ticks = procfs.start_ticks(victim.pid)
    assert ticks is not None
    assert not procs.verify_monitor(victim.pid, ticks, tmp_path, SUP)
    assert "is not a run monitor" in procs.check_monitor(victim.pid, ticks, tmp_path, SUP)
    log_path, exit_path = procs.run_paths(tmp_path, CHAT, 1)
    forged = procs.Run(chat_id=CHAT, number=1, pid=victim.pid, start_ticks=ticks, monitor_pid=victim.pid,
                       monitor_start_ticks=ticks, log_path=log_path, exit_path=exit_path, argv=["sleep"],
                       started_at=datetime.now(UTC), supervisor_id=SUP, state_dir=tmp_path)
    report = await procs.stop_run(forged, grace=0.1)
    assert report.refused.startswith(f"refused to stop {CHAT} run 1: pid {victim.pid}")
    assert await procs.stop_group(forged, grace=0.1) == []
    delivery = procs.interrupt_run(forged)
    assert not delivery.delivered and delivery.detail.startswith("refused")
    assert procs.interrupt(forged) is False
    found = procs.live_processes_of_runs(tmp_path, CHAT, [forged.identity], scan_environ=True)
    assert found.processes == [] and len(found.refused) == 2  # as monitor and as agent
    assert all(str(victim.pid) in r for r in found.refused)
    ended = await procs.ensure_runs_ended(tmp_path, CHAT, [forged.identity], grace=0.1)
    assert ended.ended == [] and ended.refused
    assert victim.poll() is None
    assert _signals_received(victim) == ""  # not one signal, not even SIGCONT


async def test_a_real_monitor_of_another_supervisor_or_another_run_is_refused(tmp_path: Path) -> None:
    other = procs.spawn(tmp_path, CHAT, 1, ["/bin/sleep", "1000"], dict(os.environ), str(tmp_path),
                        supervisor_id="another-stack")
    try:
        assert procs.verify_monitor(other.monitor_pid, other.monitor_start_ticks, tmp_path, "another-stack",
                                    log_path=other.log_path)
        assert not procs.verify_monitor(other.monitor_pid, other.monitor_start_ticks, tmp_path, SUP)
        assert not procs.verify_monitor(other.monitor_pid, other.monitor_start_ticks, tmp_path / "elsewhere",
                                        "another-stack")
        as_mine = procs.Run(**{**other.__dict__, "supervisor_id": SUP, "popen": None})
        report = await procs.stop_run(as_mine, grace=0.1)
        assert "run monitor of supervisor 'another-stack'" in report.refused
        assert not procs.interrupt(as_mine)
        log2, exit2 = procs.run_paths(tmp_path, ".chat-2", 1)  # a record of another chat naming this monitor
        wrong_run = procs.Run(**{**other.__dict__, "chat_id": ".chat-2", "log_path": log2, "exit_path": exit2,
                                 "popen": None})
        assert "another run" in (await procs.stop_run(wrong_run, grace=0.1)).refused
        assert procfs.is_alive(other.pid, other.start_ticks)
        assert procfs.is_alive(other.monitor_pid, other.monitor_start_ticks)
    finally:
        exited = _watch(other, [])
        assert (await procs.stop_run(other, grace=5.0)).monitor_finished
        await asyncio.wait_for(exited, 20)


async def test_interrupt_reaches_a_verified_agent(tmp_path: Path, fifos: tuple[Fifo, Path]) -> None:
    ready, _go_path = fifos
    code = ("import os, signal\nsignal.signal(signal.SIGINT, lambda *a: os._exit(130))\n"
            "open(os.environ['READY'], 'w').write('ready\\n')\nsignal.pause()")
    run = _spawn(tmp_path, [PY, "-c", code])
    await ready.line()
    exited = _watch(run, [])
    delivery = procs.interrupt_run(run)
    assert delivery.delivered, delivery.detail
    info, _ = await asyncio.wait_for(exited, 20)
    assert info.exit_code == 130
    assert procs.interrupt_run(run) == procs.Delivery(False, f"agent pid {run.pid} has already exited")


# ---------------------------------------------------------------------------------------- fencing


async def test_fencing_ends_the_run_when_the_lease_deadline_passes_and_not_before(
        tmp_path: Path, containment: str, fifos: tuple[Fifo, Path]) -> None:
    ready, _go_path = fifos
    lease = tmp_path / "lease"
    run = _spawn(tmp_path, _sh('sleep 1000 & echo "$!" > "$READY"; wait'), lease_file=lease, stop_grace=1.0)
    child = int(await ready.line())
    child_ticks = procfs.start_ticks(child)
    assert child_ticks is not None
    exited = _watch(run, [(child, child_ticks)])
    # No lease file yet: no fencing (the monitor checks every second: this spans at least one check).
    await asyncio.sleep(1.2)
    assert not exited.done()
    # The supervisor renews: each renewal moves the deadline; the run goes on.
    for _ in range(3):
        deadline = time.time() + 1.0
        procs.write_lease_deadline(lease, deadline)
        assert procs.read_lease_deadline(lease) == pytest.approx(deadline, abs=0.001)
        await asyncio.sleep(0.4)
        assert not exited.done(), "fenced although the lease was renewed in time"
    # The supervisor freezes: no more renewals.
    info, alive = await asyncio.wait_for(exited, 20)
    assert alive == []
    assert info.fenced and "lease was not renewed in time" in info.error and "fenced" in info.describe()
    # Never before the deadline (as written: ms precision; exited_at is truncated to the ms).
    assert info.exited_at.timestamp() >= round(deadline, 3) - 0.001
    assert info.signal == signal.SIGTERM and info.leftovers == 1 and not info.stopped
    assert "fencing: ending the run" in procs.tail_text(run.log_path)
    _assert_cgroup_removed(run)


async def test_fencing_in_the_warm_monitor(tmp_path: Path, warm: procs.WarmMonitor | None) -> None:
    lease = tmp_path / "lease"
    procs.write_lease_deadline(lease, time.time() - 1)  # already passed: the first check fences
    run = _spawn(tmp_path, ["/bin/sleep", "1000"], warm=warm, lease_file=lease)
    info, _ = await asyncio.wait_for(_watch(run, []), 20)
    assert info.fenced and info.signal == signal.SIGTERM


# ---------------------------------------------------------------------------------------- descriptors >= 1024


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Raise RLIMIT_NOFILE and hold > 1024 descriptors, so every new one is >= 1024 (select() fails there)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(1100)]
    try:
        probe = os.dup(0)
        os.close(probe)
        assert probe >= 1024
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_spawn_watch_and_stop_with_descriptors_above_1024(tmp_path: Path, many_fds: None) -> None:
    w = procs.WarmMonitor(tmp_path, supervisor_id=SUP)  # its pipes are >= 1024 too
    w.prime()
    try:
        for number, use in ((1, None), (2, w)):
            run = _spawn(tmp_path, [PY, "-c", "import sys; sys.stderr.write('up\\n'); sys.exit(5)"], warm=use,
                         number=number)
            info, _ = await asyncio.wait_for(_watch(run, []), 20)
            assert info.exit_code == 5 and "up" in procs.tail_text(run.log_path)
        run = _spawn(tmp_path, ["/bin/sleep", "1000"], number=3)
        exited = _watch(run, [])
        assert run.pidfd >= 1024
        assert await procs.stop_group(run, grace=5.0) == []
        assert (await asyncio.wait_for(exited, 20))[0].signal == signal.SIGTERM
    finally:
        w.close()


# ---------------------------------------------------------------------------------------- failure classes


def test_spawn_errors_say_whether_retrying_can_help(tmp_path: Path) -> None:
    with pytest.raises(procs.SpawnError) as missing:
        procs.spawn(tmp_path, CHAT, 1, ["no-such-agent-xyz"], dict(os.environ), str(tmp_path))
    assert missing.value.permanent and missing.value.kind == "not_found" and missing.value.errno == errno.ENOENT
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with pytest.raises(procs.SpawnError) as not_exec:
        procs.spawn(tmp_path, CHAT, 2, [str(plain)], dict(os.environ), str(tmp_path))
    assert not_exec.value.permanent and not_exec.value.kind == "not_executable"
    with pytest.raises(procs.SpawnError) as no_cwd:
        procs.spawn(tmp_path, CHAT, 3, [PY, "-c", "pass"], dict(os.environ), str(tmp_path / "gone"))
    assert no_cwd.value.permanent and no_cwd.value.kind == "bad_cwd"
    # Nothing was started for any of them.
    assert not procs.live_processes_of_runs(tmp_path, CHAT, [procs.RunIdentity(number=n) for n in (1, 2, 3)],
                                            scan_environ=True)


@pytest.mark.parametrize("content, code", [("#!/nonexistent/interpreter\n", errno.ENOENT),
                                           ("echo no shebang line\n", errno.ENOEXEC)])
async def test_exec_failure_in_the_monitor_is_recorded_with_its_errno(
        tmp_path: Path, warm: procs.WarmMonitor | None, content: str, code: int) -> None:
    script = tmp_path / "agent.sh"
    script.write_text(content)
    script.chmod(0o755)
    run = _spawn(tmp_path, [str(script)], warm=warm)
    info, _ = await asyncio.wait_for(_watch(run, []), 20)
    assert info.exit_code == 127 and info.exec_errno == code and info.permanent
    assert info.error.startswith("exec failed:")


# ---------------------------------------------------------------------------------------- cgroups of killed monitors


async def test_cgroups_left_by_killed_monitors_are_cleaned_up(tmp_path: Path, containment: str) -> None:
    """kill -9 of a monitor and its agent leaves an empty run cgroup: the chat's next spawn removes it,
    and remove_stale_cgroups removes any (for `wgs down` and test harnesses)."""
    if containment != "cgroup":
        assert procs.remove_stale_cgroups(tmp_path) == []
        return

    async def killed_run(chat: str, number: int) -> procs.Run:
        run = _spawn(tmp_path, ["/bin/sleep", "1000"], chat=chat, number=number)
        exited = _watch(run, [])
        os.kill(run.monitor_pid, signal.SIGKILL)
        await asyncio.wait_for(exited, 20)
        os.kill(run.pid, signal.SIGKILL)
        assert procfs.wait_exited(run.pid, run.start_ticks, 10)
        assert run.cgroup is not None and run.cgroup.is_dir()
        return run

    first = await killed_run(CHAT, 1)
    second = _spawn(tmp_path, ["/bin/sleep", "1000"], number=2)
    assert first.cgroup is not None and not first.cgroup.exists()  # removed by the chat's next spawn
    exited = _watch(second, [])
    assert await procs.stop_group(second, grace=5.0) == []
    await asyncio.wait_for(exited, 20)
    other = await killed_run(".chat-2", 1)
    assert procs.remove_stale_cgroups(tmp_path, wait=5.0) == [other.cgroup]
