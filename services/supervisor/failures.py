"""Failure classes: which ends of a run retrying can fix, and what a person must do otherwise.

Pure: from how a run ended (or failed to start) and what it was, decide `permanent` and the words
for last_error. Permanent failures go FAILED at once instead of being retried 5-6 times over 15-30 s
(supervisord's FATAL, kubelet's CreateContainerConfigError): the executable is missing (ENOENT), not
executable (EACCES), not a program (ENOEXEC), the working directory is missing; or our agent
reported a problem only configuration can fix (its exit code says which, see wgs/agent/errors.py).
An unreachable endpoint or graph is *not* permanent: servers come back.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from services.supervisor.backend import ExitInfo

AGENT_PROGRAM = "wgs-agent"

# Exit codes of wgs-agent that restarting cannot fix, and what to do (wgs/agent/errors.py).
AGENT_PERMANENT_EXITS: dict[int, str] = {
    2: "fix the chat's configuration or the agent's arguments",
    4: "fix the endpoint's TLS (its certificate, or trust its CA with ca_file in config.toml)",
    5: "fix the endpoint's API key (the variable named by api_key_env in config.toml)",
    6: "use a model the endpoint serves (--model), or fix the endpoint",
    9: "install the CLI the executor runs (claude or codex) on the supervisor's PATH",
}
EXEC_ERRNOS: dict[int, str] = {
    errno.ENOENT: "install the program or fix the command's path",
    errno.EACCES: "make the program executable (chmod +x) or fix the command",
    errno.ENOEXEC: "the file is not a program this host can run; fix the command",
}


@dataclass(frozen=True)
class Classified:
    permanent: bool
    describe: str  # how it ended, in words
    fix: str = ""  # what a person must do (permanent only)


def agent_reason(tail: str) -> str:
    """The agent's own last words: its final `wgs-agent: ...` stderr line ("" if none)."""
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if line.startswith(f"{AGENT_PROGRAM}: "):
            return line.removeprefix(f"{AGENT_PROGRAM}: ").strip()
    return ""


def classify_exit(info: ExitInfo, argv: list[str], tail: str) -> Classified:
    """Classify a run's end. `argv` is the run's command (its program decides what exit codes mean)."""
    how = f"agent {info.describe()}"
    if info.exec_errno is not None and info.exec_errno in EXEC_ERRNOS:
        return Classified(True, how, EXEC_ERRNOS[info.exec_errno])
    is_agent = bool(argv) and argv[0].rsplit("/", 1)[-1] == AGENT_PROGRAM
    if is_agent and info.exit_code is not None:
        reason = agent_reason(tail)
        if reason:
            how = f"agent exited with code {info.exit_code}: {reason}"
        fix = AGENT_PERMANENT_EXITS.get(info.exit_code)
        if fix is not None:
            return Classified(True, how, fix)
    return Classified(False, how)


def classify_spawn_failure(message: str, permanent: bool, errno_: int | None = None) -> Classified:
    """A spawn that failed; an exec errno (the program missing, not executable, not a program) names
    its own fix, as for an exec that failed in the run monitor."""
    if permanent:
        fix = EXEC_ERRNOS.get(errno_ or 0, "fix the command or its environment")
        return Classified(True, f"the agent could not be started: {message}", fix)
    return Classified(False, f"the agent could not be started: {message}")
