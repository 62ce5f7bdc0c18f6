"""Reconcile's judgement: may an IN_PROGRESS task be reset to OPEN? Pure, from records only.

Only proof that the owner is gone resets a task: its supervisor's lease expired. Nothing is ever
decided from a field that merely happens to be empty (`assigned`, incident cause A), and nothing
from a process check: the graph may run on another host (or pod) than the agents, so pid checks
stay with the supervisor that owns the host. A chat parked by its supervisor's shutdown
(resume_on_start) is kept: it resumes when that supervisor starts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Record:
    """What Reconcile knows of one IN_PROGRESS task."""

    assigned: str = ""
    has_runtime: bool = False  # a chat with a runtime record (owner, lease)
    supervisor_id: str = ""
    lease_expires_at: datetime | None = None
    resume_on_start: bool = False


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "never"


def judge(record: Record, now: datetime) -> tuple[bool, str]:
    """(reset?, reason in words)."""
    if not record.has_runtime:
        who = f"assigned to {record.assigned!r}, but " if record.assigned else ""
        return False, f"{who}no owner recorded (no lease): left alone"
    owner = f"supervisor {record.supervisor_id!r}"
    if record.resume_on_start:
        return False, f"parked by the shutdown of {owner}: it resumes when that supervisor starts"
    if record.lease_expires_at is None:
        return False, f"no lease recorded for {owner}: left alone"
    if record.lease_expires_at > now:
        return False, f"lease of {owner} valid until {_iso(record.lease_expires_at)}"
    return True, f"lease of {owner} expired at {_iso(record.lease_expires_at)}"
