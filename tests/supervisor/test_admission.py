"""Admission (services/supervisor/admission.py): memory read from the cgroup as the kubelet reads it,
and refusals that say what is full — on a fake cgroup tree written to a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.supervisor.admission import Admission, Memory, own_cgroup_memory
from wgs.common.errors import ResourceExhausted

MIB = 1 << 20


def cgroup_v2(tmp: Path, *, current: int, limit: int | str, inactive_file: int) -> tuple[Path, Path]:
    base = tmp / "sys" / "kubepods" / "pod1"
    base.mkdir(parents=True)
    (base / "memory.current").write_text(f"{current}\n")
    (base / "memory.max").write_text(f"{limit}\n")
    (base / "memory.stat").write_text(f"anon 1234\nfile 999\nactive_file 5\ninactive_file {inactive_file}\n")
    proc = tmp / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    return proc, tmp / "sys"


def test_the_page_cache_of_run_logs_does_not_count_as_used(tmp_path: Path) -> None:
    proc, root = cgroup_v2(tmp_path, current=1500 * MIB, limit=2048 * MIB, inactive_file=600 * MIB)
    assert own_cgroup_memory(proc, root) == Memory(used=900 * MIB, limit=2048 * MIB)


def test_v1_memory_controller(tmp_path: Path) -> None:
    base = tmp_path / "sys" / "memory" / "docker" / "abc"
    base.mkdir(parents=True)
    (base / "memory.usage_in_bytes").write_text(str(700 * MIB))
    (base / "memory.limit_in_bytes").write_text(str(1024 * MIB))
    (base / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {200 * MIB}\n")
    proc = tmp_path / "cgroup"
    proc.write_text("12:memory:/docker/abc\n0::/\n")
    assert own_cgroup_memory(proc, tmp_path / "sys") == Memory(used=500 * MIB, limit=1024 * MIB)


def test_no_limit_and_no_cgroup_mean_unknown(tmp_path: Path) -> None:
    proc, root = cgroup_v2(tmp_path, current=100 * MIB, limit="max", inactive_file=0)
    assert own_cgroup_memory(proc, root).limit == 0
    assert own_cgroup_memory(tmp_path / "missing", root) == Memory(0, 0)


def test_a_chat_that_would_pass_the_limit_is_refused_naming_it() -> None:
    full = Admission(max_concurrent=1, queue_seconds=0, chat_bytes=40 * MIB,
                     memory=lambda: Memory(used=1920 * MIB, limit=2048 * MIB))
    with pytest.raises(ResourceExhausted, match=r"uses 1920 MiB of its 2048 MiB limit .* about 40 MiB"):
        full.check_memory()
    Admission(max_concurrent=1, queue_seconds=0, chat_bytes=40 * MIB,
              memory=lambda: Memory(used=1800 * MIB, limit=2048 * MIB)).check_memory()  # fits under 95 %


async def test_a_full_supervisor_refuses_at_once_with_a_retry_hint_and_a_released_slot_admits_again() -> None:
    adm = Admission(max_concurrent=1, queue_seconds=5.0, chat_bytes=0, max_waiting=0)
    held = await adm.acquire(time_remaining=10.0)
    with pytest.raises(ResourceExhausted, match=r"busy: 1 chats are being created and 0 wait") as err:
        await adm.acquire(time_remaining=10.0)
    assert err.value.retry_after is not None and err.value.retry_after > 0
    held.release()
    held.release()  # idempotent: a done-callback and an error path may both release
    again = await adm.acquire(time_remaining=10.0)  # one slot, free again (not two)
    with pytest.raises(ResourceExhausted):
        await adm.acquire(time_remaining=10.0)
    again.release()


async def test_a_create_waits_no_longer_than_its_caller_can() -> None:
    adm = Admission(max_concurrent=1, queue_seconds=5.0, chat_bytes=0)
    held = await adm.acquire()
    with pytest.raises(ResourceExhausted, match="busy"):
        await adm.acquire(time_remaining=0.0)  # no time left: refused without waiting
    held.release()


def test_the_create_limit_follows_the_cores_a_container_may_use(tmp_path: Path) -> None:
    import os

    from services.supervisor.settings import usable_cores

    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == affinity  # no quota file: the CPUs this process may run on
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core (a Kubernetes limit of 500m)
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(v1) == 1
