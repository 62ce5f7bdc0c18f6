"""The supervisor's settings (environment variables, read once at start; bad values stop it)."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from services.supervisor import policy
from wgs.common.settings import env_float, env_int, env_str, target

DEFAULT_MAX_LOG_BYTES = 8 * 1024 * 1024
CREATES_PER_CORE = 1  # creates spawning at once per core the supervisor may use (WGS_MAX_CONCURRENT_CREATES)
DEFAULT_CREATE_QUEUE_SECONDS = 0.2  # a create waits for a slot at most this long (well under a 10 s deadline)


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, less a cgroup CPU quota (v2 cpu.max, v1
    cfs_quota/period), as a container's CPU limit is set."""
    cores = len(os.sched_getaffinity(0))
    for quota_file, period_file in ((cgroup_root / "cpu.max", None),
                                    (cgroup_root / "cpu" / "cpu.cfs_quota_us", cgroup_root / "cpu" / "cpu.cfs_period_us")):
        try:
            parts = quota_file.read_text().split()
            quota = parts[0]
            period = parts[1] if period_file is None else period_file.read_text().strip()
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    return max(1, cores)


def default_concurrent_creates() -> int:
    """What the machine can serve at once: CREATES_PER_CORE per usable core (2 to 32). A create is
    mostly CPU (two graph transactions, a run monitor's start, the supervisor's own work): more at once
    only stretch each one — on 2 cores, 4 at once served no more than 2 and doubled the p99 of accepted
    calls (docs/performance.md, "Overload")."""
    return min(32, max(2, CREATES_PER_CORE * usable_cores()))


def default_supervisor_id(state_dir: Path) -> str:
    """`<host>-<hash of host and state dir>`: stable across restarts of one stack, distinct per stack."""
    host = socket.gethostname()
    return f"{host}-{hashlib.sha256(f'{host}:{state_dir}'.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class SupervisorSettings:
    state_dir: Path
    supervisor_id: str
    lease_seconds: int
    max_live_chats: int
    stop_grace: float
    max_log_bytes: int
    graph_target: str
    default_cwd: str
    policy: policy.PolicyConfig
    advertise_address: str = ""
    max_concurrent_creates: int = 2  # creates spawning at once; more wait (bounded) or are refused
    create_queue_seconds: float = DEFAULT_CREATE_QUEUE_SECONDS  # longest wait for a slot, then RESOURCE_EXHAUSTED
    chat_memory_bytes: int = 40 * 1024 * 1024  # what one live chat costs (agent + monitor), for admission

    @classmethod
    def from_env(cls, state_dir: Path) -> SupervisorSettings:
        return cls(
            state_dir=state_dir,
            supervisor_id=env_str("WGS_SUPERVISOR_ID", default_supervisor_id(state_dir)),
            lease_seconds=env_int("WGS_LEASE_SECONDS", 30, minimum=3, maximum=3600),
            max_live_chats=env_int("WGS_MAX_LIVE_CHATS", 100, minimum=0),
            stop_grace=env_float("WGS_STOP_GRACE_SECONDS", 5.0),
            max_log_bytes=env_int("WGS_MAX_RUN_LOG_BYTES", DEFAULT_MAX_LOG_BYTES, minimum=0),
            graph_target=target("graph"),
            default_cwd=os.getcwd(),
            policy=policy.PolicyConfig.from_env(),
            advertise_address=env_str("WGS_SUPERVISOR_ADVERTISE_ADDR", ""),  # "" = the bound listen address
            max_concurrent_creates=env_int("WGS_MAX_CONCURRENT_CREATES", default_concurrent_creates(), minimum=1,
                                           maximum=1024),
            create_queue_seconds=env_float("WGS_CREATE_QUEUE_SECONDS", DEFAULT_CREATE_QUEUE_SECONDS),
            chat_memory_bytes=env_int("WGS_CHAT_MEMORY_BYTES", 40 * 1024 * 1024, minimum=0),
        )
