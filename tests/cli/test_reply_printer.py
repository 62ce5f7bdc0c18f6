"""What `wgs chat send --wait --stream` and `wgs chat attach` print of a streamed reply: the pieces as
they come, then only what the stored reply adds — each reply once, ending with one newline."""

from __future__ import annotations

import pytest

from wgs.cli.chat import _Printer
from wgs.v1 import task_pb2

ASSISTANT = task_pb2.MESSAGE_ROLE_ASSISTANT


def piece(offset: int, text: str, request_id: str = "r1") -> task_pb2.PartialMessage:
    return task_pb2.PartialMessage(chat_id=".chat-1", request_id=request_id, offset=offset, text=text)


def stored(content: str, request_id: str = "r1") -> task_pb2.ChatMessage:
    return task_pb2.ChatMessage(chat_id=".chat-1", seq=2, role=ASSISTANT, content=content, request_id=request_id)


@pytest.mark.parametrize("reply", ["one line", "ends with a newline\n", "two\nlines\n\n"])
def test_a_fully_streamed_reply_is_printed_once(reply: str, capsys: pytest.CaptureFixture[str]) -> None:
    p = _Printer()
    p.partial(piece(0, reply[:5]))
    p.partial(piece(5, reply[5:]))
    p.final(stored(reply))
    out = capsys.readouterr().out
    assert out == (reply if reply.endswith("\n") else reply + "\n")


def test_the_stored_reply_adds_what_the_stream_had_not_shown(capsys: pytest.CaptureFixture[str]) -> None:
    p = _Printer()
    p.partial(piece(0, "Hello, "))
    p.final(stored("Hello, world.\n"))
    assert capsys.readouterr().out == "Hello, world.\n"


def test_a_piece_after_its_stored_reply_is_not_printed_again(capsys: pytest.CaptureFixture[str]) -> None:
    p = _Printer()
    p.partial(piece(0, "short"))
    p.final(stored("short"))
    p.partial(piece(0, "short"))  # the graph may hand over a queued piece after the stored reply
    assert capsys.readouterr().out == "short\n"


def test_a_restarted_reply_starts_a_new_line_and_a_differing_stored_reply_is_printed_whole(
        capsys: pytest.CaptureFixture[str]) -> None:
    p = _Printer()
    p.partial(piece(0, "first try"))
    p.partial(piece(0, "second"))  # the agent retried: the reply starts again at offset 0
    p.final(stored("something else"))  # e.g. redacted when stored
    assert capsys.readouterr().out == "first try\nsecond\nsomething else\n"


def test_joining_mid_reply_waits_for_the_stored_reply(capsys: pytest.CaptureFixture[str]) -> None:
    p = _Printer()
    p.partial(piece(10, "middle"))  # a gap: the beginning was missed
    p.final(stored("0123456789middle end"))
    assert capsys.readouterr().out == "0123456789middle end\n"
