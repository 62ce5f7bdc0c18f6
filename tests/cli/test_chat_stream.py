"""`wgs chat send --wait --stream` and `wgs chat attach` print a native agent's reply as the model
generates it, and the whole reply exactly once: a real stack (`wgs up --detach`) and the fake OpenAI-compatible server,
which stops in the middle of its streamed reply until the test lets it go on (a slow model, made
deterministic)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from tests.cli.test_chat_cli import chat_cli, stack  # noqa: F401  (the module's stack)
from tests.cli.test_stack import cli_env
from tests.fakes.fake_openai import FakeOpenAI, Reply
from tests.harness import REPO

MODEL = "qwen3-coder"


def read_at_least(pipe: IO[bytes], n: int, timeout: float) -> bytes:
    """Read from an unbuffered pipe until `n` bytes arrived (or EOF, or `timeout`): what a person
    watching the terminal would have seen by then."""
    got = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(pipe, selectors.EVENT_READ)
        while len(got) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            data = os.read(pipe.fileno(), n - len(got))
            if not data:
                break
            got += data
    return got


def _native_chat(state: Path, fake: FakeOpenAI) -> str:
    created = chat_cli(state, "create", "--executor", "native", "--model", MODEL, "--endpoint", fake.base_url,
                       "--settle", "0", "--json")
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["id"])


def test_send_wait_stream_prints_the_reply_as_it_is_generated_and_once(stack: Path) -> None:  # noqa: F811
    # Ends with a newline, as models' replies often do: the stored reply and what was streamed must
    # still be recognised as the same text.
    reply = "Streamed piece by piece,\nthen stored whole.\n"
    with FakeOpenAI(models=[MODEL], chunk_size=4) as fake:
        chat_id = _native_chat(stack, fake)
        try:
            fake.script(Reply(text=reply, pause_after=3))  # 3 chunks of 4 characters, then wait
            send = subprocess.Popen(
                [sys.executable, "-m", "wgs.cli.main", "chat", "send", "--state-dir", str(stack), chat_id,
                 "tell me", "--wait", "60", "--stream"],
                env=cli_env(stack), cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0,
            )
            try:
                assert send.stdout is not None
                fake.wait_paused()
                # The model is stopped mid-reply, so there is no stored reply yet: what the command
                # prints now reached it through the partial-message stream.
                early = read_at_least(send.stdout, 12, timeout=30)
                assert early == reply[:12].encode()
                history = json.loads(chat_cli(stack, "history", chat_id, "--json").stdout)
                assert [m["role"] for m in history] == ["USER"], history
                fake.resume()
                rest, err = send.communicate(timeout=60)
            finally:
                fake.resume()
                if send.poll() is None:
                    send.kill()
                    send.wait()
            assert send.returncode == 0, err
            assert (early + rest).decode() == reply  # all of it, once, nothing printed twice
            history = json.loads(chat_cli(stack, "history", chat_id, "--json").stdout)
            assert history[-1]["role"] == "ASSISTANT" and history[-1]["content"] == reply
        finally:
            chat_cli(stack, "delete", chat_id)


def test_attach_prints_the_reply_as_it_is_generated_before_it_is_stored(stack: Path) -> None:  # noqa: F811
    reply = "Attached and streaming, piece by piece."
    with FakeOpenAI(models=[MODEL], chunk_size=5) as fake:
        chat_id = _native_chat(stack, fake)
        try:
            fake.script(Reply(text=reply, pause_after=2))  # 2 chunks of 5 characters, then wait
            attach = subprocess.Popen(
                [sys.executable, "-m", "wgs.cli.main", "chat", "attach", "--state-dir", str(stack), chat_id,
                 "--wait", "60"],
                env=cli_env(stack), cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0,
            )
            try:
                assert attach.stdin is not None and attach.stdout is not None
                attach.stdin.write(b"go on\n")
                attach.stdin.flush()
                fake.wait_paused()
                # The model is stopped mid-reply: what attach prints now came from the partial stream.
                early = read_at_least(attach.stdout, 10, timeout=30)
                assert early == reply[:10].encode()
                history = json.loads(chat_cli(stack, "history", chat_id, "--json").stdout)
                assert [m["role"] for m in history] == ["USER"], history
                fake.resume()
                # communicate() closes stdin (Ctrl-D): attach waits for the outstanding reply, then exits.
                rest, err = attach.communicate(timeout=60)
            finally:
                fake.resume()
                if attach.poll() is None:
                    attach.kill()
                    attach.wait()
            assert attach.returncode == 0, err
            assert (early + rest).decode() == reply + "\n"  # the whole reply, once
            history = json.loads(chat_cli(stack, "history", chat_id, "--json").stdout)
            assert history[-1]["role"] == "ASSISTANT" and history[-1]["content"] == reply
        finally:
            chat_cli(stack, "delete", chat_id)
