"""`wgs trace`: one line per trace for people, span trees on request, JSON for programs — from span
files written by the OpenTelemetry SDK (tests/telemetry/spanfiles.py), and end to end from a real
stack (`wgs up --detach`, tracing on) with a native chat on the fake OpenAI-compatible server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_stack import cli_env, wgs
from tests.fakes.fake_openai import FakeOpenAI, Reply
from tests.telemetry.spanfiles import wait_spans, write_chat_day
from wgs.common import traceview


def trace_cli(state: Path, *args: str) -> tuple[int, list[str], str]:
    res = wgs(state, "trace", *args, "--state-dir", str(state))
    return res.returncode, res.stdout.splitlines(), res.stderr


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    state = tmp_path / "state"
    return state, write_chat_day(state / "traces")


def test_a_chat_is_a_few_lines_newest_last(state: tuple[Path, dict[str, str]]) -> None:
    state_dir, ids = state
    code, lines, err = trace_cli(state_dir, ".chat-1")
    assert code == 0, err
    assert lines[0].split() == ["TIME", "TRACE", "ROOT", "DURATION", "TOTAL", "STATUS", "ERROR"]
    rows = lines[1:-1]
    assert [r.split()[2] for r in rows] == [ids["create"], ids["send"], ids["send2"], ids["exit"]]
    assert "ChatService/CreateChat [supervisor]" in rows[0] and rows[0].endswith("ok")
    assert " ERROR " in rows[2] and "agent.answer: Could not answer" in rows[2]
    assert lines[-1] == ("1 trace of reads, watches and background reports not shown (GetChat); "
                         "--all lists them")


def test_all_lists_the_folded_traces_too(state: tuple[Path, dict[str, str]]) -> None:
    state_dir, ids = state
    code, lines, _ = trace_cli(state_dir, "1", "--all")
    assert code == 0
    assert [r.split()[2] for r in lines[1:]] == [ids[k] for k in ("create", "get", "send", "send2", "exit")]


def test_without_a_target_every_trace_of_the_stack_with_its_chat(state: tuple[Path, dict[str, str]]) -> None:
    state_dir, ids = state
    code, lines, _ = trace_cli(state_dir)
    assert code == 0
    assert lines[0].split()[:3] == ["TIME", "TRACE", "CHAT"]
    assert [r.split()[2] for r in lines[1:-1]] == [ids[k] for k in ("create", "send", "send2", "exit")]
    assert all(r.split()[3] == ".chat-1" for r in lines[1:-1])
    assert lines[-1].startswith("2 traces of reads") and "database" in lines[-1]


def test_last_keeps_the_newest_and_says_how_many_are_left_out(state: tuple[Path, dict[str, str]]) -> None:
    state_dir, ids = state
    code, lines, _ = trace_cli(state_dir, ".chat-1", "--last", "2")
    assert code == 0
    assert [r.split()[2] for r in lines[1:3]] == [ids["send2"], ids["exit"]]
    assert lines[3] == "2 older traces not shown; --last 0 shows all"


def test_a_trace_id_prints_its_span_tree(state: tuple[Path, dict[str, str]]) -> None:
    state_dir, ids = state
    code, lines, _ = trace_cli(state_dir, ids["send"])
    assert code == 0
    assert lines[0].startswith(f"trace {ids['send']}  ") and lines[0].endswith("total 2.00 s  ok")
    text = "\n".join(lines)
    assert "/wgs.v1.ChatService/SendMessage  [wgs-supervisor]  50.0 ms" in text
    assert "agent.answer  [wgs-agent]" in text and "gen_ai.usage.output_tokens=7" in text
    assert "url.full=http://llm:8080/v1/chat/completions" in text


def test_tree_prints_every_listed_trace_as_a_tree(state: tuple[Path, dict[str, str]]) -> None:
    state_dir, ids = state
    code, lines, _ = trace_cli(state_dir, ".chat-1", "--tree")
    assert code == 0
    heads = [line.split()[1] for line in lines if line.startswith("trace ")]
    assert heads == [ids[k] for k in ("create", "send", "send2", "exit")]
    assert any("status: killed by signal 9 (SIGKILL)" in line for line in lines)


def test_json_has_every_trace_with_its_summary_and_spans(state: tuple[Path, dict[str, str]]) -> None:
    state_dir, ids = state
    res = wgs(state_dir, "trace", ".chat-1", "--json", "--state-dir", str(state_dir))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [t["trace_id"] for t in doc] == [ids[k] for k in ("create", "get", "send", "send2", "exit")]
    get = doc[1]
    assert get["quiet"] is True and get["root"] == "/wgs.v1.ChatService/GetChat"
    assert get["spans"][0]["children"][0]["attributes"]["wgs.chat.id"] == ".chat-1"
    assert doc[3]["status"] == "error" and doc[3]["spans"][0]["kind"] == "SERVER"


def test_unknown_chat_empty_store_and_bad_target_are_one_line(tmp_path: Path,
                                                              state: tuple[Path, dict[str, str]]) -> None:
    state_dir, _ = state
    code, lines, err = trace_cli(state_dir, ".chat-7")
    assert code == 1 and lines == []
    assert err == f"wgs: no trace found for .chat-7 in {state_dir / 'traces'}\n"
    code, _, err = trace_cli(tmp_path / "empty", ".chat-1")
    assert code == 1 and err.startswith("wgs: no spans in ") and err.count("\n") == 1
    code, _, err = trace_cli(state_dir, "nope")
    assert code == 2 and err.startswith("wgs: invalid chat id 'nope'")
    code, _, err = trace_cli(state_dir, ".chat-1", "--last", "-1")
    assert code == 2 and err == "wgs: --last must be 0 (all) or more, got -1\n"


# ---- end to end ------------------------------------------------------------------------------


@pytest.fixture
def traced_stack(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    state = tmp_path / "state"
    env = cli_env(state, {"OTEL_SDK_DISABLED": "false", "OTEL_BSP_SCHEDULE_DELAY": "50"})
    up = wgs(state, "up", "--detach", "--state-dir", str(state), env=env)
    assert up.returncode == 0, up.stderr
    try:
        yield state, env
    finally:
        wgs(state, "down", "--state-dir", str(state), env=env)


def test_create_and_messages_of_a_native_chat_are_a_few_lines(traced_stack: tuple[Path, dict[str, str]]) -> None:
    state, env = traced_stack

    def cli(*args: str) -> tuple[int, str, str]:
        res = wgs(state, *args[:2], "--state-dir", str(state), *args[2:], env=env)
        return res.returncode, res.stdout, res.stderr

    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        code, out, err = cli("chat", "create", "--executor", "native", "--model", "qwen3-coder",
                             "--endpoint", fake.base_url, "--settle", "0.5", "--json")
        assert code == 0, err
        chat_id = json.loads(out)["id"]
        code, out, err = cli("chat", "send", chat_id, "hello there", "--wait", "60")
        assert (code, out) == (0, "echo: hello there\n"), err
        fake.script(Reply(status=400, error="this prompt is not allowed"))  # never retried: fails the answer
        code, _, err = cli("chat", "send", chat_id, "forbidden", "--wait", "60")
        assert code == 1 and "this prompt is not allowed" in err

    def answered_twice(spans: list[traceview.Span]) -> bool:
        answers = [s for s in spans if s.name == "agent.answer" and s.attributes.get("wgs.chat.id") == chat_id]
        return len(answers) == 2 and any(s.name == "agent.start" for s in spans)

    wait_spans(state / "traces", answered_twice, "both answers of the chat")
    code, out, err = cli("trace", chat_id)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "TRACE", "ROOT"]
    rows, note = lines[1:-1], lines[-1]
    roots = [r.split()[3] for r in rows]
    # The create, each message with the agent's answer in it, and the answer the agent stored.
    assert roots == ["ChatService/CreateChat", "ChatService/SendMessage", "GraphService/AppendMessage",
                     "ChatService/SendMessage", "GraphService/AppendMessage"], out
    assert [r.split()[9] for r in rows] == ["ok", "ok", "ok", "ERROR", "ok"], out  # after 2 durations "N ms"
    assert rows[3].endswith("agent.answer: the endpoint rejected the request (HTTP 400): this prompt is not allowed")
    assert note.startswith(f"{note.split()[0]} traces of reads, watches and background reports not shown (")
    assert "WatchChat" in note

    send_trace = rows[1].split()[2]
    code, out, err = cli("trace", send_trace)
    assert code == 0, err
    for shown in ("agent.answer  [wgs-agent]", "chat qwen3-coder  [wgs-agent]", "gen_ai.operation.name=chat",
                  "gen_ai.request.model=qwen3-coder", "gen_ai.usage.input_tokens=", "gen_ai.usage.output_tokens=",
                  "gen_ai.response.finish_reasons=stop", "http.request.method=POST",
                  f"url.full={fake.base_url}/v1/chat/completions", "server.address=127.0.0.1",
                  "http.response.status_code=200"):
        assert shown in out, shown
