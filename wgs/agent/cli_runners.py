"""Backends of `wgs-agent claude` and `wgs-agent codex`: drive the vendor CLIs.

claude: ONE long-lived process in stream-json mode; each user message is a line on its stdin, the
turn ends with the `result` event. A `result` with is_error -> SYSTEM_ERROR for that request (the
process is still usable). The process exiting (or failing to start) -> SYSTEM_ERROR and exit 8,
so the supervisor's restart policy applies. The session id claude reports (every event carries it)
is kept in a file (<state>/chats/<chat>/claude-session-id); a new process — after an exit, an
interrupt, or a new agent run — resumes it with `--resume <id>`. Only when there is no session yet,
or claude cannot resume it ("No conversation found"), does a fresh process get the earlier turns
as a transcript in its first prompt. Assistant text is reported as partial replies as it comes.
codex: one `codex exec --json … -` per user message, prompt (with the transcript) on stdin. A
non-zero exit -> SYSTEM_ERROR with its stderr text, the agent keeps running; a missing binary ->
exit 8. The CLIs' stderr goes to the agent's own stderr (the run file).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import sys
from pathlib import Path

from wgs.agent.cli_protocol import (
    claude_event,
    claude_user_line,
    codex_event,
    codex_reply,
    event_usage,
    parse_json_line,
    session_id,
    transcript_prompt,
)
from wgs.agent.conversation import Turn
from wgs.agent.errors import EXIT_CLI_FAILED, EXIT_CLI_MISSING, FAIL_CLI, AgentFatal, AnswerFailed
from wgs.agent.status import AnswerContext, Status

log = logging.getLogger("wgs.agent.cli")

STREAM_LIMIT = 32 * 1024 * 1024  # one JSON event line may be large
STDERR_TAIL = 2000


def cli_env() -> dict[str, str]:
    """Our environment minus the markers that make claude think it runs nested in itself."""
    return {k: v for k, v in os.environ.items() if k not in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")}


def _require(argv: list[str], what: str) -> None:
    if not argv:
        raise AgentFatal(EXIT_CLI_MISSING, f"no {what} command given")
    if shutil.which(argv[0]) is None:
        raise AgentFatal(EXIT_CLI_MISSING, f"{what} CLI not found: {argv[0]!r} is not an executable on PATH")


def _start_failure(exc: OSError) -> int:
    """The exit code for a CLI that could not be started: missing/not runnable vs anything else."""
    return EXIT_CLI_MISSING if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC) else EXIT_CLI_FAILED


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
    def __init__(self, argv: list[str], context_chars: int, session_file: Path | None = None) -> None:
        self.argv = argv
        self.context_chars = context_chars
        self.session_file = session_file
        self.description = "claude: " + " ".join(argv[:1])
        self._proc: asyncio.subprocess.Process | None = None
        self._fresh = True  # the process has not seen the conversation yet (no session resumed)
        self._resumed = ""  # the session id the current process was started to resume
        self.session = ""

    async def start(self, status: Status) -> None:
        _require(self.argv, "claude")
        self.session = self._load_session()
        await self._spawn()

    def _load_session(self) -> str:
        if self.session_file is None:
            return ""
        try:
            return self.session_file.read_text().strip()
        except OSError:
            return ""

    def _save_session(self, sid: str) -> None:
        if not sid or sid == self.session:
            return
        self.session = sid
        if self.session_file is None:
            return
        try:
            self.session_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.session_file.with_suffix(".tmp")
            tmp.write_text(sid + "\n")
            tmp.replace(self.session_file)
        except OSError as exc:
            log.warning("cannot keep the claude session id in %s: %s", self.session_file, exc)

    async def _spawn(self, resume: bool = True) -> None:
        argv = list(self.argv)
        self._resumed = self.session if resume else ""
        if self._resumed and "--resume" not in argv:
            argv += ["--resume", self._resumed]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
                env=cli_env(), limit=STREAM_LIMIT)
        except OSError as exc:
            raise AgentFatal(_start_failure(exc), f"cannot start claude ({self.argv[0]}): {exc.strerror or exc}"
                             ) from None
        self._fresh = not self._resumed

    async def answer(self, turns: list[Turn], prompt: str, ctx: AnswerContext) -> str:
        if self._proc is not None and self._proc.returncode is not None:
            log.warning("claude exited with code %s while idle; starting it again", self._proc.returncode)
            self._proc = None
        if self._proc is None:
            await self._spawn()
        try:
            return await self._turn(turns, prompt, ctx)
        except _ResumeFailed:
            log.warning("claude could not resume session %s; starting a new one with the transcript", self._resumed)
            self.session = ""
            await self._spawn(resume=False)
            return await self._turn(turns, prompt, ctx)

    async def _turn(self, turns: list[Turn], prompt: str, ctx: AnswerContext) -> str:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        text = transcript_prompt(turns, prompt, self.context_chars) if self._fresh else prompt
        first_of_resumed = bool(self._resumed) and not self._fresh
        try:
            proc.stdin.write(claude_user_line(text).encode())
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # reported below from the exit status
        self._fresh = False
        collected: list[str] = []
        seen_events = False
        while True:
            line = await proc.stdout.readline()
            if not line:
                code = await proc.wait()
                if first_of_resumed and not seen_events:
                    # `claude --resume` of a session it does not have exits at once
                    # ("No conversation found with session ID: …" on stderr).
                    self._proc = None
                    raise _ResumeFailed()
                raise AgentFatal(EXIT_CLI_FAILED, f"claude exited with code {code} while answering "
                                 "(see the run log for its stderr)")
            event = parse_json_line(line)
            if event is None:
                continue
            seen_events = True
            self._resumed = ""
            self._save_session(session_id(event))
            before = len(collected)
            outcome = claude_event(event, collected)
            for block in collected[before:]:
                await ctx.partial(block, "\n".join(collected))
            if outcome is None:
                continue
            usage = event_usage(event)
            if usage is not None:
                await ctx.usage(*usage)
            if outcome.is_error:
                raise AnswerFailed(f"claude reported an error: {outcome.text}", FAIL_CLI)
            return outcome.text

    async def interrupt(self) -> None:
        # The turn's output would still arrive on the next read; start afresh (resuming the session).
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


class _ResumeFailed(Exception):
    """claude exited before its first event after `--resume`: it does not have that session."""


class CodexBackend:
    def __init__(self, argv: list[str], context_chars: int) -> None:
        self.argv = argv if argv[-1:] == ["-"] else [*argv, "-"]
        self.context_chars = context_chars
        self.description = "codex: " + " ".join(argv[:2])

    async def start(self, status: Status) -> None:
        _require(self.argv, "codex")

    async def answer(self, turns: list[Turn], prompt: str, ctx: AnswerContext) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=cli_env(), limit=STREAM_LIMIT)
        except OSError as exc:
            raise AgentFatal(_start_failure(exc), f"cannot start codex ({self.argv[0]}): {exc.strerror or exc}"
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
        said: list[str] = []
        err_task = asyncio.create_task(pump_stderr())
        feed_task = asyncio.create_task(feed())
        try:
            while line := await proc.stdout.readline():
                lines.append(line.decode("utf-8", "replace"))
                event = parse_json_line(line)
                if event is None:
                    continue
                usage = event_usage(event)
                if usage is not None:
                    await ctx.usage(*usage)
                out = codex_event(event)
                if out is not None and not out.is_error:
                    said.append(out.text)
                    await ctx.partial(out.text, "\n\n".join(said))
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
            raise AnswerFailed(f"codex exited with code {code}: {why[-1000:] or 'no error output'}", FAIL_CLI)
        if outcome is None:
            raise AnswerFailed("codex finished without a reply", FAIL_CLI)
        if outcome.is_error:
            raise AnswerFailed(f"codex reported an error: {outcome.text}", FAIL_CLI)
        return outcome.text

    async def interrupt(self) -> None:
        return None  # cancelling answer() terminated the exec

    async def close(self) -> None:
        return None
