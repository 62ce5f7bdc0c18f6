"""Protocol parsing for the claude and codex CLIs, as plain functions (unit-tested).

claude (`claude --print --input-format stream-json --output-format stream-json --verbose`):
  input: one JSON line per user message `{"type":"user","message":{"role":"user","content":"…"}}`;
  output: JSON lines; `{"type":"assistant","message":{"content":[{"type":"text","text":"…"}]}}` while
  working, then `{"type":"result","subtype":"success","is_error":false,"result":"…"}` ends the turn.
codex (`codex exec --json … -`, prompt on stdin): JSON-lines events; the reply is the last
  `{"type":"item.completed","item":{"type":"agent_message","text":"…"}}` (older releases:
  `{"msg":{"type":"agent_message","message":"…"}}` / `task_complete.last_agent_message`); failures are
  `{"type":"turn.failed","error":{"message":…}}` or `{"type":"error","message":…}`; the turn's token
  usage is in `{"type":"turn.completed","usage":{"input_tokens":…,"output_tokens":…}}`.
  An OpenAI-compatible endpoint is a custom model provider given with `-c` overrides
  (`codex_provider_args`): `model_provider=<id>`, `model_providers.<id>.base_url` (…/v1: codex
  appends /responses or /chat/completions), `.wire_api`, and `.env_key` = the NAME of the variable
  holding the key (codex reads it from its environment: the key is never in argv).
claude sessions: every event carries `session_id`; `claude --resume <id>` continues that session
  (looked up under the working directory; an unknown one: "No conversation found with session ID").
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


def session_id(event: dict[str, Any]) -> str:
    """The claude session id an event carries (system init, assistant, result), or ""."""
    value = event.get("session_id")
    return value if isinstance(value, str) else ""


def event_usage(event: dict[str, Any]) -> tuple[int, int] | None:
    """(input, output) tokens of a claude `result` or codex `turn.completed` event, if it has usage."""
    usage = event.get("usage")
    if event.get("type") not in ("result", "turn.completed") or not isinstance(usage, dict):
        return None
    tokens_in = sum(v for k, v in usage.items() if k.endswith("input_tokens") and isinstance(v, int))
    tokens_out = usage.get("output_tokens")
    return tokens_in, tokens_out if isinstance(tokens_out, int) else 0


CODEX_PROVIDER_ID = "wgs"
CODEX_KEY_VARIABLE = "WGS_API_KEY"


def codex_provider_args(base_url: str, wire_api: str = "responses", *, with_key: bool = True) -> list[str]:
    """`-c` overrides making codex use `base_url` as a custom provider; the key stays in the environment."""
    def toml(value: str) -> str:
        return json.dumps(value)  # a TOML basic string

    pid = CODEX_PROVIDER_ID
    out = ["-c", f"model_provider={toml(pid)}",
           "-c", f"model_providers.{pid}.name={toml('wgs endpoint')}",
           "-c", f"model_providers.{pid}.base_url={toml(base_url)}",
           "-c", f"model_providers.{pid}.wire_api={toml(wire_api)}"]
    if with_key:
        out += ["-c", f"model_providers.{pid}.env_key={toml(CODEX_KEY_VARIABLE)}"]
    return out


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
