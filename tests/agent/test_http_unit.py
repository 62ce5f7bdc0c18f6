"""The native agent's HTTP logic, against the fake OpenAI-compatible server (real HTTP on loopback)."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI, Reply
from tests.fakes.tls import self_signed
from wgs.agent.context import (
    ServerWindow,
    choose_window,
    estimate_tokens,
    fit_history,
    reply_budget,
    stated_numbers,
)
from wgs.agent.errors import (
    EXIT_AUTH,
    EXIT_UNKNOWN_MODEL,
    FAIL_AUTH,
    FAIL_RATE_LIMITED,
    FAIL_REJECTED,
    FAIL_SERVER,
    FAIL_TIMEOUT,
    FAIL_TOO_LARGE,
    AgentFatal,
    AnswerFailed,
)
from wgs.agent.openai_http import (
    ContextOverflow,
    EndpointUnavailable,
    GenerationSettings,
    HttpSettings,
    OpenAIClient,
    backoff_delay,
    collect_sse,
    make_ssl_context,
    model_matches,
    normalize_base_url,
    parse_retry_after,
    strip_provider_prefix,
)

GEN = GenerationSettings(max_tokens=256)


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


def test_ollama_tags_match_as_ollama_resolves_them() -> None:
    served = ["qwen3-coder:latest", "llama3.1:8b", "library/mistral:latest"]
    assert model_matches("qwen3-coder", served) == "qwen3-coder:latest"
    assert model_matches("qwen3-coder:latest", served) == "qwen3-coder:latest"
    assert model_matches("llama3.1:8b", served) == "llama3.1:8b"
    assert model_matches("llama3.1", served) is None  # llama3.1 means llama3.1:latest, not :8b
    assert model_matches("library/mistral", served) == "library/mistral:latest"
    assert model_matches("gpt-4o", ["gpt-4o:latest"]) == "gpt-4o:latest"
    assert model_matches("m", ["m"]) == "m"


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


def test_window_comes_from_the_server_else_flag_else_a_conservative_default() -> None:
    exact = ServerWindow(2048, "llama.cpp GET /props n_ctx")
    assert choose_window(exact, 32768).tokens == 2048 and choose_window(exact, 32768).source == "server"
    assert choose_window(None, 8192).source == "flag" and choose_window(None, 8192).tokens == 8192
    default = choose_window(None, 0)
    assert default.source == "default" and default.tokens == 4096
    bound = ServerWindow(2048, "model maximum", exact=False)  # Ollama's model_info: only an upper bound
    assert choose_window(bound, 8192).tokens == 2048
    assert choose_window(ServerWindow(262144, "max", exact=False), 8192).source == "flag"
    assert reply_budget(2048, 1024) == 1024 and reply_budget(1024, 4096) == 768


def test_estimate_over_counts_rather_than_under() -> None:
    english = "The quick brown fox jumps over the lazy dog, again and again. " * 20
    assert estimate_tokens(english) >= len(english) / 3  # real tokenizers: ~3-4 chars per token here
    assert estimate_tokens("日本語のテキスト" * 10) >= 80  # ~1 token per CJK character


async def count_words(text: str) -> int:
    return len(text.split())


async def test_fit_keeps_system_and_newest_and_the_most_recent_whole_turns() -> None:
    turns = [(f"question {i} " + "x " * 40, f"answer {i} " + "y " * 40) for i in range(50)]
    fitted = await fit_history("sys", turns, "the last question", window=1024, max_tokens=256, count=count_words)
    msgs = fitted.messages
    assert msgs[0] == {"role": "system", "content": "sys"}
    assert msgs[-1] == {"role": "user", "content": "the last question"}
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * fitted.turns_kept
    assert msgs[-2]["content"].startswith("answer 49") and 0 < fitted.turns_kept < 50
    assert fitted.turns_kept + fitted.turns_dropped == 50
    assert fitted.prompt_tokens <= 1024 - 256
    cut = await fit_history("sys", turns, "the last question", window=1024, max_tokens=256, count=count_words,
                            max_turns=fitted.turns_kept // 2)
    assert cut.turns_kept == fitted.turns_kept // 2 and cut.messages[-2]["content"].startswith("answer 49")


async def test_a_message_too_large_for_the_window_is_refused_not_cut() -> None:
    with pytest.raises(AnswerFailed) as refused:
        await fit_history("sys", [], "word " * 2000, window=1024, max_tokens=256, count=count_words)
    assert refused.value.kind == FAIL_TOO_LARGE
    assert "1024" in refused.value.reason and "256" in refused.value.reason


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
    with pytest.raises(ContextOverflow) as over:  # llama.cpp before PR #16486: the error as a stream event
        collect_sse(['data: {"error":{"code":500,"message":"the request exceeds the available context size",'
                     '"type":"exceed_context_size_error","n_prompt_tokens":3000,"n_ctx":2048}}'])
    assert over.value.n_ctx == 2048 and over.value.n_prompt_tokens == 3000


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


USER = [{"role": "user", "content": "x"}]


async def test_check_and_streamed_completion_with_settings_usage_and_partials() -> None:
    with FakeOpenAI(models=["qwen3-coder"], api_key="sk-unit-secret") as fake:
        c = client(fake)
        assert await c.check() == ["qwen3-coder"]
        seen: list[tuple[str, str]] = []

        async def on_delta(delta: str, text: str) -> None:
            seen.append((delta, text))

        gen = GenerationSettings(max_tokens=64, temperature=0.2, top_p=0.9, stop=("END", "STOP"))
        msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how are you"}]
        done = await c.complete(msgs, gen, on_delta=on_delta)
        await c.aclose()
        assert done.text == "echo: how are you" and done.finish_reason == "stop"
        assert (done.input_tokens, done.output_tokens) == (17, 5)  # the final usage chunk (include_usage)
        assert len(seen) > 1 and "".join(d for d, _ in seen) == done.text and seen[-1][1] == done.text
        assert done.time_to_first_chunk is not None and done.response_model == "qwen3-coder"
        req = fake.chat_requests()[0]
        assert req.authorization == "Bearer sk-unit-secret"
        assert req.body["stream"] is True and req.body["stream_options"] == {"include_usage": True}
        assert (req.body["max_tokens"], req.body["temperature"], req.body["top_p"], req.body["stop"]) == (
            64, 0.2, 0.9, ["END", "STOP"])


async def test_max_tokens_is_sent_and_obeyed() -> None:
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(text="one two six ten red big cat dog"))
        c = client(fake)
        done = await c.complete(USER, GenerationSettings(max_tokens=3))
        await c.aclose()
    assert done.text == "one two six" and done.finish_reason == "length"


async def test_check_failures_are_fatal_with_distinct_exit_codes_but_an_outage_is_not() -> None:
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
    with pytest.raises(EndpointUnavailable) as down:
        await c.check()
    assert "connection refused" in down.value.reason.lower()
    c2 = client(fake, endpoint="http://no-such-host.invalid", base_url="http://no-such-host.invalid/v1")
    with pytest.raises(EndpointUnavailable):  # DNS failure: an outage too
        await c2.check()
    await c.aclose()
    await c2.aclose()


async def test_loading_model_503_is_an_outage_at_start_and_mid_chat() -> None:
    with FakeOpenAI(models=["qwen3-coder"], server="llama.cpp") as fake:
        fake.loading = True
        c = client(fake)
        with pytest.raises(EndpointUnavailable, match="loading"):
            await c.check()
        with pytest.raises(EndpointUnavailable, match="Loading model"):
            await c.complete(USER, GEN)
        assert len(fake.chat_requests()) == 1  # not retried blindly: the caller waits
        fake.loading = False
        assert await c.check() == ["qwen3-coder"]
        await c.aclose()


async def test_429_retry_after_is_honoured_then_success() -> None:
    sleeps = Sleeps()
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(status=429, headers={"Retry-After": "2"}), Reply(status=500), Reply(status=408),
                    Reply(text="finally"))
        c = client(fake, sleeps)
        assert (await c.complete(USER, GEN)).text == "finally"
        await c.aclose()
        assert len(fake.chat_requests()) == 4
    assert sleeps.calls == [2.0, 0.5, 1.0]  # Retry-After, then exponential backoff (0.25 * 2^n)


async def test_5xx_exhausted_is_an_answer_failure_with_bounded_attempts() -> None:
    sleeps = Sleeps()
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(*[Reply(status=500, error="boom")] * 10)
        c = client(fake, sleeps)
        with pytest.raises(AnswerFailed, match=r"4 times.*HTTP 500: boom") as failed:
            await c.complete(USER, GEN)
        await c.aclose()
        assert len(fake.chat_requests()) == 4
    assert failed.value.kind == FAIL_SERVER and sleeps.calls == [0.25, 0.5, 1.0]


async def test_429_exhausted_is_rate_limited() -> None:
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(*[Reply(status=429, error="slow down")] * 4)
        c = client(fake)
        with pytest.raises(AnswerFailed) as failed:
            await c.complete(USER, GEN)
        await c.aclose()
    assert failed.value.kind == FAIL_RATE_LIMITED


@pytest.mark.parametrize(("status", "kind"), [(400, FAIL_REJECTED), (401, FAIL_AUTH), (403, FAIL_AUTH),
                                              (404, "not_found"), (422, FAIL_REJECTED)])
async def test_no_retry_on_client_errors(status: int, kind: str) -> None:
    sleeps = Sleeps()
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(status=status, error="nope"), Reply(text="should not be reached"))
        c = client(fake, sleeps)
        with pytest.raises(AnswerFailed, match=f"HTTP {status}") as failed:
            await c.complete(USER, GEN)
        await c.aclose()
        assert len(fake.chat_requests()) == 1
    assert sleeps.calls == [] and failed.value.kind == kind


@pytest.mark.parametrize("server", ["openai", "llama.cpp", "vllm"])
async def test_context_errors_are_recognised_in_each_servers_words(server: str) -> None:
    with FakeOpenAI(models=["qwen3-coder"], server=server, n_ctx=64, overflow_stream="400") as fake:
        c = client(fake)
        with pytest.raises(ContextOverflow) as over:
            await c.complete([{"role": "user", "content": "word " * 200}], GEN)
        await c.aclose()
        assert len(fake.chat_requests()) == 1  # not retried
    words = {"openai": "maximum context length is 64", "llama.cpp": "exceeds the available context size",
             "vllm": "maximum context length is 64"}[server]
    assert words in over.value.server_message and words in over.value.reason
    if server == "llama.cpp":
        assert over.value.n_ctx == 64 and over.value.n_prompt_tokens is not None


@pytest.mark.parametrize("quirk", ["empty", "error_event"])
async def test_llama_cpp_streamed_overflow_gets_the_servers_own_words(quirk: str) -> None:
    with FakeOpenAI(models=["qwen3-coder"], server="llama.cpp", n_ctx=64, overflow_stream=quirk) as fake:
        c = client(fake)
        with pytest.raises(ContextOverflow, match="exceeds the available context size") as over:
            await c.complete([{"role": "user", "content": "word " * 200}], GEN)
        await c.aclose()
        reqs = fake.chat_requests()
    assert over.value.n_ctx == 64
    if quirk == "empty":  # 200 without data: one non-streamed request gets the 400 and its words
        assert [r.body["stream"] for r in reqs] == [True, False] and "stream_options" not in reqs[1].body
    else:  # llama.cpp before PR #16486: the error is an event of the 200 stream
        assert [r.body["stream"] for r in reqs] == [True]


async def test_an_empty_stream_that_is_not_an_overflow_still_gets_its_reply() -> None:
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(empty_stream=True), Reply(text="the reply, not streamed"))
        c = client(fake)
        seen: list[str] = []

        async def on_delta(delta: str, text: str) -> None:
            seen.append(text)

        done = await c.complete(USER, GEN, on_delta=on_delta)
        await c.aclose()
        assert [r.body["stream"] for r in fake.chat_requests()] == [True, False]
    assert done.text == "the reply, not streamed" and seen == [done.text]


async def test_connection_closed_mid_reply_is_retried() -> None:
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(text="a long reply that is cut", close_mid=True), Reply(text="whole"))
        c = client(fake)
        assert (await c.complete(USER, GEN)).text == "whole"
        await c.aclose()
        assert len(fake.chat_requests()) == 2


async def test_hang_ends_in_read_timeout_without_retry() -> None:
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(hang=True), Reply(text="not reached"))
        c = client(fake, read_timeout=0.5)
        with pytest.raises(AnswerFailed, match="read timeout") as failed:
            await c.complete(USER, GEN)
        await c.aclose()
        assert len(fake.chat_requests()) == 1
    assert failed.value.kind == FAIL_TIMEOUT


async def test_connection_refused_mid_chat_is_an_outage_not_a_failure() -> None:
    with FakeOpenAI() as fake:
        port = fake.port
    sleeps = Sleeps()
    c = client(fake, sleeps, endpoint=f"http://127.0.0.1:{port}", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(EndpointUnavailable, match="unreachable: connection refused"):
        await c.complete(USER, GEN)
    await c.aclose()
    assert sleeps.calls == []  # the caller waits for the endpoint, with its own backoff


async def test_non_streaming_server_reply_is_accepted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "plain"}}]})

    c = OpenAIClient(HttpSettings(endpoint="http://x", base_url="http://x/v1", model="m"),
                     transport=httpx.MockTransport(handler))
    done = await c.complete(USER, GEN)
    assert done.text == "plain" and done.input_tokens is None
    await c.aclose()


async def test_reply_complete_at_finish_reason_even_if_the_stream_stays_open() -> None:
    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[override]
            yield b'data: {"choices":[{"delta":{"content":"done"},"finish_reason":"stop"}]}\n\n'
            await asyncio.Event().wait()  # the server never sends [DONE] nor closes

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Stream())

    c = OpenAIClient(HttpSettings(endpoint="http://x", base_url="http://x/v1", model="m"),
                     transport=httpx.MockTransport(handler))
    assert (await asyncio.wait_for(c.complete(USER, GEN), 10)).text == "done"
    await c.aclose()


async def test_discovery_per_server_and_token_counting_shapes() -> None:
    with FakeOpenAI(models=["qwen3-coder"], server="llama.cpp", n_ctx=2048) as fake:
        c = client(fake)
        await c.check()
        info = await c.discover()
        assert (info.kind, info.window, info.tokenize) == (
            "llama.cpp", ServerWindow(2048, "llama.cpp GET /props n_ctx"), True)
        assert await c.count_tokens("hello, world") == 5  # hell o , worl d
        await c.aclose()
        tok = fake.wait_path("/tokenize")
        assert tok.body == {"content": "hello, world", "add_special": False}
        assert "/props" in fake.paths()  # at the server root, not under /v1
    with FakeOpenAI(models=["qwen3-coder"], server="vllm", n_ctx=8192) as fake:
        c = client(fake)
        await c.check()
        info = await c.discover()
        assert info.kind == "vllm" and info.window is not None and info.window.tokens == 8192
        assert await c.count_tokens("hello, world") == 5  # hell o , worl d
        await c.aclose()
        assert fake.wait_path("/tokenize").body == {"model": "qwen3-coder", "prompt": "hello, world",
                                                    "add_special_tokens": False}
        assert "/props" not in fake.paths()  # vLLM said it in /v1/models already
    with FakeOpenAI(models=["qwen3-coder"], server="ollama", ollama_num_ctx=8192) as fake:
        c = client(fake)
        assert await c.check() == ["qwen3-coder:latest"]
        assert c.served_model == "qwen3-coder:latest"
        info = await c.discover()
        assert info.kind == "ollama" and info.window == ServerWindow(
            8192, "Ollama POST /api/show parameters num_ctx")
        assert await c.count_tokens("hello") is None  # Ollama has no /tokenize
        await c.aclose()
        assert fake.wait_path("/api/show").body == {"model": "qwen3-coder:latest"}
    with FakeOpenAI(models=["qwen3-coder"], server="ollama", n_ctx_train=40960) as fake:
        c = client(fake)
        await c.check()
        info = await c.discover()
        assert info.window is not None and not info.window.exact and info.window.tokens == 40960
        await c.aclose()
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        c = client(fake)
        await c.check()
        assert (await c.discover()).window is None
        await c.aclose()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make certificates")
async def test_ca_files_add_to_the_system_trust_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert_a, key_a = self_signed(tmp_path / "a")
    cert_b, key_b = self_signed(tmp_path / "b")
    # Stand-in for the system store: OpenSSL's default verify file (what truststore uses on Linux).
    monkeypatch.setenv("SSL_CERT_FILE", cert_a)
    with FakeOpenAI(models=["m"], tls=(cert_a, key_a)) as system_ca, FakeOpenAI(models=["m"], tls=(cert_b, key_b)) as own_ca:
        async with httpx.AsyncClient(verify=make_ssl_context([cert_b])) as http:
            assert (await http.get(system_ca.base_url + "/v1/models")).status_code == 200
            assert (await http.get(own_ca.base_url + "/v1/models")).status_code == 200
        async with httpx.AsyncClient(verify=make_ssl_context()) as http:
            assert (await http.get(system_ca.base_url + "/v1/models")).status_code == 200
            with pytest.raises(httpx.ConnectError) as refused:
                await http.get(own_ca.base_url + "/v1/models")
            assert "certificate verify failed" in str(refused.value)


@pytest.mark.parametrize(("message", "numbers"), [
    # vLLM (and OpenAI): prompt + max_tokens over the window
    ("This model's maximum context length is 2048 tokens. However, you requested 2100 tokens (1600 in the "
     "messages, 500 in the completion). Please reduce the length of the messages or completion.", (1600, 2048)),
    # OpenAI: the messages alone
    ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
     "Please reduce the length of the messages.", (9000, 8192)),
    # vLLM since 0.6: max_tokens too large
    ("'max_tokens' is too large: 1024. This model's maximum context length is 2048 tokens and your request has "
     "1500 input tokens (1024 > 2048 - 1500).", (1500, 2048)),
    # llama-cpp-python
    ("Requested tokens (2100) exceed context window of 2048", (2100, 2048)),
    ("Context size has been exceeded.", (None, None)),
])
def test_the_figures_a_context_error_states_in_words(message: str, numbers: tuple[int | None, int | None]) -> None:
    assert stated_numbers(message) == numbers
