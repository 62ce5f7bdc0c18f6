"""The native agent's HTTP logic, against the fake OpenAI-compatible server (real HTTP on loopback)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tests.fakes.fake_openai import FakeOpenAI, Reply
from wgs.agent.errors import EXIT_AUTH, EXIT_UNKNOWN_MODEL, EXIT_UNREACHABLE, AgentFatal, AnswerFailed
from wgs.agent.openai_http import (
    HttpSettings,
    OpenAIClient,
    backoff_delay,
    collect_sse,
    normalize_base_url,
    parse_retry_after,
    strip_provider_prefix,
    truncate_history,
)


def test_strip_provider_prefix_only_known_providers() -> None:
    assert strip_provider_prefix("nex:qwen3-coder") == "qwen3-coder"
    assert strip_provider_prefix("openrouter:qwen/qwen3-coder") == "qwen/qwen3-coder"
    assert strip_provider_prefix("vllm:meta/llama:8b") == "meta/llama:8b"
    assert strip_provider_prefix("deepseek-coder-v2:16b") == "deepseek-coder-v2:16b"
    assert strip_provider_prefix("qwen3-coder") == "qwen3-coder"


def test_normalize_base_url_appends_v1_once() -> None:
    assert normalize_base_url("https://h.example:30000") == "https://h.example:30000/v1"
    assert normalize_base_url("https://h.example:30000/") == "https://h.example:30000/v1"
    assert normalize_base_url("http://h/v1/") == "http://h/v1"
    assert normalize_base_url("http://h/api") == "http://h/api/v1"
    with pytest.raises(ValueError):
        normalize_base_url("h.example:30000")


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == pytest.approx(7)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_doubles_and_is_capped_retry_after_too() -> None:
    assert [backoff_delay(i, 0.5, 3.0) for i in range(4)] == [0.5, 1.0, 2.0, 3.0]
    assert backoff_delay(0, 0.5, 3.0, retry_after=2.0) == 2.0
    assert backoff_delay(0, 0.5, 3.0, retry_after=3600.0) == 3.0


def test_truncation_keeps_system_and_most_recent() -> None:
    system = {"role": "system", "content": "sys"}
    msgs = []
    for i in range(50):
        msgs.append({"role": "user", "content": f"question {i} " + "x" * 400})
        msgs.append({"role": "assistant", "content": f"answer {i} " + "y" * 400})
    msgs.append({"role": "user", "content": "the last question"})
    out = truncate_history(system, msgs, context_window=1000, reserve=200)
    assert out[0] == system
    assert out[-1]["content"] == "the last question"
    assert out[1]["role"] == "user"  # history starts with a user turn
    assert 3 < len(out) < len(msgs)
    total = sum(len(m["content"]) // 4 + 4 for m in out)
    assert total <= 800
    assert out[-2]["content"].startswith("answer 49")  # the most recent turns are the ones kept


def test_truncation_cuts_an_oversized_last_message() -> None:
    out = truncate_history(None, [{"role": "user", "content": "a" * 100_000 + "END"}], 1000, 200)
    assert len(out) == 1 and out[0]["content"].endswith("END") and len(out[0]["content"]) < 4000


def test_collect_sse_done_and_cut_streams() -> None:
    lines = [
        ": keep-alive", "",
        'data: {"choices":[{"delta":{"role":"assistant"}}]}',
        'data: {"choices":[{"delta":{"content":"Hel"}}]}', "",
        'data: {"choices":[{"delta":{"content":"lo"},"finish_reason":null}]}',
        "data: [DONE]",
    ]
    assert collect_sse(lines) == ("Hello", True)
    assert collect_sse(lines[:4]) == ("Hel", False)
    with pytest.raises(AnswerFailed, match="overloaded"):
        collect_sse(['data: {"error":{"message":"overloaded"}}'])


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client(fake: FakeOpenAI, sleeps: Sleeps | None = None, **kw: object) -> OpenAIClient:
    base: dict[str, object] = dict(endpoint=fake.base_url, base_url=normalize_base_url(fake.base_url),
                                   model="qwen3-coder", api_key="sk-unit-secret", max_retries=3,
                                   backoff_base=0.25, backoff_cap=5.0, read_timeout=5.0, connect_timeout=2.0)
    base.update(kw)
    return OpenAIClient(HttpSettings(**base), sleep=sleeps or Sleeps())  # type: ignore[arg-type]


async def test_check_and_streamed_completion_with_bearer() -> None:
    with FakeOpenAI(models=["qwen3-coder"], api_key="sk-unit-secret") as fake:
        c = client(fake)
        assert await c.check() == ["qwen3-coder"]
        msgs = c.build_messages("be brief", [("hi", "echo: hi")], "how are you")
        assert await c.complete(msgs) == "echo: how are you"
        await c.aclose()
        req = fake.chat_requests()[0]
        assert req.authorization == "Bearer sk-unit-secret"
        assert req.body["stream"] is True and req.body["model"] == "qwen3-coder"
        assert [m["role"] for m in req.body["messages"]] == ["system", "user", "assistant", "user"]


async def test_check_failures_have_distinct_exit_codes() -> None:
    with FakeOpenAI(models=["other-model"], api_key="right") as fake:
        c = client(fake, api_key="wrong")
        with pytest.raises(AgentFatal) as auth:
            await c.check()
        assert auth.value.exit_code == EXIT_AUTH and "wrong" not in auth.value.reason
        await c.aclose()
        c = client(fake, api_key="right")
        with pytest.raises(AgentFatal) as unknown:
            await c.check()
        assert unknown.value.exit_code == EXIT_UNKNOWN_MODEL
        assert "qwen3-coder" in unknown.value.reason and "other-model" in unknown.value.reason
        await c.aclose()
        port = fake.port
    c = client(fake, endpoint=f"http://127.0.0.1:{port}", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(AgentFatal) as down:
        await c.check()
    assert down.value.exit_code == EXIT_UNREACHABLE and "connection refused" in down.value.reason.lower()
    await c.aclose()


async def test_429_retry_after_is_honoured_then_success() -> None:
    sleeps = Sleeps()
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(status=429, headers={"Retry-After": "2"}), Reply(status=503), Reply(text="finally"))
        c = client(fake, sleeps)
        assert await c.complete([{"role": "user", "content": "x"}]) == "finally"
        await c.aclose()
        assert len(fake.chat_requests()) == 3
    assert sleeps.calls == [2.0, 0.5]  # Retry-After, then exponential backoff (0.25 * 2^1)


async def test_5xx_exhausted_is_an_answer_failure_with_bounded_attempts() -> None:
    sleeps = Sleeps()
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(*[Reply(status=500, error="boom")] * 10)
        c = client(fake, sleeps)
        with pytest.raises(AnswerFailed, match=r"4 times.*HTTP 500: boom"):
            await c.complete([{"role": "user", "content": "x"}])
        await c.aclose()
        assert len(fake.chat_requests()) == 4
    assert sleeps.calls == [0.25, 0.5, 1.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_no_retry_on_client_errors(status: int) -> None:
    sleeps = Sleeps()
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(status=status, error="nope"), Reply(text="should not be reached"))
        c = client(fake, sleeps)
        with pytest.raises(AnswerFailed, match=f"HTTP {status}"):
            await c.complete([{"role": "user", "content": "x"}])
        await c.aclose()
        assert len(fake.chat_requests()) == 1
    assert sleeps.calls == []


async def test_connection_closed_mid_reply_is_retried() -> None:
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(text="a long reply that is cut", close_mid=True), Reply(text="whole"))
        c = client(fake)
        assert await c.complete([{"role": "user", "content": "x"}]) == "whole"
        await c.aclose()
        assert len(fake.chat_requests()) == 2


async def test_hang_ends_in_read_timeout_without_retry() -> None:
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(hang=True), Reply(text="not reached"))
        c = client(fake, read_timeout=0.5)
        with pytest.raises(AnswerFailed, match="read timeout"):
            await c.complete([{"role": "user", "content": "x"}])
        await c.aclose()
        assert len(fake.chat_requests()) == 1


async def test_connection_refused_during_run_is_fatal_after_retries() -> None:
    with FakeOpenAI() as fake:
        port = fake.port
    sleeps = Sleeps()
    c = client(fake, sleeps, endpoint=f"http://127.0.0.1:{port}", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(AgentFatal) as gone:
        await c.complete([{"role": "user", "content": "x"}])
    await c.aclose()
    assert gone.value.exit_code == EXIT_UNREACHABLE and "4 attempts" in gone.value.reason
    assert len(sleeps.calls) == 3


async def test_non_streaming_server_reply_is_accepted() -> None:
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "plain"}}]})

    c = OpenAIClient(HttpSettings(endpoint="http://x", base_url="http://x/v1", model="m"),
                     transport=httpx.MockTransport(handler))
    assert await c.complete([{"role": "user", "content": "x"}]) == "plain"
    await c.aclose()


async def test_reply_complete_at_finish_reason_even_if_the_stream_stays_open() -> None:
    import asyncio

    import httpx

    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[override]
            yield b'data: {"choices":[{"delta":{"content":"done"},"finish_reason":"stop"}]}\n\n'
            await asyncio.Event().wait()  # the server never sends [DONE] nor closes

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Stream())

    c = OpenAIClient(HttpSettings(endpoint="http://x", base_url="http://x/v1", model="m"),
                     transport=httpx.MockTransport(handler))
    assert await asyncio.wait_for(c.complete([{"role": "user", "content": "x"}]), 5) == "done"
    await c.aclose()
