"""The stack keeper against real processes: restarts, adoption, giving up, one stack per command, file modes.

Every stack here is a real `wgs up --detach` with its own state dir and 127.0.0.1:0 listen
addresses; kills are real signals; waits are on pidfds and on stack.json changes (inotify).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.cli.test_stack import (
    cli_env,
    mode,
    read_until,
    recorded,
    service_processes,
    wait_gone,
    wait_record,
    wgs,
)
from tests.harness import REPO
from wgs.cli.procs import is_alive


@contextmanager
def detached_stack(state: Path, env: dict[str, str] | None = None) -> Iterator[dict]:
    """`wgs up --detach`; yields the record; `wgs down` afterwards, asserting nothing of the state dir is left."""
    up = wgs(state, "up", "--detach", "--state-dir", str(state), env=env)
    assert up.returncode == 0, up.stderr
    try:
        yield recorded(state)
    finally:
        if (state / "run" / "stack.json").exists():
            down = wgs(state, "down", "--state-dir", str(state), env=env)
            assert down.returncode == 0, down.stdout + down.stderr
        assert service_processes(state) == []


def create_sleeper(state: Path, env: dict[str, str] | None = None) -> dict:
    created = wgs(state, "chat", "create", "--settle", "0", "--json", "--state-dir", str(state),
                  "--", "/bin/sleep", "600", env=env)
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    assert doc["state"] == "RUNNING" and is_alive(doc["pid"], None)
    return doc


def show(state: Path, chat_id: str, env: dict[str, str] | None = None) -> dict:
    res = wgs(state, "chat", "show", "--json", "--state-dir", str(state), chat_id, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def status_json(state: Path, env: dict[str, str] | None = None) -> tuple[int, dict]:
    res = wgs(state, "status", "--json", "--state-dir", str(state), env=env)
    return res.returncode, json.loads(res.stdout)


def test_a_killed_supervisor_is_restarted_on_its_address_and_adopts_the_agents(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with detached_stack(state) as record:
        chat = create_sleeper(state)
        old = record["services"]["supervisor"]
        keeper = record["keeper"]["pid"]
        os.kill(old["pid"], signal.SIGKILL)
        wait_gone(old["pid"])
        wait_record(state, lambda r: r["services"]["supervisor"]["state"] == "restarting", "supervisor restarting")

        # While the keeper is restarting it (held still here with SIGSTOP, so this does not race
        # its backoff), every command says so in one line instead of trying another address.
        os.kill(keeper, signal.SIGSTOP)
        try:
            listing = wgs(state, "chat", "list", "--state-dir", str(state))
            status = wgs(state, "status", "--state-dir", str(state))
        finally:
            os.kill(keeper, signal.SIGCONT)
        assert listing.returncode == 1
        assert listing.stderr == ("wgs: supervisor is restarting after it was killed by SIGKILL (restart 1); "
                                  "retry in a moment\n")
        assert status.returncode == 1 and "restarting" in status.stdout and "killed by SIGKILL" in status.stdout
        assert "supervisor is restarting after it was killed by SIGKILL" in status.stderr

        new = wait_record(state, lambda r: r["services"]["supervisor"]["state"] == "serving",
                          "supervisor serving again")["services"]["supervisor"]
        assert new["pid"] != old["pid"] and is_alive(new["pid"], new["start_ticks"])
        assert new["address"] == old["address"] and new["listen"] == old["listen"]  # port 0 resolved once
        assert new["restarts"] == 1
        assert new["last_exit"]["how"] == "killed by SIGKILL" and new["last_exit"]["pid"] == old["pid"]
        assert new["last_exit"]["returncode"] == -9

        code, doc = status_json(state)
        assert code == 0 and doc["serving"] is True and doc["keeper"]["alive"] is True
        row = next(r for r in doc["services"] if r["service"] == "supervisor")
        assert row["restarts"] == 1 and row["last_exit"]["how"] == "killed by SIGKILL" and row["health"] == "SERVING"
        text = wgs(state, "status", "--state-dir", str(state)).stdout
        sup_line = next(line for line in text.splitlines() if line.split()[:1] == ["supervisor"])
        assert sup_line.split()[3:5] == ["SERVING", "1"] and sup_line.endswith("killed by SIGKILL")

        # The chat created before the kill: still RUNNING, the same agent, now watched by the new supervisor.
        after = show(state, chat["id"])
        assert after["state"] == "RUNNING" and after["pid"] == chat["pid"] and is_alive(chat["pid"], None)
        assert after["restart_count"] == 0
        log = (state / "logs" / "stack.log").read_text()
        assert f"supervisor service (pid {old['pid']}) exited after" in log and "killed by SIGKILL" in log
        assert "restarting supervisor in 1s (restart 1)" in log
    assert not is_alive(chat["pid"], None)


def test_a_dead_stack_is_named_and_never_replaced_by_another_address(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with detached_stack(b) as rec_b, detached_stack(a) as rec_a:
        # The environment points at stack B, as the default address would.
        env = cli_env(a, {f"WGS_{n.upper()}_ADDR": rec_b["services"][n]["address"] for n in rec_b["services"]})
        # Stack A loses its keeper, then its supervisor: nothing restarts it.
        os.kill(rec_a["keeper"]["pid"], signal.SIGKILL)
        wait_gone(rec_a["keeper"]["pid"])
        assert all(is_alive(s["pid"], s["start_ticks"]) for s in rec_a["services"].values())  # services survive
        sup = rec_a["services"]["supervisor"]
        os.kill(sup["pid"], signal.SIGKILL)
        wait_gone(sup["pid"])

        expected = (f"wgs: supervisor (pid {sup['pid']}) of the stack in {a} is not running and no keeper "
                    f"restarts it; recover with `wgs up --state-dir {a}` (it restarts what is dead; chat agents "
                    "keep running and are adopted)\n")
        for args in (["chat", "create", "--state-dir", str(a), "--", "/bin/sleep", "600"],
                     ["chat", "list", "--state-dir", str(a)], ["sweep", "--dry-run", "--state-dir", str(a)]):
            res = wgs(a, *args, env=env)
            assert (res.returncode, res.stderr) == (1, expected), args
        # WGS_STATE_DIR alone puts the record in play as well.
        res = wgs(a, "chat", "list", env=env)
        assert res.returncode == 1 and res.stderr == expected.replace(f" --state-dir {a}", "")
        # A --state-dir without any record is refused too, unless an address variable is set explicitly.
        res = wgs(a, "chat", "list", "--state-dir", str(tmp_path / "none"), env=cli_env(a))
        assert res.returncode == 1 and res.stderr.startswith(f"wgs: no stack is recorded in {tmp_path / 'none'}")
        assert res.stderr.count("\n") == 1
        listed_b = wgs(b, "chat", "list", "--json", "--state-dir", str(b))
        assert listed_b.returncode == 0 and json.loads(listed_b.stdout) == []  # B was never touched

        status = wgs(a, "status", "--state-dir", str(a))
        assert status.returncode == 1 and f"recover with `wgs up --state-dir {a}`" in status.stderr
        assert "not running" in status.stdout  # the keeper row

        # What the hint says works: `wgs up` takes the stack over, adopting what lives.
        up = wgs(a, "up", "--detach", "--state-dir", str(a))
        assert up.returncode == 0, up.stderr
        taken = recorded(a)
        for name in ("graph", "dispatch"):
            assert taken["services"][name]["pid"] == rec_a["services"][name]["pid"]  # adopted, not restarted
        new_sup = taken["services"]["supervisor"]
        assert new_sup["pid"] != sup["pid"] and new_sup["address"] == sup["address"] and new_sup["restarts"] == 1
        assert new_sup["last_exit"]["detail"] == "died while no keeper was watching"
        assert taken["keeper"]["pid"] != rec_a["keeper"]["pid"] and is_alive(taken["keeper"]["pid"], None)
        code, doc = status_json(a)
        assert code == 0 and doc["serving"] is True and doc["hint"] is None
        assert "taking over the stack" in (a / "logs" / "stack.log").read_text()


def test_a_service_that_keeps_failing_at_start_is_given_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = cli_env(state, {"WGS_STACK_RESTART_BACKOFF_SECONDS": "0.2", "WGS_STACK_MAX_START_FAILURES": "3"})
    with detached_stack(state, env) as record:
        chat = create_sleeper(state, env)
        (state / "config.toml").write_text("this is [ not toml\n")  # dispatch refuses to start (exit 2)
        os.kill(record["services"]["dispatch"]["pid"], signal.SIGKILL)
        wait_gone(record["keeper"]["pid"])  # the keeper gives up, stops the stack and exits

        assert service_processes(state) == []  # every service and the agent were stopped
        assert not is_alive(chat["pid"], None)
        code, doc = status_json(state, env)
        assert code == 1 and doc["state"] == "failed" and doc["keeper"]["alive"] is False
        assert doc["failure"].startswith("dispatch failed 3 times in a row")
        assert "exit code 2" in doc["failure"] and "config.toml" in doc["failure"]
        rows = {r["service"]: r for r in doc["services"]}
        assert rows["dispatch"]["state"] == "failed" and rows["dispatch"]["last_exit"]["how"] == "exit code 2"
        assert rows["dispatch"]["restarts"] >= 2  # 3 failed starts in a row; the kill counts if it came early
        assert rows["graph"]["state"] == "stopped" and rows["supervisor"]["state"] == "stopped"
        res = wgs(state, "chat", "list", "--state-dir", str(state), env=env)
        assert res.returncode == 1 and res.stderr.count("\n") == 1
        assert res.stderr.startswith(f"wgs: the stack in {state} stopped: dispatch failed 3 times in a row")
        assert f"then start it with `wgs up --state-dir {state}`" in res.stderr

        # The recovery the message names works once the cause is fixed.
        (state / "config.toml").unlink()
        up = wgs(state, "up", "--detach", "--state-dir", str(state), env=env)
        assert up.returncode == 0, up.stderr
        code, doc = status_json(state, env)
        assert code == 0 and doc["state"] == "serving" and doc["failure"] is None


def test_older_stack_files_are_tightened_and_new_ones_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for sub in ("logs", "run"):
        (state / sub).mkdir(parents=True)
    os.chmod(state, 0o755)
    (state / "logs" / "graph.log").write_text("from an older stack\n")
    (state / "run" / "graph.addr").write_text("127.0.0.1:1\n")
    for path in (state / "logs" / "graph.log", state / "run" / "graph.addr"):
        os.chmod(path, 0o644)
    up = wgs(state, "up", "--detach", "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stderr
        lines = up.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("wgs: tightened file modes an older stack left wider: ")
        assert f"{state} 0755→0700" in lines[0] and "logs/graph.log 0644→0600" in lines[0]
        assert "tightened file modes" in (state / "logs" / "stack.log").read_text()
        assert mode(state) == 0o700 and mode(state / "logs") == 0o700 and mode(state / "run") == 0o700
        for path in [*state.glob("logs/*.log"), *state.glob("run/*"), state / "run" / "stack.json"]:
            assert mode(path) == 0o600, path
    finally:
        wgs(state, "down", "--state-dir", str(state))
    assert service_processes(state) == []


def test_sigterm_to_a_detached_keeper_stops_the_whole_stack(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with detached_stack(state) as record:
        chat = create_sleeper(state)
        os.kill(record["keeper"]["pid"], signal.SIGTERM)
        wait_gone(record["keeper"]["pid"])
        assert not (state / "run" / "stack.json").exists()
        assert service_processes(state) == []  # services, the agent and its monitor: nothing restarted them
        assert not is_alive(chat["pid"], None)
        log = (state / "logs" / "stack.log").read_text()
        assert "SIGTERM received; stopping the services" in log and "all services stopped" in log


def test_foreground_keep_agents_leaves_the_agent_for_the_next_up_to_adopt(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wgs.cli.main", "up", "--keep-agents", "--state-dir", str(state)], env=cli_env(state),
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        read_until(proc, "press Ctrl-C", 90)
        chat = create_sleeper(state)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "all services stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert is_alive(chat["pid"], None)  # kept, unsupervised until the next `wgs up`
    with detached_stack(state):
        again = show(state, chat["id"])
        assert again["state"] == "RUNNING" and again["pid"] == chat["pid"]
    assert not is_alive(chat["pid"], None)
