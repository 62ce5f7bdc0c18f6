"""`wgs-agent native` as a real process against a real graph service and the fake OpenAI server."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.agent.conftest import ASSISTANT, SYSTEM_ERROR, Agent, AgentRunner, Chat, OwnGraph
from tests.fakes.fake_openai import FakeOpenAI, Reply
from tests.fakes.tls import self_signed
from wgs.agent.errors import EXIT_AUTH, EXIT_GRAPH, EXIT_TLS, EXIT_UNKNOWN_MODEL, EXIT_UNREACHABLE

KEY = "sk-integration-SECRET-0123456789"


def native(chat: Chat, endpoint: str, model: str = "nex:qwen3-coder", *extra: str) -> list[str]:
    return ["native", "--chat", chat.id, "--model", model, "--endpoint", endpoint, *extra]


def assert_secret_nowhere(agent: Agent, chat: Chat) -> None:
    assert KEY not in agent.stderr()
    assert all(KEY not in m.content for m in chat.messages())


def test_messages_answered_in_order_by_one_process(agents: AgentRunner, chat: Chat) -> None:
    with FakeOpenAI(models=["qwen3-coder"], api_key=KEY) as fake:
        agent = agents.start(native(chat, fake.base_url), chat, {"WGS_API_KEY": KEY})
        r1 = chat.send("one")
        r2 = chat.send("two")
        r3 = chat.send("three")
        a3 = chat.wait_answer(r3)
        answers = chat.answers()
        assert [answers[r][0].content for r in (r1, r2, r3)] == ["echo: one", "echo: two", "echo: three"]
        assert all(len(answers[r]) == 1 and answers[r][0].role == ASSISTANT for r in (r1, r2, r3))
        assert answers[r1][0].seq < answers[r2][0].seq < a3.seq
        reqs = fake.chat_requests()
        assert len(reqs) == 3 and all(r.authorization == f"Bearer {KEY}" for r in reqs)
        assert reqs[0].body["model"] == "qwen3-coder"  # provider prefix stripped
        # The third request carries the conversation so far, in turn order.
        convo = [(m["role"], m["content"]) for m in reqs[2].body["messages"] if m["role"] != "system"]
        assert convo == [("user", "one"), ("assistant", "echo: one"), ("user", "two"),
                         ("assistant", "echo: two"), ("user", "three")]
        assert agent.proc.poll() is None
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        assert "ready" in agent.stderr()
        assert_secret_nowhere(agent, chat)


def test_killed_agent_resumes_without_loss_or_duplicates(agents: AgentRunner, chat: Chat) -> None:
    with FakeOpenAI(models=["qwen3-coder"]) as fake:
        first = agents.start(native(chat, fake.base_url + "/v1"), chat)
        r1 = chat.send("before the crash")
        chat.wait_answer(r1)
        fake.script(Reply(hang=True))  # the agent dies while this one is being generated
        r2 = chat.send("in flight")
        fake.wait_requests(2)
        first.proc.kill()
        first.wait()
        r3 = chat.send("sent while down")
        second = agents.start(native(chat, fake.base_url), chat)
        a3 = chat.wait_answer(r3)
        answers = chat.answers()
        assert {r: [m.content for m in ms] for r, ms in answers.items()} == {
            r1: ["echo: before the crash"], r2: ["echo: in flight"], r3: ["echo: sent while down"]}
        assert answers[r2][0].seq < a3.seq
        # The restarted agent asked for r2 and r3 only, never again for the answered r1.
        asked = [r.body["messages"][-1]["content"] for r in fake.chat_requests()]
        assert asked == ["before the crash", "in flight", "in flight", "sent while down"]
        history = [m["content"] for m in fake.chat_requests()[-1].body["messages"] if m["role"] != "system"]
        assert history == ["before the crash", "echo: before the crash", "in flight", "echo: in flight",
                           "sent while down"]
        second.signal(signal.SIGTERM)
        assert second.wait() == 0


def test_sigterm_mid_reply_leaves_it_for_the_next_run_and_sigint_interrupts(
        agents: AgentRunner, chat: Chat) -> None:
    with FakeOpenAI(models=["m"]) as fake:
        fake.script(Reply(hang=True))
        agent = agents.start(native(chat, fake.base_url, "m"), chat)
        r1 = chat.send("slow one")
        fake.wait_requests(1)
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        assert r1 not in chat.answers()  # not answered, not marked failed: the next run answers it
        fake.script(Reply(hang=True))
        agent2 = agents.start(native(chat, fake.base_url, "m"), chat)
        fake.wait_requests(2)
        agent2.signal(signal.SIGINT)  # what InterruptChat sends
        interrupted = chat.wait_answer(r1)
        assert interrupted.role == SYSTEM_ERROR and "interrupted" in interrupted.content
        r2 = chat.send("after the interrupt")
        assert chat.wait_answer(r2).content == "echo: after the interrupt"
        assert agent2.proc.poll() is None
        agent2.signal(signal.SIGTERM)
        assert agent2.wait() == 0


def test_request_failures_become_system_errors_and_agent_keeps_running(agents: AgentRunner, chat: Chat) -> None:
    with FakeOpenAI(models=["m"], api_key=KEY) as fake:
        agent = agents.start(native(chat, fake.base_url, "m"), chat, {
            "WGS_API_KEY": KEY, "WGS_AGENT_MAX_RETRIES": "2", "WGS_AGENT_READ_TIMEOUT_SECONDS": "1"})

        fake.script(Reply(status=404, error="no such route"))
        r = chat.send("404 please")
        m = chat.wait_answer(r)
        assert m.role == SYSTEM_ERROR and "HTTP 404" in m.content
        assert len(fake.chat_requests()) == 1  # never retried

        fake.script(Reply(status=400, error=f"context too long for key {KEY}"))
        r = chat.send("400 please")
        m = chat.wait_answer(r)
        assert m.role == SYSTEM_ERROR and "HTTP 400" in m.content and KEY not in m.content
        assert len(fake.chat_requests()) == 2

        fake.script(Reply(status=429, headers={"Retry-After": "1"}, error="slow down"))
        r = chat.send("rate limited")
        m = chat.wait_answer(r)
        assert m.role == ASSISTANT and m.content == "echo: rate limited"
        limited, retried = fake.chat_requests()[2:4]
        assert retried.at - limited.at >= 0.9  # Retry-After honoured, not the 0.05 s backoff

        fake.script(*[Reply(status=500, error="boom")] * 3)
        r = chat.send("server error")
        m = chat.wait_answer(r)
        assert m.role == SYSTEM_ERROR and "HTTP 500" in m.content and "3 times" in m.content
        assert len(fake.chat_requests()) == 7  # 1 + 2 retries, bounded

        fake.script(Reply(hang=True))
        r = chat.send("hang")
        m = chat.wait_answer(r)
        assert m.role == SYSTEM_ERROR and "read timeout" in m.content
        assert len(fake.chat_requests()) == 8  # a hang is not retried

        fake.script(Reply(status=503), Reply(text="streamed", close_mid=True))
        r = chat.send("flaky")
        assert chat.wait_answer(r).content == "echo: flaky"

        r = chat.send("still alive?")
        assert chat.wait_answer(r).content == "echo: still alive?"
        assert agent.proc.poll() is None
        assert len(chat.answers()) == 7 and all(len(v) == 1 for v in chat.answers().values())
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        assert_secret_nowhere(agent, chat)


def _closed_port() -> int:
    with FakeOpenAI() as fake:
        return fake.port


@pytest.mark.parametrize("case", ["auth", "unknown-model", "bad-model-list"])
def test_start_failures_exit_with_one_line_and_a_system_error(
        agents: AgentRunner, chat: Chat, case: str) -> None:
    pending = chat.send("hello?")
    with FakeOpenAI(models=["qwen3-coder"], api_key="the-right-key") as fake:
        if case == "auth":
            endpoint, model, key, code = fake.base_url, "qwen3-coder", KEY, EXIT_AUTH
            words = ["authentication", "401", "WGS_API_KEY"]
        elif case == "unknown-model":
            endpoint, model, key, code = fake.base_url, "nex:nope-7b", "the-right-key", EXIT_UNKNOWN_MODEL
            words = ["nope-7b", "qwen3-coder"]
        else:  # it answers, but not as an OpenAI-compatible server
            fake.models_status = 405
            endpoint, model, key, code = fake.base_url, "qwen3-coder", "the-right-key", EXIT_UNREACHABLE
            words = ["405", "GET /models"]
        agent = agents.start(native(chat, endpoint, model), chat,
                             {"WGS_API_KEY": key, "WGS_AGENT_MAX_RETRIES": "1"})
        assert agent.wait() == code
    lines = agent.error_lines()
    assert len(lines) == 1, agent.stderr()
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in agent.stderr()
    err = chat.wait_answer(pending)
    assert err.role == SYSTEM_ERROR and all(w in err.content for w in words)
    assert fake.chat_requests() == []
    assert_secret_nowhere(agent, chat)


def wait_stderr(agent: Agent, text: str, timeout: float = 20.0) -> None:
    """Block until the agent's log (a file) shows `text` (checked every 50 ms, bounded)."""
    deadline = time.monotonic() + timeout
    while text not in agent.stderr():
        assert agent.proc.poll() is None, f"the agent exited:\n{agent.stderr()}"
        assert time.monotonic() < deadline, f"no {text!r} in the agent's log:\n{agent.stderr()}"
        time.sleep(0.05)


def test_an_outage_mid_chat_is_waited_out_without_an_exit(agents: AgentRunner, chat: Chat) -> None:
    fake = FakeOpenAI(models=["m"]).start()
    port = fake.port
    agent = agents.start(native(chat, fake.base_url, "m"), chat, {"WGS_AGENT_MAX_RETRIES": "2"})
    r1 = chat.send("first")
    assert chat.wait_answer(r1).role == ASSISTANT
    fake.stop()
    r2 = chat.send("second, while the server is down")
    wait_stderr(agent, "waiting for the endpoint")
    r3 = chat.send("third, queued")
    with FakeOpenAI(models=["m"], port=port) as back:
        assert chat.wait_answer(r2).content == "echo: second, while the server is down"
        assert chat.wait_answer(r3).content == "echo: third, queued"
        assert [r.body["messages"][-1]["content"] for r in back.chat_requests()] == [
            "second, while the server is down", "third, queued"]
    assert "connection refused" in agent.stderr() and "endpoint back" in agent.stderr()
    assert all(m.role != SYSTEM_ERROR for m in chat.messages())
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_an_endpoint_down_or_loading_at_start_is_waited_for(agents: AgentRunner, chat: Chat) -> None:
    port = _closed_port()
    pending = chat.send("asked before the server is up")
    agent = agents.start(native(chat, f"http://127.0.0.1:{port}", "m"), chat)
    wait_stderr(agent, "connection refused")
    with FakeOpenAI(models=["m"], port=port, server="llama.cpp", n_ctx=2048) as fake:
        fake.loading = True  # llama-server answers 503 "Loading model" until the model is loaded
        wait_stderr(agent, "the model is loading")
        fake.loading = False
        assert chat.wait_answer(pending).content == "echo: asked before the server is up"
    assert "context window 2048 tokens (server: llama.cpp GET /props n_ctx)" in agent.stderr()
    assert agent.proc.poll() is None and chat.answers()[pending][0].role == ASSISTANT
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_an_outage_longer_than_the_wait_limit_is_fatal(agents: AgentRunner, chat: Chat) -> None:
    pending = chat.send("hello?")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    agent = agents.start(native(chat, endpoint, "m"), chat, {"WGS_AGENT_ENDPOINT_WAIT_SECONDS": "0.5"})
    assert agent.wait() == EXIT_UNREACHABLE
    lines = agent.error_lines()
    assert len(lines) == 1 and "unreachable: connection refused" in lines[0] and endpoint in lines[0]
    assert "WGS_AGENT_ENDPOINT_WAIT_SECONDS" in lines[0]
    err = chat.wait_answer(pending)
    assert err.role == SYSTEM_ERROR and "connection refused" in err.content


def test_generation_settings_are_sent_and_max_tokens_has_a_default(agents: AgentRunner, chat: Chat) -> None:
    with FakeOpenAI(models=["m"]) as fake:
        agent = agents.start(native(chat, fake.base_url, "m", "--max-tokens", "3", "--temperature", "0.5",
                                    "--top-p", "0.8", "--stop", "END", "--stop", "STOP"), chat)
        fake.script(Reply(text="one two six ten red"))
        r = chat.send("long answer please")
        assert chat.wait_answer(r).content == "one two six"  # cut at max_tokens by the server
        body = fake.chat_requests()[0].body
        assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"]) == (3, 0.5, 0.8,
                                                                                         ["END", "STOP"])
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        plain = agents.start(native(chat, fake.base_url, "m"), chat)
        r = chat.send("defaults")
        chat.wait_answer(r)
        body = fake.chat_requests()[-1].body
        assert body["max_tokens"] == 1024 and "temperature" not in body and "stop" not in body
        plain.signal(signal.SIGTERM)
        assert plain.wait() == 0
    bad = agents.start(native(chat, "http://127.0.0.1:9", "m", "--temperature", "7"), chat)
    assert bad.wait() == 2 and "--temperature 7 must be between 0 and 2" in bad.error_lines()[0]


def test_ollama_bare_model_name_is_its_latest_tag(agents: AgentRunner, chat: Chat) -> None:
    with FakeOpenAI(models=["qwen3-coder"], server="ollama", ollama_num_ctx=8192) as fake:
        assert fake.models == ["qwen3-coder:latest"]
        agent = agents.start(native(chat, fake.base_url, "nex:qwen3-coder"), chat)
        r = chat.send("hi ollama")
        assert chat.wait_answer(r).content == "echo: hi ollama"
        assert fake.chat_requests()[0].body["model"] == "qwen3-coder:latest"
        assert "context window 8192 tokens (server: Ollama POST /api/show parameters num_ctx)" in agent.stderr()
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0


def test_llama_cpp_overflow_is_cut_and_a_too_long_message_refused(agents: AgentRunner, chat: Chat) -> None:
    # The window figure is wrong (/props says 8192, the slot holds 300), and llama-server answers a
    # streamed request that is too long with 200 and an empty stream.
    with FakeOpenAI(models=["m"], server="llama.cpp", n_ctx=300, props_n_ctx=8192, overflow_stream="empty") as fake:
        agent = agents.start(native(chat, fake.base_url, "m", "--max-tokens", "64"), chat)
        r1 = chat.send("first " + "word " * 120)
        assert chat.wait_answer(r1).role == ASSISTANT
        r2 = chat.send("second " + "word " * 120)  # with the first turn it is over 300 tokens
        assert chat.wait_answer(r2).content.startswith("echo: second")
        assert [r.body["stream"] for r in fake.chat_requests()] == [True, True, False, True]
        retry = fake.chat_requests()[-1].body["messages"]
        assert [m["role"] for m in retry] == ["system", "user"]  # the earlier turn was cut
        r3 = chat.send("third " + "word " * 400)  # alone bigger than the window the server gave
        err = chat.wait_answer(r3)
        assert err.role == SYSTEM_ERROR and "too long for the model" in err.content and "300" in err.content
        assert len(fake.chat_requests()) == 4  # refused without sending
        assert "exceeds the available context size" in agent.stderr()
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0


def test_graph_unreachable_exits_7(agents: AgentRunner, chat: Chat) -> None:
    agent = agents.start(native(chat, "http://127.0.0.1:9", "m"), chat,
                         {"WGS_GRAPH_ADDR": f"127.0.0.1:{_closed_port()}", "WGS_RPC_TIMEOUT_SECONDS": "2",
                          "WGS_AGENT_GRAPH_WAIT_SECONDS": "1"})
    assert agent.wait() == EXIT_GRAPH
    lines = agent.error_lines()
    assert len(lines) == 1 and "graph service" in lines[0]
    assert "trying again" in agent.stderr()  # waited for it first


def test_bad_arguments_exit_2(agents: AgentRunner, chat: Chat) -> None:
    agent = agents.start(["native", "--chat", "chat-1", "--model", "m", "--endpoint", "http://x"], chat)
    assert agent.wait() == 2
    assert "not a chat id" in agent.error_lines()[0]
    agent = agents.start(native(chat, "ftp://x", "m"), chat)
    assert agent.wait() == 2
    assert "http(s) URL" in agent.error_lines()[0]


def test_idle_agent_exits_0(agents: AgentRunner, chat: Chat) -> None:
    with FakeOpenAI(models=["m"]) as fake:
        r = chat.send("answer me, then idle")
        started = time.monotonic()
        agent = agents.start(native(chat, fake.base_url, "m"), chat, {"WGS_AGENT_IDLE_EXIT_SECONDS": "1"})
        assert chat.wait_answer(r).role == ASSISTANT
        assert agent.wait(15) == 0
        assert time.monotonic() - started >= 1.0
        assert "idle" in agent.stderr()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a certificate")
def test_tls_verified_with_the_endpoints_ca_file_or_ca_bundle(agents: AgentRunner, chat: Chat, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with FakeOpenAI(models=["m"], tls=(cert, key)) as fake:
        assert fake.base_url.startswith("https://")
        pending = chat.send("over tls")
        agent = agents.start(native(chat, fake.base_url, "m"), chat)
        assert agent.wait() == EXIT_TLS
        lines = agent.error_lines()
        assert len(lines) == 1 and "TLS failure: certificate verify failed" in lines[0], agent.stderr()
        assert "ca_file" in lines[0] and "WGS_CA_BUNDLE" in lines[0]
        assert chat.wait_answer(pending).role == SYSTEM_ERROR
        for extra, env in ((["--ca-file", cert], {}), ([], {"WGS_CA_BUNDLE": cert})):
            trusted = agents.start(native(chat, fake.base_url, "m", *extra), chat, env)
            r = chat.send("over tls, trusted")
            assert chat.wait_answer(r).content == "echo: over tls, trusted"
            trusted.signal(signal.SIGTERM)
            assert trusted.wait() == 0
    missing = agents.start(native(chat, "https://127.0.0.1:9", "m", "--ca-file", str(tmp_path / "nope.pem")), chat)
    assert missing.wait() == 2 and "is not a readable file" in missing.error_lines()[0]


def test_sigterm_during_the_start_check_exits_0_without_waiting_for_the_request(agents: AgentRunner,
                                                                                  chat: Chat) -> None:
    """SIGTERM interrupts a hanging start check: the agent exits 0 long before the request's read
    timeout (600 s here) would have ended it."""
    with FakeOpenAI(models=["m"]) as fake:
        fake.models_hang = True
        agent = agents.start(native(chat, fake.base_url, "m"), chat, {"WGS_AGENT_READ_TIMEOUT_SECONDS": "600"})
        fake.wait_path("/v1/models")
        agent.signal(signal.SIGTERM)
        assert agent.wait(60) == 0
        assert chat.messages() == []


def wait_logged(agent: Agent, text: str, timeout: float = 30.0) -> None:
    """Until the agent has logged `text` (its log file has no change event: re-read every 20 ms)."""
    deadline = time.monotonic() + timeout
    while text not in agent.stderr():
        assert agent.proc.poll() is None, f"agent exited {agent.proc.returncode}:\n{agent.stderr()}"
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{agent.stderr()}"
        time.sleep(0.02)


def test_agent_survives_a_graph_restart(tmp_path: Path, agents: AgentRunner) -> None:
    """The message stream is re-opened after the graph service restarts; nothing is lost."""

    from tests.agent.conftest import new_chat
    from tests.harness import authed_channel
    from wgs.common.auth import SUPERVISOR

    graph = OwnGraph(tmp_path / "own-graph")
    address = graph.serve()
    try:
        with authed_channel(address, SUPERVISOR) as ch, FakeOpenAI(models=["m"]) as fake:
            chat = new_chat(ch)
            agent = agents.start(native(chat, fake.base_url, "m"), chat, {"WGS_GRAPH_ADDR": address})
            r1 = chat.send("before restart")
            assert chat.wait_answer(r1).role == ASSISTANT
            graph.stop()
            graph.serve(graph.port)
            r2 = chat.send("after restart")
            assert chat.wait_answer(r2, timeout=30).content == "echo: after restart"
            assert agent.proc.poll() is None
            assert "re-opening" in agent.stderr()
            agent.signal(signal.SIGTERM)
            assert agent.wait() == 0
    finally:
        graph.stop()


def test_a_graph_down_at_the_agents_start_is_waited_for(tmp_path: Path, agents: AgentRunner) -> None:
    """An agent started while the graph restarts (the stack keeper's restart, a rollout) waits for it
    instead of exiting 7 — a short outage costs no failed run; SIGTERM still ends it at once."""

    from tests.agent.conftest import new_chat
    from tests.harness import authed_channel
    from wgs.common.auth import SUPERVISOR

    graph = OwnGraph(tmp_path / "own-graph")
    address = graph.serve()
    try:
        with authed_channel(address, SUPERVISOR) as ch, FakeOpenAI(models=["m"]) as fake:
            chat, other = new_chat(ch), new_chat(ch)
            r1 = chat.send("asked before the outage")
            gates = [tmp_path / "gate-1", tmp_path / "gate-2"]
            for gate in gates:
                os.mkfifo(gate)
            agent = agents.start(native(chat, fake.base_url, "m"), chat, {"WGS_GRAPH_ADDR": address}, gate=gates[0])
            stopped = agents.start(native(other, fake.base_url, "m"), other, {"WGS_GRAPH_ADDR": address},
                                   gate=gates[1])
            graph.stop()  # both runs recorded: now the agents start, with the graph down
            for gate in gates:
                gate.write_text("go\n")
            wait_logged(agent, "graph unreachable while reading the chat")
            wait_logged(stopped, "graph unreachable while reading the chat")
            stopped.signal(signal.SIGTERM)
            assert stopped.wait(10) == 0 and stopped.error_lines() == []
            graph.serve(graph.port)
            assert chat.wait_answer(r1, timeout=30).content == "echo: asked before the outage"
            assert agent.proc.poll() is None and agent.error_lines() == []
            agent.signal(signal.SIGTERM)
            assert agent.wait() == 0
    finally:
        graph.stop()


def test_repeated_start_failure_without_pending_posts_one_error(agents: AgentRunner, chat: Chat) -> None:
    with FakeOpenAI(models=["m"]) as fake:
        for _ in range(2):
            agent = agents.start(native(chat, fake.base_url, "missing-model"), chat)
            assert agent.wait() == EXIT_UNKNOWN_MODEL
    errors = [m for m in chat.messages() if m.role == SYSTEM_ERROR]
    assert len(errors) == 1 and errors[0].request_id == "" and "missing-model" in errors[0].content
