"""Exit codes of `wgs-agent` and the two kinds of failure an agent distinguishes.

Exit codes (documented in docs and `wgs-agent --help`; the supervisor's restart policy treats every
non-zero code as a crash, and 0 as a clean/idle exit):

  0  clean exit: SIGTERM, or idle for WGS_AGENT_IDLE_EXIT_SECONDS
  1  unexpected internal error (a bug; traceback in the log)
  2  usage or configuration error (bad arguments, bad WGS_* value, chat not found)
  3  endpoint unusable: it answers, but not as an OpenAI-compatible server; or it stayed unavailable
     longer than WGS_AGENT_ENDPOINT_WAIT_SECONDS (default 0: an outage -- connection refused, DNS,
     502/503/504, "loading model" -- is not an exit: the agent waits for the endpoint)
  4  TLS failure (certificate verification, handshake)
  5  authentication failure (HTTP 401/403 from the endpoint at start)
  6  unknown model (not in the endpoint's model list)
  7  graph service unreachable (cannot read or write the chat) for longer than WGS_AGENT_GRAPH_WAIT_SECONDS
     (default 60; meanwhile its calls are retried and the message stream re-opened)
  8  the claude/codex CLI failed (exited, or reported a fatal error)
  9  the claude/codex CLI is missing: not on PATH, or not executable (restarting cannot fix it)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TLS = 4
EXIT_AUTH = 5
EXIT_UNKNOWN_MODEL = 6
EXIT_GRAPH = 7
EXIT_CLI_FAILED = 8
EXIT_CLI_MISSING = 9

EXIT_CODES_HELP = """exit codes:
  0  clean exit (SIGTERM, or idle for WGS_AGENT_IDLE_EXIT_SECONDS)
  1  internal error
  2  usage or configuration error
  3  endpoint unusable (not OpenAI-compatible), or unavailable past WGS_AGENT_ENDPOINT_WAIT_SECONDS
  4  TLS failure
  5  authentication failed (HTTP 401/403)
  6  unknown model
  7  graph service unreachable past WGS_AGENT_GRAPH_WAIT_SECONDS
  8  claude/codex CLI failed
  9  claude/codex CLI missing (not on PATH or not executable)"""


# Classes of answer failure (AnswerFailed.kind), reported through the status sink.
FAIL_CONTEXT = "context_overflow"  # the request does not fit the model's context window
FAIL_TOO_LARGE = "message_too_large"  # the newest message alone does not fit: refused before sending
FAIL_RATE_LIMITED = "rate_limited"  # 429/408 on every retry
FAIL_SERVER = "server_error"  # 5xx on every retry, or an error event in the stream
FAIL_REJECTED = "rejected"  # another 4xx (never retried)
FAIL_AUTH = "auth"  # 401/403 during the run
FAIL_NOT_FOUND = "not_found"  # 404 during the run
FAIL_TIMEOUT = "timeout"  # the endpoint went silent (read timeout)
FAIL_CONNECTION = "connection"  # the connection broke mid-reply on every retry
FAIL_PROTOCOL = "protocol"  # the reply is not an OpenAI chat completion
FAIL_EMPTY = "empty_reply"  # the model returned no text
FAIL_INTERRUPTED = "interrupted"  # SIGINT (InterruptChat)
FAIL_CLI = "cli_error"  # claude/codex reported an error
FAIL_STOPPED = "agent_stopped"  # a fatal error stopped the agent (it exits non-zero)
FAIL_OTHER = "error"


class AnswerFailed(Exception):
    """One request could not be answered; it gets a SYSTEM_ERROR message and the agent keeps running."""

    def __init__(self, reason: str, kind: str = FAIL_OTHER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class AgentFatal(Exception):
    """The agent cannot work any more: one stderr line, a SYSTEM_ERROR message, exit `exit_code`."""

    def __init__(self, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason
