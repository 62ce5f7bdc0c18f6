"""The chat runtime state machine: one table of legal transitions, used by both sides.

The supervisor applies every change of a chat's state through one function
(`services.supervisor.lifecycle.Lifecycle.change_state`), which checks this table first; the graph
checks it again in the same transaction that writes the change, so no caller — a bug, an old
supervisor, a forged request — can store an illegal one. docs/architecture.md draws it.

Self-transitions are legal only where they mean something: STARTING → STARTING (a restart asked
while a spawn is pending, or a spawn re-tried after the supervisor died mid-spawn), RUNNING →
RUNNING (the same run adopted or taken over), BACKOFF → BACKOFF (a restart attempt postponed),
STOPPED → STOPPED (a stopped chat deleted or archived).
"""

from __future__ import annotations

from wgs.common.errors import FailedPrecondition
from wgs.v1 import runtime_pb2

UNSPECIFIED = runtime_pb2.RUNTIME_STATE_UNSPECIFIED
STARTING = runtime_pb2.RUNTIME_STATE_STARTING
RUNNING = runtime_pb2.RUNTIME_STATE_RUNNING
BACKOFF = runtime_pb2.RUNTIME_STATE_BACKOFF
EXITED = runtime_pb2.RUNTIME_STATE_EXITED
FAILED = runtime_pb2.RUNTIME_STATE_FAILED
STOPPED = runtime_pb2.RUNTIME_STATE_STOPPED

STATES: tuple[int, ...] = (STARTING, RUNNING, BACKOFF, EXITED, FAILED, STOPPED)

# (from, to) -> what causes it. UNSPECIFIED is "no record yet" (CreateChat).
TRANSITIONS: dict[tuple[int, int], str] = {
    (UNSPECIFIED, STARTING): "CreateChat",
    (STARTING, RUNNING): "the agent was spawned",
    (STARTING, BACKOFF): "the spawn failed (retryable); a restart is scheduled",
    (STARTING, FAILED): "the spawn cannot work (plan refused, executable missing, too many failures)",
    (STARTING, STOPPED): "StopChat / DeleteChat / ArchiveChat / shutdown",
    (STARTING, STARTING): "RestartChat while starting, or a spawn retried after the supervisor died mid-spawn",
    (RUNNING, EXITED): "the agent exited 0 (idle): respawned on the next message",
    (RUNNING, BACKOFF): "the agent failed (or its end is unknown); a restart is scheduled",
    (RUNNING, FAILED): "the agent failed in a way restarting cannot fix, or too often",
    (RUNNING, STOPPED): "StopChat / DeleteChat / ArchiveChat / RestartChat / shutdown",
    (RUNNING, RUNNING): "the run was adopted or taken over by another supervisor",
    (BACKOFF, STARTING): "the restart timer fired",
    (BACKOFF, BACKOFF): "a restart attempt was postponed",
    (BACKOFF, STOPPED): "StopChat / DeleteChat / ArchiveChat / shutdown",
    (EXITED, STARTING): "a message arrived (lazy respawn), or RestartChat",
    (EXITED, STOPPED): "StopChat / DeleteChat / ArchiveChat",
    (FAILED, STARTING): "RestartChat",
    (FAILED, STOPPED): "StopChat / DeleteChat / ArchiveChat",
    (STOPPED, STARTING): "a message, RestartChat, or the supervisor resuming after a shutdown",
    (STOPPED, STOPPED): "a stopped chat deleted or archived",
}

# Where a run can end: the states RecordRunExited may move a chat to.
EXIT_STATES = frozenset({BACKOFF, EXITED, FAILED, STOPPED})
# States in which a chat's agent may be alive (a run may be recorded as started or live).
LIVE_STATES = frozenset({STARTING, RUNNING})


def name(state: int) -> str:
    """"RUNNING" for RUNTIME_STATE_RUNNING; the number for unknown values."""
    try:
        return runtime_pb2.RuntimeState.Name(state).removeprefix("RUNTIME_STATE_")
    except ValueError:
        return str(state)


def is_legal(from_state: int, to_state: int) -> bool:
    return (from_state, to_state) in TRANSITIONS


def check(from_state: int, to_state: int, chat_id: str = "") -> None:
    """Raise FailedPrecondition naming both states when the transition is not in the table."""
    if is_legal(from_state, to_state):
        return
    allowed = sorted(name(t) for f, t in TRANSITIONS if f == from_state)
    where = f"chat {chat_id}: " if chat_id else ""
    raise FailedPrecondition(
        f"{where}illegal state transition {name(from_state)} -> {name(to_state)}; from {name(from_state)} "
        f"a chat can go to {', '.join(allowed) or 'nothing'}"
    )
