"""Restart policy: a pure function from a run's outcome and the failure history to the next state.

See docs/restart-policy.md. Summary:
- exit 0 → EXITED (no restart; the next SendMessage respawns lazily) and the failure history is
  cleared;
- any other end (non-zero exit, signal, unknown status, spawn failure) is a failure; a run that ends
  within `start_seconds` of its start is a *failed start* (same handling, named as such);
- failures back off exponentially: initial delay, doubled per consecutive failure, capped; a run that
  stayed up `reset_after` seconds resets the delay (it was healthy);
- more than `max_failures` failures within `failure_window` seconds → FAILED, which stays until
  RestartChat (no token-burning restart loop);
- a requested stop → STOPPED, never restarted; stops wgs makes never count as failures;
- a *permanent* failure (the executable is missing or not executable, a plan refused, an agent
  reporting a problem only a person can fix: bad configuration, credentials, TLS, unknown model,
  missing CLI) → FAILED at once: retrying cannot help, and each try may cost tokens;
- a run whose end was not the agent's doing (its supervisor or monitor was lost and the run had to
  be ended, or it was fenced) → restarted at once, not counted as a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from wgs.common.settings import env_float, env_int
from wgs.v1 import runtime_pb2

EXITED = runtime_pb2.RUNTIME_STATE_EXITED
BACKOFF = runtime_pb2.RUNTIME_STATE_BACKOFF
FAILED = runtime_pb2.RUNTIME_STATE_FAILED
STOPPED = runtime_pb2.RUNTIME_STATE_STOPPED


@dataclass(frozen=True)
class PolicyConfig:
    start_seconds: float = 1.0  # supervisord startsecs
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    reset_after: float = 60.0  # healthy uptime that resets the backoff (kubelet: 10 min)
    max_failures: int = 5
    failure_window: float = 120.0

    @classmethod
    def from_env(cls) -> PolicyConfig:
        return cls(
            start_seconds=env_float("WGS_RESTART_START_SECONDS", 1.0),
            initial_backoff=env_float("WGS_RESTART_INITIAL_BACKOFF_SECONDS", 0.5, minimum=0.01),
            max_backoff=env_float("WGS_RESTART_MAX_BACKOFF_SECONDS", 30.0, minimum=0.01),
            reset_after=env_float("WGS_RESTART_RESET_AFTER_SECONDS", 60.0),
            max_failures=env_int("WGS_RESTART_MAX_FAILURES", 5, minimum=0),
            failure_window=env_float("WGS_RESTART_FAILURE_WINDOW_SECONDS", 120.0),
        )


@dataclass(frozen=True)
class History:
    """Failure bookkeeping of one chat (kept in memory by the supervisor)."""

    failures: tuple[datetime, ...] = ()  # times of failures inside the window
    consecutive: int = 0  # failures since the last healthy run (drives the backoff)
    restart_count: int = 0  # restarts after failures since creation / RestartChat


@dataclass(frozen=True)
class Decision:
    state: int  # a RuntimeState value
    delay: float | None  # seconds until the restart (BACKOFF only)
    history: History
    reason: str  # words for last_error / logs ("" when healthy)
    failed_start: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def restart_at(self, now: datetime) -> datetime | None:
        return now + timedelta(seconds=self.delay) if self.delay is not None else None


def backoff_delay(consecutive: int, cfg: PolicyConfig) -> float:
    """Delay before restart number `consecutive` (1-based): initial * 2^(n-1), capped."""
    n = max(1, consecutive)
    return min(cfg.max_backoff, cfg.initial_backoff * (2.0 ** min(n - 1, 30)))


def on_end(
    *,
    history: History,
    cfg: PolicyConfig,
    now: datetime,
    started_at: datetime | None,
    exit_code: int | None,
    stop_requested: bool = False,
    describe: str = "",
    permanent: bool = False,
    fix: str = "",
    not_the_agents_fault: bool = False,
) -> Decision:
    """Decide what happens after a run ended (or failed to spawn: started_at None).

    `permanent`: restarting cannot help (FAILED now; `fix` says what a person must do).
    `not_the_agents_fault`: the run was ended or lost by wgs itself (restart now, not counted)."""
    if stop_requested:
        return Decision(STOPPED, None, history, "")
    if exit_code == 0:
        return Decision(EXITED, None, replace(history, failures=(), consecutive=0), "")
    what = describe or "the agent failed"
    if permanent:
        reason = f"{what}; restarting cannot fix this" + (f": {fix}" if fix else "") + \
            "; then `wgs chat restart` (RestartChat)"
        return Decision(FAILED, None, replace(history, failures=(*history.failures, now)), reason, started_at is None)
    if not_the_agents_fault:
        return Decision(BACKOFF, 0.0, history, f"{what}; restarting now")
    uptime = (now - started_at).total_seconds() if started_at is not None else 0.0
    failed_start = started_at is None or uptime < cfg.start_seconds
    consecutive = 1 if uptime >= cfg.reset_after else history.consecutive + 1
    window_start = now - timedelta(seconds=cfg.failure_window)
    failures = (*(t for t in history.failures if t >= window_start), now)
    if failed_start and started_at is not None:
        what = f"failed start ({what} within {cfg.start_seconds:g}s)"
    if len(failures) > cfg.max_failures:
        hist = History(failures, consecutive, history.restart_count)
        reason = (f"{what}; {len(failures)} failures within {cfg.failure_window:g}s, giving up "
                  "until RestartChat")
        return Decision(FAILED, None, hist, reason, failed_start)
    delay = backoff_delay(consecutive, cfg)
    hist = History(failures, consecutive, history.restart_count + 1)
    return Decision(BACKOFF, delay, hist, f"{what}; restarting in {delay:g}s", failed_start)
