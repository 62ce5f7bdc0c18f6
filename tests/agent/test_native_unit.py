"""The native backend's policy (window, cutting, overflow, outages) against the fake servers in-thread."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.agent.recording_sink import RecordingSink
from tests.fakes.fake_openai import FakeOpenAI, Reply, prompt_tokens
from wgs.agent.conversation import Turn
from wgs.agent.errors import FAIL_CONTEXT, FAIL_TOO_LARGE, AnswerFailed
from wgs.agent.native import NativeBackend
from wgs.agent.openai_http import GenerationSettings, HttpSettings, OpenAIClient, normalize_base_url
from wgs.agent.status import (
    AnswerContext,
    ContextWindowEvent,
    EndpointBackEvent,
    EndpointWaitingEvent,
    PartialReplyEvent,
    Status,
    TokenUsageEvent,
)


class Sleeps:
    """Records the backoff delays; `then` runs on each call (e.g. to bring the endpoint back)."""

    def __init__(self, then: object = None) -> None:
        self.calls: list[float] = []
        self.then = then

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if callable(self.then):
            self.then(len(self.calls))


def backend(base: str, sleeps: Sleeps | None = None, *, flag: int = 0, max_tokens: int = 64) -> NativeBackend:
    settings = HttpSettings(endpoint=base, base_url=normalize_base_url(base), model="qwen3-coder", max_retries=2,
                            backoff_base=0.25, backoff_cap=4.0, read_timeout=5.0, connect_timeout=2.0)
    sleeps = sleeps or Sleeps()
    return NativeBackend(OpenAIClient(settings, sleep=sleeps), "sys", GenerationSettings(max_tokens=max_tokens),
                         context_window_flag=flag, sleep=sleeps)


def turns(n: int, words: int = 8) -> list[Turn]:
    return [Turn(f"q{i} " + "word " * words, f"a{i} " + "word " * words) for i in range(n)]


def history_of(messages: list[dict[str, str]]) -> list[str]:
    """The earlier turns sent (first word of each message), without the system prompt and the question."""
    return [m["content"].split()[0] for m in messages[:-1] if m["role"] in ("user", "assistant")]


@pytest.mark.parametrize(("server", "flag", "window", "source"), [
    ("llama.cpp", 8192, 2048, "server"), ("vllm", 0, 2048, "server"), ("openai", 8192, 8192, "flag"),
    ("openai", 0, 4096, "default")])
async def test_start_reports_the_window_and_where_it_comes_from(server: str, flag: int, window: int,
                                                                 source: str) -> None:
    sink = RecordingSink()
    with FakeOpenAI(models=["qwen3-coder"], server=server, n_ctx=2048) as fake:
        b = backend(fake.base_url, flag=flag)
        await b.start(Status(sink))
        await b.close()
    event = sink.of(ContextWindowEvent)[0]
    assert (event.tokens, event.source, event.max_tokens) == (window, source, 64)


async def test_history_is_cut_to_the_window_with_the_servers_token_counts() -> None:
    sink = RecordingSink()
    with FakeOpenAI(models=["qwen3-coder"], server="llama.cpp", n_ctx=400) as fake:
        b = backend(fake.base_url)
        status = Status(sink)
        await b.start(status)
        reply = await b.answer(turns(30), "now", AnswerContext("r1", status))
        await b.close()
        sent = fake.chat_requests()[0].body
        assert any(r.path == "/tokenize" for r in fake.requests)
    assert reply == "echo: now"
    msgs = sent["messages"]
    assert msgs[0] == {"role": "system", "content": "sys"} and msgs[-1] == {"role": "user", "content": "now"}
    kept = history_of(msgs)
    assert 0 < len(kept) < 60 and kept[-2:] == ["q29", "a29"]  # the most recent whole turns
    assert prompt_tokens(msgs) + sent["max_tokens"] <= 400
    usage = sink.of(TokenUsageEvent)[0]
    assert usage.source == "server" and usage.input_tokens == prompt_tokens(msgs)
    partials = sink.of(PartialReplyEvent)
    assert partials and partials[-1].text == "echo: now" and {p.request_id for p in partials} == {"r1"}


async def test_a_message_too_large_is_refused_before_sending() -> None:
    with FakeOpenAI(models=["qwen3-coder"], server="llama.cpp", n_ctx=256) as fake:
        b = backend(fake.base_url)
        status = Status(RecordingSink())
        await b.start(status)
        with pytest.raises(AnswerFailed) as refused:
            await b.answer([], "word " * 1000, AnswerContext("r1", status))
        await b.close()
        assert fake.chat_requests() == []
    assert refused.value.kind == FAIL_TOO_LARGE and "256 tokens" in refused.value.reason


async def test_an_overflow_is_cut_further_once_and_then_answered() -> None:
    # The flag says 4096 but the server holds 200: its 400 context_length_exceeded is not retried
    # blindly; the retry sends half the turns.
    with FakeOpenAI(models=["qwen3-coder"], n_ctx=200) as fake:
        b = backend(fake.base_url, flag=4096)
        status = Status(RecordingSink())
        await b.start(status)
        reply = await b.answer(turns(10), "now", AnswerContext("r1", status))
        await b.close()
        first, second = (r.body["messages"] for r in fake.chat_requests())
    assert reply == "echo: now"
    assert len(history_of(first)) == 20 and history_of(second) == history_of(first)[-10:]


async def test_an_overflow_after_the_cut_fails_with_the_servers_words() -> None:
    with FakeOpenAI(models=["qwen3-coder"], n_ctx=100) as fake:
        b = backend(fake.base_url, flag=4096)
        status = Status(RecordingSink())
        await b.start(status)
        with pytest.raises(AnswerFailed) as failed:
            await b.answer(turns(10), "now", AnswerContext("r1", status))
        await b.close()
        assert len(fake.chat_requests()) == 2
    assert failed.value.kind == FAIL_CONTEXT
    assert "This model's maximum context length is 100 tokens" in failed.value.reason


async def test_llama_cpp_empty_stream_overflow_learns_the_window_and_answers() -> None:
    # /props says 4096 but the slot holds 150 (a figure the server does not hold to): the streamed
    # request gets 200 with an empty stream, the non-streamed one the 400 with n_ctx; the agent
    # takes the server's n_ctx, cuts, and the retry fits.
    sink = RecordingSink()
    with FakeOpenAI(models=["qwen3-coder"], server="llama.cpp", n_ctx=150, props_n_ctx=4096,
                    overflow_stream="empty") as fake:
        b = backend(fake.base_url)
        status = Status(sink)
        await b.start(status)
        reply = await b.answer(turns(10), "now", AnswerContext("r1", status))
        await b.close()
        reqs = fake.chat_requests()
    assert reply == "echo: now"
    assert [r.body["stream"] for r in reqs] == [True, False, True]
    assert prompt_tokens(reqs[-1].body["messages"]) <= 150
    windows = sink.of(ContextWindowEvent)
    assert [w.tokens for w in windows] == [4096, 150] and windows[-1].source == "server"


async def test_an_outage_mid_answer_is_waited_out_and_the_request_answered() -> None:
    sink = RecordingSink()
    fake = FakeOpenAI(models=["qwen3-coder"]).start()
    port = fake.port
    revived: list[FakeOpenAI] = []

    def bring_back(calls: int) -> None:
        if calls == 3:  # down for three backoff periods, then back on the same port
            revived.append(FakeOpenAI(models=["qwen3-coder"], port=port).start())

    sleeps = Sleeps(bring_back)
    b = backend(fake.base_url, sleeps)
    status = Status(sink)
    await b.start(status)
    fake.stop()
    try:
        reply = await b.answer(turns(1), "are you there?", AnswerContext("r1", status))
    finally:
        await b.close()
        for f in revived:
            f.stop()
    assert reply == "echo: are you there?"
    assert sleeps.calls == [0.25, 0.5, 1.0]  # capped exponential backoff
    waiting = sink.of(EndpointWaitingEvent)
    # One outage: the first event opens it, each further attempt repeats it with its own next try.
    assert [w.repeat for w in waiting] == [False, True, True]
    assert all("connection refused" in w.reason and w.since == waiting[0].since for w in waiting)
    assert [w.next_attempt_at - w.at for w in waiting if w.next_attempt_at] == [
        timedelta(seconds=d) for d in sleeps.calls]
    assert len(sink.of(EndpointBackEvent)) == 1 and revived[0].chat_requests()


async def test_loading_model_at_start_is_waited_for() -> None:
    sink = RecordingSink()
    with FakeOpenAI(models=["qwen3-coder"], server="llama.cpp", n_ctx=2048) as fake:
        fake.loading = True

        def loaded(calls: int) -> None:
            if calls == 2:
                fake.loading = False

        b = backend(fake.base_url, Sleeps(loaded))
        await b.start(Status(sink))
        await b.close()
    waiting = sink.of(EndpointWaitingEvent)
    assert [w.repeat for w in waiting] == [False, True] and all("loading" in w.reason for w in waiting)
    assert sink.of(EndpointBackEvent) and sink.of(ContextWindowEvent)[0].tokens == 2048


async def test_status_reports_one_wait_per_outage_and_the_time_waited() -> None:
    sink = RecordingSink()
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    status = Status(sink, clock=lambda: now[0])
    await status.endpoint_waiting("connection refused")
    now[0] += timedelta(seconds=5)
    await status.endpoint_waiting("connection refused")  # nothing new: not sent
    await status.endpoint_waiting("connection refused", retry_in=2.0)  # the next try is news
    await status.endpoint_waiting("the model is loading")
    now[0] += timedelta(seconds=5)
    await status.endpoint_back()
    await status.endpoint_back()
    waits = sink.of(EndpointWaitingEvent)
    assert [(w.reason, w.repeat) for w in waits] == [
        ("connection refused", False), ("connection refused", True), ("the model is loading", False)]
    assert waits[1].next_attempt_at == datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC)
    assert waits[0].next_attempt_at is None
    assert waits[0].since == waits[1].since == waits[2].since == datetime(2026, 1, 1, tzinfo=UTC)
    backs = sink.of(EndpointBackEvent)
    assert len(backs) == 1 and backs[0].waited_seconds == 10.0


async def test_a_failing_sink_never_fails_the_caller() -> None:
    class Broken(RecordingSink):
        async def answer_failed(self, event: object) -> None:  # type: ignore[override]
            raise RuntimeError("store down")

    await Status(Broken()).answer_failed("r1", "timeout", "x")  # logged, not raised


async def test_vllm_prompt_plus_max_tokens_overflow_retries_with_a_max_tokens_that_fits() -> None:
    # vLLM refuses prompt + max_tokens over max_model_len (600 here). The chat template adds 120 tokens
    # that /tokenize of the bare text does not count (fake quirk template_preamble_tokens), so the
    # agent's fit is short by that much: the 400 says "(P in the messages, 450 in the completion)".
    # With nothing to cut, the one retry keeps the messages and asks for the room that is left.
    with FakeOpenAI(models=["qwen3-coder"], server="vllm", n_ctx=600, template_preamble_tokens=120) as fake:
        b = backend(fake.base_url, max_tokens=512)
        status = Status(RecordingSink())
        await b.start(status)
        reply = await b.answer([], "word " * 60, AnswerContext("r1", status))
        await b.close()
        first, second = (r.body for r in fake.chat_requests())
    assert first["max_tokens"] == 450  # 3/4 of the window, the most the agent sends
    prompt = prompt_tokens(first["messages"]) + 120
    assert second["messages"] == first["messages"] and second["max_tokens"] == 600 - prompt
    assert reply.startswith("echo: word")


async def test_when_only_the_reply_room_overflows_the_history_is_kept() -> None:
    # The same overflow with earlier turns: the server's figures say the messages fit, so the retry
    # keeps every turn and lowers max_tokens rather than dropping history.
    with FakeOpenAI(models=["qwen3-coder"], server="vllm", n_ctx=1000, template_preamble_tokens=420) as fake:
        b = backend(fake.base_url, max_tokens=500)
        status = Status(RecordingSink())
        await b.start(status)
        reply = await b.answer(turns(4), "now", AnswerContext("r1", status))
        await b.close()
        first, second = (r.body for r in fake.chat_requests())
    assert history_of(second["messages"]) == history_of(first["messages"]) and len(history_of(first["messages"])) == 8
    assert second["max_tokens"] == 1000 - prompt_tokens(first["messages"]) - 420 < first["max_tokens"]
    assert reply == "echo: now"


async def test_an_overflow_without_figures_and_nothing_to_cut_retries_with_a_recounted_max_tokens() -> None:
    # llama.cpp before its exceed_context_size_error (HTTP 500 "Context size has been exceeded.",
    # no figures) behind an OpenAI-compatible proxy: tokens are only estimated, so the agent counts
    # the prompt again, more conservatively, and asks once for the room that leaves.
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        fake.script(Reply(status=500, error="Context size has been exceeded."))
        b = backend(fake.base_url, flag=400, max_tokens=256)
        status = Status(RecordingSink())
        await b.start(status)
        reply = await b.answer([], "word " * 45, AnswerContext("r1", status))
        await b.close()
        first, second = (r.body for r in fake.chat_requests())
    assert first["max_tokens"] == 256 and 16 <= second["max_tokens"] < 256
    assert second["messages"] == first["messages"] and reply.startswith("echo: word")


async def test_a_prompt_over_the_window_with_nothing_to_cut_fails_with_the_servers_words_at_once() -> None:
    # The server's figures say the messages alone exceed its window: no max_tokens helps, no retry.
    with FakeOpenAI(models=["qwen3-coder"], n_ctx=100) as fake:
        b = backend(fake.base_url, flag=4096)
        status = Status(RecordingSink())
        await b.start(status)
        with pytest.raises(AnswerFailed) as failed:
            await b.answer([], "word " * 150, AnswerContext("r1", status))
        await b.close()
        assert len(fake.chat_requests()) == 1
    assert failed.value.kind == FAIL_CONTEXT
    assert "This model's maximum context length is 100 tokens" in failed.value.reason
