"""Backends of `wgs-agent claude` and `wgs-agent codex`: drive the vendor CLIs.

claude: ONE long-lived process in stream-json mode; each user message is a line on its stdin, the
turn ends with the `result` event. A `result` with is_error -> SYSTEM_ERROR for that request (the
process is still usable). The process exiting (or failing to start) -> SYSTEM_ERROR and exit 8,
so the supervisor's restart policy applies. A new process has not seen the conversation, so its
first prompt carries the earlier turns (transcript).
codex: one `codex exec --json … -` per user message, prompt (with the transcript) on stdin. A
non-zero exit -> SYSTEM_ERROR with its stderr text, the agent keeps running; a missing binary ->
exit 8. The CLIs' stderr goes to the agent's own stderr (the run file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys

from wgs.agent.cli_protocol import claude_event, claude_user_line, codex_reply, parse_json_line, transcript_prompt
from wgs.agent.conversation import Turn
from wgs.agent.errors import EXIT_CLI_FAILED, AgentFatal, AnswerFailed

log = logging.getLogger("wgs.agent.cli")

STREAM_LIMIT = 32 * 1024 * 1024  # one JSON event line may be large
STDERR_TAIL = 2000


def cli_env() -> dict[str, str]:
    """Our environment minus the markers that make claude think it runs nested in itself."""
    return {k: v for k, v in os.environ.items() if k not in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")}


def _require(argv: list[str], what: str) -> None:
    if not argv:
        raise AgentFatal(EXIT_CLI_FAILED, f"no {what} command given")
    if shutil.which(argv[0]) is None:
        raise AgentFatal(EXIT_CLI_FAILED, f"{what} CLI not found: {argv[0]!r} is not an executable on PATH")


async def _terminate(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class ClaudeBackend:
    def __init__(self, argv: list[str], context_chars: int) -> None:
        self.argv = argv
        self.context_chars = context_chars
        self.description = "claude: " + " ".join(argv[:1])
        self._proc: asyncio.subprocess.Process | None = None
        self._fresh = True  # the process has not seen the conversation yet

    async def start(self) -> None:
        _require(self.argv, "claude")
        await self._spawn()

    async def _spawn(self) -> None:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
                env=cli_env(), limit=STREAM_LIMIT)
        except OSError as exc:
            raise AgentFatal(EXIT_CLI_FAILED, f"cannot start claude ({self.argv[0]}): {exc.strerror or exc}"
                             ) from None
        self._fresh = True

    async def answer(self, turns: list[Turn], prompt: str) -> str:
        if self._proc is not None and self._proc.returncode is not None:
            log.warning("claude exited with code %s while idle; starting it again", self._proc.returncode)
            self._proc = None
        if self._proc is None:
            await self._spawn()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        text = transcript_prompt(turns, prompt, self.context_chars) if self._fresh else prompt
        try:
            proc.stdin.write(claude_user_line(text).encode())
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # reported below from the exit status
        self._fresh = False
        collected: list[str] = []
        while True:
            line = await proc.stdout.readline()
            if not line:
                code = await proc.wait()
                raise AgentFatal(EXIT_CLI_FAILED, f"claude exited with code {code} while answering "
                                 "(see the run log for its stderr)")
            event = parse_json_line(line)
            if event is None:
                continue
            outcome = claude_event(event, collected)
            if outcome is None:
                continue
            if outcome.is_error:
                raise AnswerFailed(f"claude reported an error: {outcome.text}")
            return outcome.text

    async def interrupt(self) -> None:
        # The turn's output would still arrive on the next read; start afresh instead.
        if self._proc is not None:
            await _terminate(self._proc)
            self._proc = None

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 3.0)
        await _terminate(proc)


class CodexBackend:
    def __init__(self, argv: list[str], context_chars: int) -> None:
        self.argv = argv if argv[-1:] == ["-"] else [*argv, "-"]
        self.context_chars = context_chars
        self.description = "codex: " + " ".join(argv[:2])

    async def start(self) -> None:
        _require(self.argv, "codex")

    async def answer(self, turns: list[Turn], prompt: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=cli_env(), limit=STREAM_LIMIT)
        except OSError as exc:
            raise AgentFatal(EXIT_CLI_FAILED, f"cannot start codex ({self.argv[0]}): {exc.strerror or exc}"
                             ) from None
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        tail = bytearray()

        async def pump_stderr() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(4096):
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                tail.extend(chunk)
                del tail[:-STDERR_TAIL]

        async def feed() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(transcript_prompt(turns, prompt, self.context_chars).encode())
                await proc.stdin.drain()
            proc.stdin.close()

        lines: list[str] = []
        err_task = asyncio.create_task(pump_stderr())
        feed_task = asyncio.create_task(feed())
        try:
            while line := await proc.stdout.readline():
                lines.append(line.decode("utf-8", "replace"))
            code = await proc.wait()
            await err_task
            await feed_task
        finally:
            for task in (err_task, feed_task):
                task.cancel()
            await _terminate(proc)
        outcome = codex_reply(lines)
        if code != 0:
            why = tail.decode("utf-8", "replace").strip() or (outcome.text if outcome else "")
            raise AnswerFailed(f"codex exited with code {code}: {why[-1000:] or 'no error output'}")
        if outcome is None:
            raise AnswerFailed("codex finished without a reply")
        if outcome.is_error:
            raise AnswerFailed(f"codex reported an error: {outcome.text}")
        return outcome.text

    async def interrupt(self) -> None:
        return None  # cancelling answer() terminated the exec

    async def close(self) -> None:
        return None
