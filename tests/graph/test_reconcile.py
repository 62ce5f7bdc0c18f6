"""Reconcile's judgement (pure): only an expired lease resets a task; the reason says which and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.graph.reconcile import Record, judge

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def test_a_task_without_a_runtime_record_is_left_alone_whatever_its_assignee() -> None:
    assert judge(Record(), NOW) == (False, "no owner recorded (no lease): left alone")
    assert judge(Record(assigned="agent-7"), NOW) == (
        False, "assigned to 'agent-7', but no owner recorded (no lease): left alone")


def test_a_valid_lease_keeps_the_task_and_says_until_when() -> None:
    rec = Record(has_runtime=True, supervisor_id="sup-a", lease_expires_at=NOW + timedelta(seconds=1))
    assert judge(rec, NOW) == (False, "lease of supervisor 'sup-a' valid until 2026-12-01T12:00:01+00:00")


def test_a_lease_ending_now_has_expired() -> None:
    rec = Record(has_runtime=True, supervisor_id="sup-a", lease_expires_at=NOW)
    assert judge(rec, NOW) == (True, "lease of supervisor 'sup-a' expired at 2026-12-01T12:00:00+00:00")


def test_no_lease_or_a_shutdown_park_is_left_alone() -> None:
    assert judge(Record(has_runtime=True, supervisor_id="sup-a"), NOW) == (
        False, "no lease recorded for supervisor 'sup-a': left alone")
    parked = Record(has_runtime=True, supervisor_id="sup-a", lease_expires_at=NOW - timedelta(hours=1),
                    resume_on_start=True)
    assert judge(parked, NOW) == (
        False, "parked by the shutdown of supervisor 'sup-a': it resumes when that supervisor starts")
