"""Restart policy (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.supervisor import policy
from wgs.common.errors import ConfigError

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


VARS = {"WGS_RESTART_START_SECONDS": "start_seconds", "WGS_RESTART_INITIAL_BACKOFF_SECONDS": "initial_backoff",
        "WGS_RESTART_MAX_BACKOFF_SECONDS": "max_backoff", "WGS_RESTART_RESET_AFTER_SECONDS": "reset_after",
        "WGS_RESTART_MAX_FAILURES": "max_failures", "WGS_RESTART_FAILURE_WINDOW_SECONDS": "failure_window"}


def test_config_from_env_defaults_to_the_documented_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    cfg = policy.PolicyConfig.from_env()
    assert cfg == policy.PolicyConfig()  # docs/restart-policy.md "Numbers"
    assert (cfg.start_seconds, cfg.initial_backoff, cfg.max_backoff, cfg.reset_after, cfg.max_failures,
            cfg.failure_window) == (1.0, 0.5, 30.0, 60.0, 5, 120.0)


def test_config_from_env_reads_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for n, var in enumerate(VARS, start=2):
        monkeypatch.setenv(var, str(n))
    cfg = policy.PolicyConfig.from_env()
    assert [getattr(cfg, attr) for attr in VARS.values()] == [2, 3, 4, 5, 6, 7]
    monkeypatch.setenv("WGS_RESTART_INITIAL_BACKOFF_SECONDS", "0.05")  # short delays (tests, demos): allowed
    monkeypatch.setenv("WGS_RESTART_MAX_BACKOFF_SECONDS", "0.1")
    assert (policy.PolicyConfig.from_env().initial_backoff, policy.PolicyConfig.from_env().max_backoff) == (0.05, 0.1)
    monkeypatch.setenv("WGS_RESTART_MAX_FAILURES", "0")  # give up at the first failure: allowed
    monkeypatch.setenv("WGS_RESTART_START_SECONDS", "0")
    assert policy.PolicyConfig.from_env().max_failures == 0


@pytest.mark.parametrize("var, value", [
    ("WGS_RESTART_INITIAL_BACKOFF_SECONDS", "0"), ("WGS_RESTART_MAX_BACKOFF_SECONDS", "0.001"),
    ("WGS_RESTART_MAX_FAILURES", "-1"), ("WGS_RESTART_START_SECONDS", "-1"),
])
def test_config_from_env_refuses_values_that_would_spin(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=f"{var}=.* is too small"):
        policy.PolicyConfig.from_env()


def test_a_stop_or_a_clean_exit_is_no_failure_and_says_nothing() -> None:
    h = policy.History((T0,), 2, 3)
    stop = policy.on_end(history=h, cfg=CFG, now=T0, started_at=T0, exit_code=1, stop_requested=True)
    assert stop == policy.Decision(policy.STOPPED, None, h, "") and stop.restart_at(T0) is None
    clean = policy.on_end(history=h, cfg=CFG, now=T0, started_at=T0, exit_code=0)
    assert clean == policy.Decision(policy.EXITED, None, policy.History((), 0, 3), "")


def test_a_permanent_failure_fails_at_once_naming_the_fix() -> None:
    h = policy.History((), 1, 2)
    d = policy.on_end(history=h, cfg=CFG, now=T0, started_at=T0 - timedelta(seconds=5), exit_code=5,
                      describe="API key refused", permanent=True, fix="set api_key_env")
    assert d == policy.Decision(policy.FAILED, None, policy.History((T0,), 1, 2),
                                "API key refused; restarting cannot fix this: set api_key_env; then "
                                "`wgs chat restart` (RestartChat)", False)
    spawn = policy.on_end(history=h, cfg=CFG, now=T0, started_at=None, exit_code=None, permanent=True)
    assert spawn.reason == "the agent failed; restarting cannot fix this; then `wgs chat restart` (RestartChat)"
    assert spawn.failed_start  # it never started


def test_an_end_that_was_not_the_agents_fault_restarts_now_and_counts_nothing() -> None:
    h = policy.History((T0,), 3, 4)
    d = policy.on_end(history=h, cfg=CFG, now=T0, started_at=T0, exit_code=None, describe="fenced",
                      not_the_agents_fault=True)
    assert d == policy.Decision(policy.BACKOFF, 0.0, h, "fenced; restarting now")
    assert d.restart_at(T0) == T0


def test_the_boundaries_of_a_failed_start_a_healthy_run_and_the_window() -> None:
    at_start = _fail(policy.History(), T0, uptime=CFG.start_seconds)
    assert not at_start.failed_start and at_start.reason == "exited with code 1; restarting in 0.5s"
    healthy = _fail(policy.History((), 4, 4), T0, uptime=CFG.reset_after)  # exactly reset_after: healthy
    assert healthy.delay == CFG.initial_backoff and healthy.history.consecutive == 1
    edge = T0 - timedelta(seconds=CFG.failure_window)  # a failure exactly one window ago still counts
    counted = _fail(policy.History((edge,), 1, 1), T0, uptime=30)
    assert counted.history.failures == (edge, T0)


def test_spawn_failures_never_count_as_healthy_uptime() -> None:
    cfg = policy.PolicyConfig(reset_after=0.5)
    h = policy.History()
    delays = []
    for _ in range(3):
        d = policy.on_end(history=h, cfg=cfg, now=T0, started_at=None, exit_code=None, describe="fork failed")
        delays.append(d.delay)
        h = d.history
    assert delays == [0.5, 1.0, 2.0]
    assert d.reason == "fork failed; restarting in 2s"  # a spawn failure is not labelled "failed start (... within)"


def test_giving_up_keeps_the_history_and_says_why() -> None:
    failures = tuple(T0 - timedelta(seconds=10 * i) for i in range(CFG.max_failures, 0, -1))
    d = _fail(policy.History(failures, 5, 5), T0, uptime=0.1)
    assert d.state == policy.FAILED and d.delay is None and d.failed_start
    assert d.history == policy.History((*failures, T0), 6, 5)
    assert d.reason == ("failed start (exited with code 1 within 1s); 6 failures within 120s, giving up until "
                        "RestartChat")
