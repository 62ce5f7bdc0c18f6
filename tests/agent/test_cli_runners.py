"""`wgs-agent claude` / `wgs-agent codex` as real processes driving the fake CLIs (tests/fakes/bin)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from tests.agent.conftest import ASSISTANT, SYSTEM_ERROR, AgentRunner, Chat
from tests.fakes.fake_openai import FakeOpenAI
from wgs.agent.errors import EXIT_CLI_FAILED, EXIT_CLI_MISSING

CLAUDE_ARGV = ["claude", "--print", "--input-format", "stream-json", "--output-format", "stream-json",
               "--verbose", "--dangerously-skip-permissions", "--model", "opus"]
CODEX_ARGV = ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
              "--model", "gpt-5"]


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_claude_runner_answers_in_order_with_one_process(agents: AgentRunner, chat: Chat, tmp_path: Path) -> None:
    rec = tmp_path / "claude.jsonl"
    agent = agents.start(["claude", "--chat", chat.id, "--model", "claude:opus", "--", *CLAUDE_ARGV], chat,
                         {"FAKE_CLI_RECORD": str(rec), "CLAUDECODE": "1"})
    r1, r2 = chat.send("one"), chat.send("two")
    chat.wait_answer(r2)
    answers = chat.answers()
    assert [answers[r][0].content for r in (r1, r2)] == ["claude[opus]: one", "claude[opus]: two"]
    assert answers[r1][0].role == ASSISTANT and answers[r1][0].seq < answers[r2][0].seq
    seen = records(rec)
    assert [s["prompt"] for s in seen] == ["one", "two"]  # one long-lived process keeps its own context
    assert len({json.dumps(s["argv"]) for s in seen}) == 1

    r3 = chat.send("this is_error please")
    err = chat.wait_answer(r3)
    assert err.role == SYSTEM_ERROR and "API Error: 529" in err.content
    r4 = chat.send("still there")
    assert chat.wait_answer(r4).content == "claude[opus]: still there"
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_claude_crash_posts_error_and_exits_8_and_the_next_run_resumes_the_session(
        agents: AgentRunner, chat: Chat, tmp_path: Path) -> None:
    rec = tmp_path / "claude.jsonl"
    env = {"FAKE_CLI_RECORD": str(rec), "WGS_STATE_DIR": str(tmp_path / "state")}
    agent = agents.start(["claude", "--chat", chat.id, "--model", "claude:opus"], chat, env)  # default argv
    r1 = chat.send("remember the word kiwi")
    assert chat.wait_answer(r1).role == ASSISTANT
    r2 = chat.send("now crash")
    err = chat.wait_answer(r2)
    assert err.role == SYSTEM_ERROR and "claude exited with code 1" in err.content
    assert agent.wait() == EXIT_CLI_FAILED
    assert "fake claude: API authentication failed" in agent.stderr()  # the CLI's stderr is in the run log
    assert len(agent.error_lines()) == 1
    session = records(rec)[-1]["session"]
    assert (tmp_path / "state" / "chats" / chat.id / "claude-session-id").read_text().strip() == session

    again = agents.start(["claude", "--chat", chat.id, "--model", "claude:opus"], chat, env)
    r3 = chat.send("what was the word?")
    assert chat.wait_answer(r3).role == ASSISTANT
    last = records(rec)[-1]
    argv = last["argv"]
    assert isinstance(argv, list) and argv[argv.index("--resume") + 1] == session
    assert last["prompt"] == "what was the word?"  # no transcript: claude has the session
    assert last["history"] == ["remember the word kiwi", "now crash"]
    again.signal(signal.SIGTERM)
    assert again.wait() == 0


def test_claude_without_its_session_falls_back_to_a_transcript(agents: AgentRunner, chat: Chat,
                                                                tmp_path: Path) -> None:
    rec = tmp_path / "claude.jsonl"
    env = {"FAKE_CLI_RECORD": str(rec), "WGS_STATE_DIR": str(tmp_path / "state")}
    first = agents.start(["claude", "--chat", chat.id, "--model", "claude:opus"], chat, env)
    r1 = chat.send("remember the word fig")
    assert chat.wait_answer(r1).role == ASSISTANT
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    shutil.rmtree(tmp_path / "claude-config")  # claude's sessions are gone (another machine, a wiped home)
    again = agents.start(["claude", "--chat", chat.id, "--model", "claude:opus"], chat, env)
    r2 = chat.send("what was the word?")
    assert chat.wait_answer(r2).content == "claude[opus]: what was the word?"
    last = records(rec)[-1]
    assert "--resume" not in last["argv"]  # type: ignore[operator]
    assert "remember the word fig" in str(last["prompt"]) and str(last["prompt"]).endswith("what was the word?")
    assert "could not resume session" in again.stderr()
    again.signal(signal.SIGTERM)
    assert again.wait() == 0


def test_codex_runner_one_exec_per_message(agents: AgentRunner, chat: Chat, tmp_path: Path) -> None:
    rec = tmp_path / "codex.jsonl"
    agent = agents.start(["codex", "--chat", chat.id, "--model", "codex:gpt-5", "--", *CODEX_ARGV], chat,
                         {"FAKE_CLI_RECORD": str(rec)})
    r1 = chat.send("hello")
    assert chat.wait_answer(r1).content == "codex[gpt-5]: hello"
    r2 = chat.send("please fail")
    err = chat.wait_answer(r2)
    assert err.role == SYSTEM_ERROR and "exited with code 1" in err.content and "unauthorized" in err.content
    assert "fake codex: stream error" in agent.stderr()
    r3 = chat.send("and again")
    assert chat.wait_answer(r3).content == "codex[gpt-5]: and again"
    runs = records(rec)
    assert len(runs) == 3 and all(run["argv"][-1] == "-" for run in runs)  # type: ignore[index]
    assert "hello" in str(runs[2]["prompt"]) and "please fail" not in str(runs[2]["prompt"])
    assert agent.proc.poll() is None
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_codex_on_an_openai_compatible_endpoint_key_only_in_the_environment(
        agents: AgentRunner, chat: Chat, tmp_path: Path) -> None:
    rec = tmp_path / "codex.jsonl"
    key = "sk-codex-SECRET-42"
    with FakeOpenAI(models=["qwen3-coder"], api_key=key) as fake:
        agent = agents.start(["codex", "--chat", chat.id, "--model", "nex:qwen3-coder", "--endpoint", fake.base_url],
                             chat, {"FAKE_CLI_RECORD": str(rec), "WGS_API_KEY": key})
        r1 = chat.send("hello endpoint")
        assert chat.wait_answer(r1).content == "echo: hello endpoint"  # the endpoint's reply, through codex
        req = fake.wait_path("/v1/responses")
        assert req.authorization == f"Bearer {key}" and req.body["model"] == "qwen3-coder"
        run = records(rec)[-1]
        assert run["config"] == {"model_provider": "wgs", "model_providers.wgs.name": "wgs endpoint",
                                 "model_providers.wgs.base_url": f"{fake.base_url}/v1",
                                 "model_providers.wgs.wire_api": "responses",
                                 "model_providers.wgs.env_key": "WGS_API_KEY"}
        assert run["key_seen"] == key and key not in " ".join(run["argv"])  # type: ignore[arg-type]
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
    assert key not in agent.stderr()


def test_missing_cli_exits_9_with_a_system_error(agents: AgentRunner, chat: Chat) -> None:
    """Exit 9, not 8: the supervisor fails the chat at once with the fix instead of restarting it."""
    pending = chat.send("anyone?")
    agent = agents.start(["codex", "--chat", chat.id, "--model", "gpt-5"], chat, path_fakes=False)
    assert agent.wait() == EXIT_CLI_MISSING
    lines = agent.error_lines()
    assert len(lines) == 1 and "codex CLI not found" in lines[0]
    err = chat.wait_answer(pending)
    assert err.role == SYSTEM_ERROR and "not found" in err.content
