"""Restart policy (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.supervisor import policy

CFG = policy.PolicyConfig()
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _fail(h: policy.History, now: datetime, uptime: float) -> policy.Decision:
    return policy.on_end(history=h, cfg=CFG, now=now, started_at=now - timedelta(seconds=uptime),
                         exit_code=1, describe="exited with code 1")


def test_clean_exit_is_exited_and_clears_failures() -> None:
    h = policy.History((T0,), 2, 2)
    d = policy.on_end(history=h, cfg=CFG, now=T0, started_at=T0 - timedelta(seconds=5), exit_code=0)
    assert d.state == policy.EXITED and d.delay is None
    assert d.history.failures == () and d.history.consecutive == 0 and d.history.restart_count == 2


def test_stop_requested_wins() -> None:
    d = policy.on_end(history=policy.History(), cfg=CFG, now=T0, started_at=T0, exit_code=None,
                      stop_requested=True)
    assert d.state == policy.STOPPED


def test_backoff_doubles_to_cap() -> None:
    assert [policy.backoff_delay(n, CFG) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_crash_loop_reaches_failed_after_more_than_max_failures() -> None:
    h = policy.History()
    delays = []
    now = T0
    for _ in range(CFG.max_failures):
        d = _fail(h, now, uptime=0.1)
        assert d.state == policy.BACKOFF and d.failed_start
        assert "failed start" in d.reason
        delays.append(d.delay)
        h = d.history
        now += timedelta(seconds=(d.delay or 0) + 0.1)
    assert delays == [0.5, 1, 2, 4, 8]
    d = _fail(h, now, uptime=0.1)
    assert d.state == policy.FAILED and "until RestartChat" in d.reason
    assert d.history.restart_count == CFG.max_failures


def test_failures_outside_window_do_not_count() -> None:
    h = policy.History()
    now = T0
    for _ in range(20):
        d = _fail(h, now, uptime=30)
        assert d.state == policy.BACKOFF
        h = d.history
        now += timedelta(seconds=CFG.failure_window)  # each failure falls out of the previous window


def test_healthy_uptime_resets_backoff() -> None:
    h = policy.History((), 4, 4)
    d = _fail(h, T0, uptime=CFG.reset_after + 1)
    assert d.delay == CFG.initial_backoff and not d.failed_start


def test_spawn_failure_counts_as_failed_start() -> None:
    d = policy.on_end(history=policy.History(), cfg=CFG, now=T0, started_at=None, exit_code=None,
                      describe="executable not found: 'x'")
    assert d.state == policy.BACKOFF and d.failed_start and "executable not found" in d.reason
    assert d.restart_at(T0) == T0 + timedelta(seconds=0.5)


def test_config_from_env(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WGS_RESTART_MAX_FAILURES", "2")
    monkeypatch.setenv("WGS_RESTART_INITIAL_BACKOFF_SECONDS", "0.05")
    cfg = policy.PolicyConfig.from_env()
    assert cfg.max_failures == 2 and cfg.initial_backoff == 0.05 and cfg.max_backoff == 30
