"""Protocol parsing for the claude and codex CLIs, as plain functions (unit-tested).

claude (`claude --print --input-format stream-json --output-format stream-json --verbose`):
  input: one JSON line per user message `{"type":"user","message":{"role":"user","content":"…"}}`;
  output: JSON lines; `{"type":"assistant","message":{"content":[{"type":"text","text":"…"}]}}` while
  working, then `{"type":"result","subtype":"success","is_error":false,"result":"…"}` ends the turn.
codex (`codex exec --json … -`, prompt on stdin): JSON-lines events; the reply is the last
  `{"type":"item.completed","item":{"type":"agent_message","text":"…"}}` (older releases:
  `{"msg":{"type":"agent_message","message":"…"}}` / `task_complete.last_agent_message`); failures are
  `{"type":"turn.failed","error":{"message":…}}` or `{"type":"error","message":…}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wgs.agent.conversation import Turn


def parse_json_line(line: str | bytes) -> dict[str, Any] | None:
    """A JSON object from one output line; None for blank or non-JSON lines (banners, logs)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        doc = json.loads(line)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def claude_user_line(text: str) -> str:
    """The stream-json input line carrying one user message (newline-terminated)."""
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}}) + "\n"


@dataclass(frozen=True)
class Outcome:
    text: str
    is_error: bool


def _text_blocks(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                out.append(block["text"])
    return out


def claude_event(event: dict[str, Any], collected: list[str]) -> Outcome | None:
    """Feed one claude output event; returns the turn's outcome at its `result` event.

    Assistant text seen before the result is collected and used when the result has no text.
    """
    kind = event.get("type")
    if kind == "assistant":
        message = event.get("message") or {}
        collected.extend(_text_blocks(message.get("content")))
        return None
    if kind != "result":
        return None
    subtype = str(event.get("subtype") or "")
    is_error = bool(event.get("is_error")) or subtype.startswith("error")
    result = event.get("result")
    text = result if isinstance(result, str) and result.strip() else "\n".join(collected)
    if is_error and not text.strip():
        errors = event.get("errors")
        text = "; ".join(map(str, errors)) if isinstance(errors, list) and errors else (subtype or "unknown error")
    return Outcome(text, is_error)


def codex_event(event: dict[str, Any]) -> Outcome | None:
    """An agent message (is_error False) or an error (is_error True) from one codex event."""
    kind = event.get("type")
    if kind == "item.completed":
        item = event.get("item") or {}
        itype = item.get("type") or item.get("item_type")
        if itype in ("agent_message", "assistant_message") and isinstance(item.get("text"), str):
            return Outcome(item["text"], False)
        return None
    if kind == "turn.failed":
        err = event.get("error") or {}
        return Outcome(str(err.get("message") if isinstance(err, dict) else err or "turn failed"), True)
    if kind == "error":
        return Outcome(str(event.get("message") or "error"), True)
    msg = event.get("msg")
    if isinstance(msg, dict):  # older `codex exec --json` releases
        mtype = msg.get("type")
        if mtype == "agent_message" and isinstance(msg.get("message"), str):
            return Outcome(msg["message"], False)
        if mtype == "task_complete" and isinstance(msg.get("last_agent_message"), str):
            return Outcome(msg["last_agent_message"], False)
        if mtype in ("error", "stream_error"):
            return Outcome(str(msg.get("message") or "error"), True)
    return None


def codex_reply(lines: list[str]) -> Outcome | None:
    """The final agent message of a codex run, else its last error, else None."""
    reply: Outcome | None = None
    error: Outcome | None = None
    for line in lines:
        event = parse_json_line(line)
        if event is None:
            continue
        out = codex_event(event)
        if out is None:
            continue
        if out.is_error:
            error = out
        else:
            reply = out
    return reply or error


def transcript_prompt(turns: list[Turn], prompt: str, max_chars: int) -> str:
    """Prompt for a CLI that has not seen the conversation: recent turns (that fit) + the message."""
    if not turns:
        return prompt
    parts: list[str] = []
    used = len(prompt)
    for t in reversed(turns):
        block = f"User: {t.user}\n\nAssistant: {t.assistant}"
        if used + len(block) > max_chars:
            break
        parts.append(block)
        used += len(block)
    if not parts:
        return prompt
    parts.reverse()
    return ("Earlier in this conversation:\n\n" + "\n\n".join(parts)
            + "\n\n---\n\nContinue the conversation. The user now says:\n\n" + prompt)
