"""What a live agent reports, and how a chat was created, as a person sees it: the real agent-side
GraphStatusSink reports through a real graph, the supervisor's GetChat carries it, and `wgs chat
show` / `wgs chat list` print it; `wgs chat create`'s generation flags reach the plan's generate line
and the model server. A real stack (`wgs up --detach`)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.cli.test_chat_cli import chat_cli, stack  # noqa: F401  (the module's stack)
from tests.cli.test_stack import recorded
from tests.fakes.fake_openai import FakeOpenAI
from tests.harness import authed_aio_channel
from wgs.agent.errors import FAIL_CONTEXT
from wgs.agent.graph_sink import GraphStatusSink
from wgs.agent.status import Status
from wgs.common.auth import AGENT
from wgs.v1 import graph_pb2_grpc

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]
REASON = "endpoint http://127.0.0.1:9 unreachable: connection refused"


def _row(listing: str, chat_id: str) -> str:
    return next(line for line in listing.splitlines() if line.startswith(chat_id + " "))


def test_what_the_agent_reports_is_what_show_and_list_print(stack: Path) -> None:  # noqa: F811
    created = chat_cli(stack, "create", "--name", "reporter", "--settle", "0", "--json", "--", *SLEEPER)
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    chat_id, run = doc["id"], doc["run_number"]
    assert doc["agent"] is None  # nothing reported yet
    graph = recorded(stack)["services"]["graph"]["address"]
    try:
        asyncio.run(_as_the_agent(stack, graph, chat_id, run))
    finally:
        chat_cli(stack, "delete", chat_id)


async def _as_the_agent(state: Path, graph: str, chat_id: str, run: int) -> None:
    """The agent of `chat_id` run `run` reports through its own sink; after each step (every report
    delivered: close() waits for them) the CLI shows what a person would see."""
    async with authed_aio_channel(graph, AGENT, chat_id=chat_id, run=run) as ch:
        sink = GraphStatusSink(graph_pb2_grpc.GraphServiceStub(ch), chat_id, run)  # type: ignore[arg-type]
        status = Status(sink)
        before = datetime.now(UTC)
        await status.context_window(2048, "server", "llama.cpp GET /props n_ctx", 512)
        await status.endpoint_waiting(REASON, 600.0)
        await status.token_usage("r-1", 1200, 80, "server")
        await status.answer_failed("r-1", FAIL_CONTEXT, "Could not answer: the request does not fit")
        await sink.close()

        shown = chat_cli(state, "show", chat_id)
        assert shown.returncode == 0, shown.stderr
        lines = {line[:12]: line[12:] for line in shown.stdout.splitlines() if len(line) > 12}
        assert lines["state       "].startswith("RUNNING")
        assert lines["waiting     "].startswith("for its endpoint since ")
        assert f": {REASON}; next try " in lines["waiting     "]
        assert " (in " in lines["waiting     "]  # the next attempt is ahead, ~600 s away
        assert lines["answer err  "].endswith(
            " context_overflow: Could not answer: the request does not fit (request r-1)")
        assert lines["context     "] == "2048 tokens (from server: llama.cpp GET /props n_ctx)"
        assert lines["tokens      "] == "1200 in, 80 out, 0 answer(s)"

        agent = json.loads(chat_cli(state, "show", chat_id, "--json").stdout)["agent"]
        assert agent["waiting_for_endpoint"]["reason"] == REASON
        since = datetime.fromisoformat(agent["waiting_for_endpoint"]["since"])
        next_at = datetime.fromisoformat(agent["waiting_for_endpoint"]["next_attempt_at"])
        assert since >= before.replace(microsecond=0) and 599 <= (next_at - since).total_seconds() <= 601
        assert (agent["last_answer_error"]["class"], agent["last_answer_error"]["request_id"]) == (
            "context_overflow", "r-1")
        assert (agent["context_window"], agent["context_window_source"], agent["context_window_detail"]) == (
            2048, "server", "llama.cpp GET /props n_ctx")
        assert (agent["input_tokens"], agent["output_tokens"], agent["answers"]) == (1200, 80, 0)
        row = _row(chat_cli(state, "list").stdout, chat_id)
        assert f"reporter: waiting for its endpoint since {agent['waiting_for_endpoint']['since']}: endpoint" in row

        await status.endpoint_back()  # the wait ends: the answer error is what is left to say
        await sink.close()
        row = _row(chat_cli(state, "list").stdout, chat_id)
        assert "reporter: last answer failed (context_overflow): Could not answer: the request" in row
        assert "waiting     " not in chat_cli(state, "show", chat_id).stdout

        await status.token_usage("r-2", 300, 20, "server")  # a later answer succeeds: no error any more
        await status.answer_succeeded("r-2", 300, 20)
        await sink.close()
        row = _row(chat_cli(state, "list").stdout, chat_id)
        assert row.rstrip().endswith(" reporter"), row
        shown = chat_cli(state, "show", chat_id).stdout
        assert "answer err" not in shown and "tokens      1500 in, 100 out, 1 answer(s)" in shown


def test_create_generation_flags_reach_the_plan_and_the_model_server(stack: Path) -> None:  # noqa: F811
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        created = chat_cli(stack, "create", "--executor", "native", "--model", "qwen3-coder", "--endpoint",
                           fake.base_url, "--max-tokens", "77", "--temperature", "0.3", "--top-p", "0.9",
                           "--stop", "END", "--context-window", "3000", "--settle", "0", "--json")
        assert created.returncode == 0, created.stderr
        chat_id = json.loads(created.stdout)["id"]
        try:
            shown = chat_cli(stack, "show", chat_id).stdout
            generate = next(line for line in shown.splitlines() if line.startswith("  generate  "))
            assert generate == ("  generate  max_tokens 77 (request), temperature 0.3 (request), top_p 0.9 (request), "
                                "stop ['END'] (request), context_window 3000 (request)")
            plan = json.loads(chat_cli(stack, "show", chat_id, "--json").stdout)["plan"]["generation"]
            assert plan["max_tokens"] == {"value": 77, "source": "request"}
            assert plan["stop"] == {"value": ["END"], "source": "request"}

            reply = chat_cli(stack, "send", chat_id, "hello", "--wait", "60")
            assert reply.returncode == 0, reply.stderr
            body = fake.chat_requests()[-1].body
            assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"]) == (77, 0.3, 0.9, ["END"])
            # The window the agent works with is the flag's, from the request (this server tells none).
            shown = chat_cli(stack, "show", chat_id).stdout
            assert "context     3000 tokens (from request: --context-window)" in shown
        finally:
            chat_cli(stack, "delete", chat_id)
