"""Chats across whole stacks, through the real CLI: `wgs down` + `wgs up` resumes what ran, and `wgs down`
of one stack never touches another stack's agents on the same database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_stack import cli_env, service_processes, wgs
from tests.harness import fresh_database, test_database_urls
from wgs.cli.procs import is_alive


def up(state: Path, env: dict[str, str]) -> None:
    res = wgs(state, "up", "--detach", "--state-dir", str(state), env=env)
    assert res.returncode == 0, res.stderr


def down(state: Path, env: dict[str, str]) -> str:
    res = wgs(state, "down", "--state-dir", str(state), env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def sleeper(state: Path, env: dict[str, str]) -> dict:
    res = wgs(state, "chat", "create", "--settle", "0", "--json", "--state-dir", str(state), "--", "sleep", "600",
              env=env)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "RUNNING" and is_alive(doc["pid"], doc["current_run"]["process_start_ticks"])
    return doc


def show(state: Path, chat_id: str, env: dict[str, str]) -> dict:
    res = wgs(state, "chat", "show", "--json", "--state-dir", str(state), chat_id, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def alive(doc: dict) -> bool:
    return is_alive(doc["pid"], doc["current_run"]["process_start_ticks"])


@pytest.mark.parametrize("db", test_database_urls())
def test_down_of_one_stack_leaves_another_stacks_agents_on_the_same_database(db: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with fresh_database(db, tmp_path) as url:
        env_a, env_b = cli_env(a, {"WGS_DATABASE_URL": url}), cli_env(b, {"WGS_DATABASE_URL": url})
        up(b, env_b)
        try:
            up(a, env_a)
            try:
                # Created through each stack; where a chat runs is the replicas' placement (by free
                # capacity): its run's files are in the state dir of the stack that runs it.
                chats = [sleeper(b, env_b), sleeper(a, env_a), sleeper(b, env_b), sleeper(a, env_a)]
                of_a = [c for c in chats if Path(c["stderr_path"]).is_relative_to(a)]
                of_b = [c for c in chats if Path(c["stderr_path"]).is_relative_to(b)]
                assert len(of_a) + len(of_b) == 4 and of_a and of_b, [(c["id"], c["supervisor_id"]) for c in chats]
            finally:
                out = down(a, env_a)
            for chat in of_a:
                assert f"({chat['id']} run #1)" in out and not alive(chat)
            for chat in of_b:
                assert f"({chat['id']} " not in out
                assert alive(chat), f"{chat['id']} of the other stack was stopped by `wgs down` of {a}"
                shown = show(b, chat["id"], env_b)
                assert shown["state"] == "RUNNING" and shown["pid"] == chat["pid"] and shown["restart_count"] == 0
            assert service_processes(a) == []
        finally:
            down(b, env_b)
        assert not any(alive(c) for c in chats)
        assert service_processes(b) == []


def test_down_then_up_resumes_a_running_chat_without_a_failure(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = cli_env(state)
    up(state, env)
    try:
        chat = sleeper(state, env)
        down(state, env)
        assert not alive(chat) and service_processes(state) == []
        up(state, env)
        again = show(state, chat["id"], env)
        assert again["state"] == "RUNNING" and alive(again) and again["run_number"] == 2
        assert again["restart_count"] == 0 and again["last_error"] == ""  # a stop by wgs, not a crash
        [before] = again["previous_runs"]
        assert before["end"] == "stopped" and "wgs down" in before["end_detail"] and before["error"] == ""
    finally:
        down(state, env)
    assert service_processes(state) == []
