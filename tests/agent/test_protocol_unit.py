"""Pure parts of the agent: conversation bookkeeping and the claude/codex output protocols."""

from __future__ import annotations

import json

from wgs.agent.cli_protocol import (
    Outcome,
    claude_event,
    claude_user_line,
    codex_reply,
    parse_json_line,
    transcript_prompt,
)
from wgs.agent.conversation import ASSISTANT, SYSTEM_ERROR, USER, Conversation, Msg, Turn
from wgs.agent.loop import fit_message
from wgs.v1 import task_pb2

SYSTEM = task_pb2.MESSAGE_ROLE_SYSTEM


def conv(*msgs: Msg) -> Conversation:
    c = Conversation()
    for m in msgs:
        c.add(m)
    return c


def test_pending_are_unanswered_users_in_order_and_duplicates_ignored() -> None:
    c = conv(Msg(1, USER, "a", "r1"), Msg(2, USER, "b", "r2"), Msg(3, ASSISTANT, "A", "r1"),
             Msg(4, USER, "c", "r3"), Msg(5, SYSTEM_ERROR, "failed", "r3"), Msg(6, USER, "d", ""))
    c.add(Msg(2, USER, "b", "r2"))  # re-delivered by a re-opened watch
    assert [m.seq for m in c.pending()] == [2, 6]
    assert c.next_pending() == Msg(2, USER, "b", "r2")
    assert c.last_seq == 6
    c.add(Msg(7, ASSISTANT, "D", "seq-6"))  # a user message without request id is keyed by its seq
    assert [m.seq for m in c.pending()] == [2]


def test_history_is_turn_ordered_and_skips_failed_turns() -> None:
    c = conv(Msg(1, USER, "a", "r1"), Msg(2, USER, "b", "r2"), Msg(3, ASSISTANT, "A", "r1"),
             Msg(4, SYSTEM, "agent restarted", ""), Msg(5, ASSISTANT, "B", "r2"),
             Msg(6, USER, "c", "r3"), Msg(7, SYSTEM_ERROR, "x", "r3"), Msg(8, USER, "d", "r4"))
    assert c.history_before(c.users[-1]) == [Turn("a", "A"), Turn("b", "B")]
    assert c.history_before(c.users[1]) == [Turn("a", "A")]


def test_claude_input_line_and_result_events() -> None:
    line = claude_user_line("hi\nthere")
    assert line.endswith("\n") and json.loads(line) == {
        "type": "user", "message": {"role": "user", "content": "hi\nthere"}}
    collected: list[str] = []
    assert claude_event({"type": "system", "subtype": "init"}, collected) is None
    assert claude_event({"type": "assistant", "message": {"content": [
        {"type": "text", "text": "part"}, {"type": "tool_use", "name": "Bash"}]}}, collected) is None
    assert collected == ["part"]
    assert claude_event({"type": "result", "subtype": "success", "is_error": False, "result": "final"},
                        collected) == Outcome("final", False)
    assert claude_event({"type": "result", "subtype": "success", "result": ""}, ["a", "b"]) == Outcome("a\nb", False)
    err = claude_event({"type": "result", "subtype": "error_during_execution", "is_error": True}, [])
    assert err is not None and err.is_error and "error_during_execution" in err.text


def test_codex_reply_new_and_old_formats() -> None:
    new = [json.dumps(e) for e in (
        {"type": "thread.started", "thread_id": "t"},
        {"type": "item.completed", "item": {"type": "reasoning", "text": "hmm"}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "first"}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "final"}},
        {"type": "turn.completed"})]
    assert codex_reply(["banner line", *new]) == Outcome("final", False)
    old = [json.dumps({"id": "0", "msg": {"type": "agent_message", "message": "old style"}})]
    assert codex_reply(old) == Outcome("old style", False)
    failed = [json.dumps({"type": "turn.failed", "error": {"message": "unauthorized"}})]
    assert codex_reply(failed) == Outcome("unauthorized", True)
    assert codex_reply([]) is None
    assert parse_json_line("[1,2]") is None and parse_json_line(b'{"a":1}') == {"a": 1}


def test_transcript_prompt_keeps_recent_turns_within_budget() -> None:
    turns = [Turn(f"q{i}", f"a{i}" + "z" * 50) for i in range(10)]
    out = transcript_prompt(turns, "now?", max_chars=200)
    assert out.endswith("now?") and "q9" in out and "q0" not in out
    assert transcript_prompt([], "plain", 100) == "plain"


def test_fit_message_cuts_oversized_replies() -> None:
    assert fit_message("short") == "short"
    cut = fit_message("é" * 200_000, limit=1000)
    assert len(cut.encode()) <= 1000 and cut.endswith("longer than 256 KiB]")
