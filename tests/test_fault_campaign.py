"""The fault campaign (issue 9): a real `wgs up --detach` stack, chats whose agents fail in every way
we know, and the stack itself attacked while they run — on SQLite and on PostgreSQL.

Per chat, one fault drawn at random (each kind at least once per database): a missing binary, a file
that is not executable, exit 1 at start, exit 0, SIGSEGV after writing stderr, the agent SIGKILLed,
a forking agent SIGKILLed (its children must die with it), a forking agent exiting 0 and leaving a
child, its run monitor `kill -9`ed, and a native agent whose endpoint refuses connections, hangs or
answers 500. Across the stack, at random moments between those: the supervisor `kill -9`ed (the
keeper restarts it and it adopts the agents), and the graph stopped for ~5 s and then restarted by
the keeper on the same address.

Asserted, as a user depends on it:
- every chat is explained: GetChat says its state, and every non-running chat and every ended run
  says why (last_error, the run's exit code, signal or error), in the right failure class — what
  retrying cannot fix is FAILED at once with the fix named, what it can is retried, what wgs or its
  own machinery caused is not counted against the agent; a running chat shows no old error and its
  live pid, an ended one no pid;
- a sampler scanning /proc every 20 ms never sees live processes of two runs of one chat;
- after `wgs down` (the real CLI) no process of the state dir remains (its cmdline, environ or cwd
  names it).

Seeded: the seed is printed (shown when the test fails) and `WGS_CAMPAIGN_SEED=N` replays a campaign;
`WGS_CAMPAIGN_CHATS` sets the chats per database (default 32: 20-60 s per database on a
busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cli.test_stack import cli_env, recorded, wait_gone, wait_record, wgs
from tests.fakes.fake_openai import FakeOpenAI
from tests.harness import authed_channel, fresh_database, test_database_urls
from tests.procscan import Sampler, chat_processes, processes_of
from wgs.common import procfs
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2

R = runtime_pb2
SEED_VAR = "WGS_CAMPAIGN_SEED"
CHATS = int(os.environ.get("WGS_CAMPAIGN_CHATS", "32"))
OUTAGE_SECONDS = 5.0  # how long the graph stays stopped
SETTLE_SECONDS = 45.0  # bound on the wait for every chat to reach where its fault leads (~5 s when all is well)
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
MODEL = "qwen3-coder"

# The chat kinds. Agents are little shell commands, as a user's custom command chat would be.
COMMANDS: dict[str, list[str]] = {
    "exit1": ["sh", "-c", "echo campaign: cannot start >&2; exit 1"],
    "exit0": ["sh", "-c", "echo campaign: nothing to do >&2; exit 0"],
    "segv": ["sh", "-c", "echo campaign: about to crash >&2; kill -SEGV $$"],
    "killed": ["sleep", "1000"],
    "fork_killed": ["sh", "-c", "sleep 1000 & sleep 1000"],
    "fork_exit0": ["sh", "-c", "sleep 1000 & sleep 2; exit 0"],
    "monitor_killed": ["sleep", "1000"],
}
NATIVE = ("native_refused", "native_hang", "native_500")
KINDS = ("missing", "noexec", *COMMANDS, *NATIVE)
ACTED = ("killed", "fork_killed", "monitor_killed")  # the test kills something of the chat once it runs


@dataclass
class Chat:
    index: int
    kind: str
    request: chat_pb2.CreateChatRequest
    id: str = ""
    acted: dict[str, Any] = field(default_factory=dict)  # what the test killed: pids, the run


@dataclass
class Campaign:
    seed: int
    state: Path
    stub: chat_pb2_grpc.ChatServiceStub
    rng: random.Random
    chats: list[Chat] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # what happened, printed when the test fails
    errors: Counter[str] = field(default_factory=Counter)  # retried gRPC errors, by code
    timers: list[threading.Thread] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what went wrong in the fault threads
    started: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s {text}"
        self.log.append(line)
        print(line, flush=True)

    def call(self, what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """One idempotent call, retried while the stack is out (the supervisor or the graph restarting):
        only UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are retried; anything else fails."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                code = exc.code()
                self.errors[code.name] += 1
                if code not in RETRYABLE or time.monotonic() > deadline:
                    raise AssertionError(f"{what}: {code.name}: {exc.details()}") from None
                time.sleep(0.2)  # no event says that a restarting service serves again

    def get(self, chat: Chat) -> chat_pb2.Chat:
        req = chat_pb2.GetChatRequest(chat_id=chat.id)
        return self.call(f"GetChat {chat.id}", lambda: self.stub.GetChat(req, timeout=10).chat)

    def list(self) -> dict[str, chat_pb2.Chat]:
        req = chat_pb2.ListChatsRequest(include_ended=True, page_size=1000)
        resp = self.call("ListChats", lambda: self.stub.ListChats(req, timeout=15))
        return {c.id: c for c in resp.chats}


# -- the plan ---------------------------------------------------------------------------------------


def plan(rng: random.Random, n: int, tmp: Path, endpoints: dict[str, str]) -> tuple[list[Chat], list[tuple[str, int]]]:
    """The chats (each kind at least once, the rest drawn from the cheap kinds: a native agent is a
    Python process) and the order of events: ("create", i), ("act", i) after its create, and the two
    stack faults at random places."""
    kinds = list(KINDS) + rng.choices([k for k in KINDS if k not in NATIVE], k=max(0, n - len(KINDS)))
    rng.shuffle(kinds)
    noexec = tmp / "not-executable.sh"
    noexec.write_text("#!/bin/sh\nexec sleep 1000\n")
    noexec.chmod(0o644)
    chats = []
    for i, kind in enumerate(kinds):
        req = chat_pb2.CreateChatRequest(name=f"{kind}-{i}", request_id=f"campaign-{i}")
        if kind == "missing":
            req.command.extend([str(tmp / f"no-such-agent-{i}"), "--serve"])
        elif kind == "noexec":
            req.command.append(str(noexec))
        elif kind in NATIVE:
            req.executor, req.model, req.endpoint = "native", MODEL, endpoints[kind]
        else:
            req.command.extend(COMMANDS[kind])
        chats.append(Chat(i, kind, req))
    events: list[tuple[str, int]] = [("create", c.index) for c in chats]
    for c in chats:
        if c.kind in ACTED:
            after = events.index(("create", c.index)) + 1
            events.insert(rng.randint(after, len(events)), ("act", c.index))
    for fault in ("kill-supervisor", "stop-graph"):
        events.insert(rng.randint(2, len(events) - 2), (fault, -1))
    return chats, events


# -- faults -----------------------------------------------------------------------------------------


def wait_running(camp: Campaign, chat: Chat, extra: Callable[[chat_pb2.Chat], bool] = lambda c: True,
                 timeout: float = 60.0) -> chat_pb2.Chat:
    """GetChat until the chat's agent runs (and `extra` holds); a fault may be delaying it. "Runs":
    the recorded process lives and carries its run's marker — the pid is recorded at the monitor's
    fork, and the marker comes with the exec of the agent a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        got = camp.get(chat)
        run = got.runtime.current_run
        if got.runtime.state == R.RUNTIME_STATE_RUNNING and procfs.is_alive(run.pid, run.process_start_ticks) \
                and procfs.environ_has(run.pid, marker(camp.state, chat.id, run.number)) and extra(got):
            return got
        assert time.monotonic() < deadline, f"{chat.kind} {chat.id} never ran: {got.runtime}"
        time.sleep(0.1)


def marker(state: Path, chat_id: str, number: int) -> str:
    return f"WGS_RUN_ID={state.resolve()}/chats/{chat_id}/run-{number}"


def act(camp: Campaign, chat: Chat) -> None:
    """Kill what the chat's fault says, after proving what the process is (pid, start ticks, and its
    environment naming this chat's run, or its argv naming a run monitor of this state dir)."""
    if chat.kind == "fork_killed":  # its child must exist, or there is nothing to leave behind
        got = wait_running(camp, chat, lambda c: bool(procfs.descendants(c.runtime.current_run.pid)))
    else:
        got = wait_running(camp, chat)
    run = got.runtime.current_run
    assert procfs.environ_has(run.pid, marker(camp.state, chat.id, run.number)), run
    chat.acted = {"run": run.number, "agent": (run.pid, run.process_start_ticks),
                  "children": procfs.descendants(run.pid)}
    if chat.kind == "monitor_killed":
        argv = procfs.cmdline(run.monitor_pid) or []
        assert any(a.endswith("runmon.py") for a in argv) and str(camp.state.resolve()) in argv, argv
        chat.acted["monitor"] = (run.monitor_pid, run.monitor_start_ticks)
        assert procfs.signal_process(run.monitor_pid, run.monitor_start_ticks, signal.SIGKILL)
        camp.note(f"kill -9 run monitor {run.monitor_pid} of {chat.id} run {run.number} (agent {run.pid})")
    else:
        assert procfs.signal_process(run.pid, run.process_start_ticks, signal.SIGKILL)
        camp.note(f"kill -9 agent {run.pid} of {chat.id} run {run.number} ({chat.kind}; "
                  f"children {[p for p, _ in chat.acted['children']]})")


def kill_supervisor(camp: Campaign) -> None:
    """kill -9 the supervisor a moment later (0-0.3 s), from another thread: it may die in the middle
    of the next event (a CreateChat mid-spawn, a restart); the keeper restarts it and it adopts."""
    sup = recorded(camp.state)["services"]["supervisor"]
    delay = camp.rng.uniform(0.0, 0.3)

    def kill() -> None:
        time.sleep(delay)  # a random moment, on purpose
        if procfs.signal_process(sup["pid"], sup["start_ticks"], signal.SIGKILL):
            camp.note(f"kill -9 supervisor {sup['pid']} (the keeper restarts it)")
        else:
            camp.failures.append(f"supervisor {sup['pid']} was not there to kill")

    timer = threading.Thread(target=kill, daemon=True)
    timer.start()
    camp.timers.append(timer)


def stop_graph(camp: Campaign) -> None:
    """Stop the graph for OUTAGE_SECONDS: the keeper is held (SIGSTOP) so it cannot restart it sooner,
    then let go; it restarts the graph on the same address. The campaign goes on meanwhile."""
    record = recorded(camp.state)
    keeper, graph = record["keeper"], record["services"]["graph"]
    assert procfs.signal_process(keeper["pid"], keeper["start_ticks"], signal.SIGSTOP)
    how = camp.rng.choice([signal.SIGTERM, signal.SIGKILL])
    assert procfs.signal_process(graph["pid"], graph["start_ticks"], how)
    camp.note(f"graph {graph['pid']} stopped ({how.name}) for {OUTAGE_SECONDS:g}s")

    def resume() -> None:
        wait_gone(graph["pid"])
        time.sleep(OUTAGE_SECONDS)  # the outage itself: a duration, not a wait for anything
        if not procfs.signal_process(keeper["pid"], keeper["start_ticks"], signal.SIGCONT):
            camp.failures.append(f"the keeper {keeper['pid']} was gone when the graph outage ended")
        camp.note("keeper resumed: it restarts the graph")

    timer = threading.Thread(target=resume, daemon=True)
    timer.start()
    camp.timers.append(timer)


def create(camp: Campaign, chat: Chat) -> None:
    resp = camp.call(f"CreateChat {chat.kind}", lambda: camp.stub.CreateChat(chat.request, timeout=30))
    chat.id = resp.chat.id
    rt = resp.chat.runtime
    camp.note(f"created {chat.id} ({chat.kind}{'' if resp.created else ', on a retry'}): "
              f"{R.RuntimeState.Name(rt.state)} {rt.last_error[:80]}")


# -- what each fault must lead to -------------------------------------------------------------------


def runs(rt: runtime_pb2.ChatRuntime) -> list[runtime_pb2.Run]:
    return [rt.current_run, *rt.previous_runs] if rt.HasField("current_run") else list(rt.previous_runs)


def settled(chat: Chat, got: chat_pb2.Chat) -> bool:
    """The chat reached where its fault leads (checked in detail by `explain`)."""
    rt = got.runtime
    running = rt.state == R.RUNTIME_STATE_RUNNING
    if chat.kind in ("missing", "noexec", "exit1", "segv"):
        return rt.state == R.RUNTIME_STATE_FAILED
    if chat.kind in ("exit0", "fork_exit0"):
        return rt.state == R.RUNTIME_STATE_EXITED
    if chat.kind in ACTED:
        return running and rt.current_run.number > chat.acted.get("run", 1 << 30)
    if chat.kind in ("native_refused", "native_500"):
        return running and rt.agent.HasField("waiting")
    return running  # native_hang: it waits for an answer (the probe times out after 30 s)


def explain_run(run: runtime_pb2.Run) -> str:
    """Why an ended run ended, or "" if its record does not say."""
    if not run.HasField("exited_at") and run.end == R.RUN_END_UNSPECIFIED:
        return ""
    if run.end == R.RUN_END_EXITED and (run.HasField("exit_code") or run.HasField("signal")):
        return f"exit {run.exit_code}" if run.HasField("exit_code") else f"signal {run.signal_name}"
    if run.end in (R.RUN_END_SPAWN_FAILED, R.RUN_END_UNKNOWN, R.RUN_END_FENCED) and run.error:
        return run.error
    if run.end == R.RUN_END_STOPPED and run.end_detail:
        return run.end_detail
    return ""


def explain(camp: Campaign, chat: Chat, got: chat_pb2.Chat) -> list[str]:
    """Everything wrong with how the chat explains itself (empty: explained, in the right class)."""
    rt, kind = got.runtime, chat.kind
    state = R.RuntimeState.Name(rt.state).removeprefix("RUNTIME_STATE_")
    bad: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            bad.append(what)

    for run in runs(rt):
        if run is not rt.current_run or rt.state != R.RUNTIME_STATE_RUNNING:
            need(explain_run(run) != "", f"run {run.number} ended without a reason: {run}")
    running = rt.state == R.RUNTIME_STATE_RUNNING
    if running:  # now, not history: the live pid, no old error
        need(rt.last_error == "", f"RUNNING but last_error {rt.last_error!r}")
        need(got.pid == rt.current_run.pid and procfs.is_alive(got.pid, rt.current_run.process_start_ticks),
             f"RUNNING but pid {got.pid} is not the live agent {rt.current_run.pid}")
    else:
        need(got.pid == 0, f"{state} but shows pid {got.pid}")
        need(rt.last_error != "" or rt.state == R.RUNTIME_STATE_EXITED, f"{state} without last_error")

    run = rt.current_run
    if kind in ("missing", "noexec"):
        words = {"missing": ("executable not found", "install the program or fix the command's path"),
                 "noexec": ("not executable", "chmod +x")}[kind]
        need(rt.state == R.RUNTIME_STATE_FAILED, f"{state}, not FAILED")
        need(all(w in rt.last_error for w in words), f"last_error {rt.last_error!r} lacks {words}")
        need("wgs chat restart" in rt.last_error, f"last_error {rt.last_error!r} does not say how to retry")
        need(run.number == 1 and rt.restart_count == 0 and not rt.previous_runs,
             f"retried: run {run.number}, restart_count {rt.restart_count}")
    elif kind in ("exit1", "segv"):
        how = "exited with code 1" if kind == "exit1" else "SIGSEGV"
        need(rt.state == R.RUNTIME_STATE_FAILED, f"{state}, not FAILED")
        need(how in rt.last_error, f"last_error {rt.last_error!r} does not say {how}")
        need(rt.restart_count >= 1 and run.number >= 2, f"not retried: run {run.number}")
        for r in runs(rt):
            ended_right = (r.exit_code == 1) if kind == "exit1" else (r.signal_name == "SIGSEGV")
            need(ended_right or r.end in (R.RUN_END_UNKNOWN, R.RUN_END_STOPPED),
                 f"run {r.number} ended otherwise: {explain_run(r)}")
            if r.end == R.RUN_END_EXITED:
                need("campaign:" in r.stderr_tail, f"run {r.number} lost its stderr: {r.stderr_tail!r}")
    elif kind in ("exit0", "fork_exit0"):
        need(rt.state == R.RUNTIME_STATE_EXITED and run.exit_code == 0 and rt.last_error == "",
             f"{state}, exit {run.exit_code if run.HasField('exit_code') else '-'}, last_error {rt.last_error!r}")
        if kind == "fork_exit0":
            need(run.leftovers_ended >= 1, f"its child was not ended with the run: leftovers {run.leftovers_ended}")
        need(chat.id not in chat_processes(state=camp.state), "a process of the exited run lives")
    elif kind in ACTED:
        killed = chat.acted.get("run")
        before = next((r for r in rt.previous_runs if r.number == killed), None)
        # The next run, or a later one: a restart whose start got no answer from the graph (it was
        # stopped for a moment) is ended and recorded as such, and the chat starts again.
        later = [r for r in rt.previous_runs if killed and r.number > killed]
        need(running and run.number > killed and all(r.end == R.RUN_END_STOPPED for r in later) if killed else False,
             f"{state}, run {run.number} after the kill of run {killed}; between: {[explain_run(r) for r in later]}")
        need(before is not None, f"run {killed} is not in previous_runs")
        pid, ticks = chat.acted.get("agent", (0, 0))
        need(not procfs.is_alive(pid, ticks), f"the agent of run {killed} (pid {pid}) still lives")
        need(not any(procfs.is_alive(p, t) for p, t in chat.acted.get("children", [])),
             f"a child of run {killed} still lives")
        if before is not None and kind == "monitor_killed":
            # Not the agent's fault: not counted; the record says the monitor died and its agent was ended.
            # (SIGKILL when the monitor was this supervisor's child; unknown after an adoption)
            # The agent ended before the restart (proven below); if the supervisor that ended it was
            # killed before recording it, its successor finds nothing of the run left and says that.
            need(before.end == R.RUN_END_UNKNOWN and "run monitor" in before.error and "died" in before.error
                 and (f"pid {pid} ended before restart" in before.error
                      or f"no process of run {killed} was left" in before.error),
                 f"run {killed} says {R.RunEnd.Name(before.end)}: {before.error!r}")
            need(rt.restart_count == 0, f"restart_count {rt.restart_count} for a killed monitor")
        elif before is not None:
            need(before.end == R.RUN_END_EXITED and before.signal_name == "SIGKILL",
                 f"run {killed} says {R.RunEnd.Name(before.end)}: {explain_run(before)}")
            need(rt.restart_count == 1, f"restart_count {rt.restart_count} after one kill")
            if kind == "fork_killed":
                need(before.leftovers_ended >= 1, f"run {killed}: leftovers_ended {before.leftovers_ended}")
    elif kind in NATIVE:
        # Adopted through the supervisor's kill and the graph's outage: still its first run.
        need(running and run.number == 1 and rt.restart_count == 0 and not rt.previous_runs,
             f"{state}, run {run.number}, restart_count {rt.restart_count}: {explain_run(run)} {rt.last_error!r}")
        want = {"native_refused": "connection refused", "native_500": "HTTP 500"}.get(kind)
        if want:
            reason = rt.agent.waiting.reason
            need(want in reason, f"waiting reason {reason!r} lacks {want!r}")
    return bad


# -- the test ---------------------------------------------------------------------------------------


@pytest.fixture
def endpoints() -> Iterator[dict[str, str]]:
    """Model endpoints that fail: nothing listening (port 1 refuses), one that never answers, one
    that answers 500 (GET /v1/models, the agent's start probe)."""
    with FakeOpenAI(models=[MODEL]) as hang, FakeOpenAI(models=[MODEL]) as five:
        hang.models_hang = True
        five.models_status = 500
        yield {"native_refused": "http://127.0.0.1:1", "native_hang": hang.base_url, "native_500": five.base_url}


@pytest.mark.timeout(200)  # 20-60 s when all is well; the bounded waits of a failing campaign fit in this
@pytest.mark.parametrize("db", test_database_urls())
def test_fault_campaign(db: str, tmp_path: Path, endpoints: dict[str, str]) -> None:
    seed = int(os.environ.get(SEED_VAR) or random.SystemRandom().randrange(1 << 32))
    print(f"fault campaign on {db}: seed {seed} (replay with {SEED_VAR}={seed})", flush=True)
    state = tmp_path / "state"
    with fresh_database(db, tmp_path) as url:
        env = cli_env(state, {
            "WGS_DATABASE_URL": url,
            "WGS_RESTART_INITIAL_BACKOFF_SECONDS": "0.2", "WGS_RESTART_MAX_BACKOFF_SECONDS": "1",
            "WGS_STOP_GRACE_SECONDS": "1", "WGS_STACK_RESTART_BACKOFF_SECONDS": "0.5",
        })
        up = wgs(state, "up", "--detach", "--state-dir", str(state), env=env)
        assert up.returncode == 0, up.stderr
        sampler = Sampler(lambda: chat_processes(state=state), interval=0.02)
        sampler.start()
        try:
            camp = run_campaign(seed, state, tmp_path, env, endpoints)
        finally:
            sampler.stop()
            down = wgs(state, "down", "--state-dir", str(state), env=env)
            left = processes_of(state)
        assert down.returncode == 0, down.stdout + down.stderr
        assert left == [], f"seed {seed}: left after `wgs down`:\n" + "\n".join(map(str, left))
        assert sampler.scans > 100 and {c.id for c in camp.chats if c.kind in ACTED} <= sampler.seen, sampler.seen
        assert sampler.doubles == [], f"seed {seed}: two runs of one chat alive at once: " + "; ".join(
            f"{chat}: {', '.join(map(str, procs))}" for chat, procs in sampler.doubles[:5])


def run_campaign(seed: int, state: Path, tmp: Path, env: dict[str, str], endpoints: dict[str, str]) -> Campaign:
    rng = random.Random(seed)
    address = recorded(state)["services"]["supervisor"]["address"]
    with authed_channel(address) as channel:
        camp = Campaign(seed, state, chat_pb2_grpc.ChatServiceStub(channel), rng)
        camp.chats, events = plan(rng, CHATS, tmp, endpoints)
        camp.note(f"{len(camp.chats)} chats: {dict(Counter(c.kind for c in camp.chats))}")
        for what, i in events:
            if what == "create":
                create(camp, camp.chats[i])
            elif what == "act":
                act(camp, camp.chats[i])
            elif what == "kill-supervisor":
                kill_supervisor(camp)
            else:
                stop_graph(camp)
        for timer in camp.timers:
            timer.join(OUTAGE_SECONDS + 65)
        assert not camp.failures, f"seed {seed}: {camp.failures}"

        # Both stack faults were repaired by the keeper, on the same addresses.
        # (the supervisor may have been killed a moment ago: wait until the keeper has restarted it)
        record = wait_record(state, lambda r: all(s["state"] == "serving" for s in r["services"].values())
                             and r["services"]["supervisor"]["restarts"] >= 1
                             and r["services"]["graph"]["restarts"] >= 1, "every service restarted and serving")
        assert record["services"]["supervisor"]["restarts"] == 1 and record["services"]["graph"]["restarts"] == 1
        assert record["services"]["supervisor"]["address"] == address

        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            shown = camp.list()
            waiting = [c for c in camp.chats if not settled(c, shown[c.id])]
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.25)  # a dozen chats change on their own timers: poll the list, bounded
        camp.note(f"settled but {[c.id for c in waiting]}; retried errors {dict(camp.errors)}")

        problems = {}
        for c in camp.chats:
            got = camp.get(c)
            bad = explain(camp, c, got)
            if bad:
                ended = [explain_run(r) or "live" for r in runs(got.runtime)]
                problems[f"{c.id} ({c.kind})"] = [*bad, f"state {R.RuntimeState.Name(got.runtime.state)}, runs {ended}"]
        assert not problems, f"seed {seed}: chats not explained:\n" + json.dumps(problems, indent=1)

    # The CLI shows the same: no pid for a chat whose agent does not live, the fix for a missing binary.
    listed = wgs(state, "chat", "list", "--all", "--json", "--state-dir", str(state), env=env)
    assert listed.returncode == 0, listed.stderr
    for doc in json.loads(listed.stdout):
        assert (doc["pid"] is not None) == (doc["state"] == "RUNNING"), doc
    missing = next(c for c in camp.chats if c.kind == "missing")
    shown_cli = wgs(state, "chat", "show", "--state-dir", str(state), missing.id, env=env)
    assert shown_cli.returncode == 0 and "install the program or fix the command's path" in shown_cli.stdout
    return camp
