"""procs.spawn latency: one-shot run monitor vs the supervisor's warm (pre-started) monitor.

Usage: python benchmarks/spawn_monitor.py [--n 50] [--pace-ms 30]
Spawns /bin/sleep 30 n times per mode (back to back, then with a pause between spawns, as
CreateChat's other calls give a real supervisor) and kills every run afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.supervisor import procs  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bench(state: Path, n: int, warm: procs.WarmMonitor | None, pace: float) -> list[float]:
    times: list[float] = []
    runs: list[procs.Run] = []
    env = dict(os.environ)
    try:
        for i in range(n):
            if pace:
                time.sleep(pace)
            t0 = time.perf_counter()
            run = procs.spawn(state, f".chat-{i + 1}", 1, ["/bin/sleep", "30"], env, str(state), warm=warm)
            times.append((time.perf_counter() - t0) * 1000)
            runs.append(run)
    finally:
        asyncio.run(stop_all(runs))  # through the monitors: they also remove the runs' cgroups
    return times


async def stop_all(runs: list[procs.Run]) -> None:
    await asyncio.gather(*(procs.stop_group(run, 5.0) for run in runs))
    for run in runs:
        if run.popen is not None:
            run.popen.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--pace-ms", type=float, default=30.0)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for pace in (0.0, ns.pace_ms / 1000):
            for mode in ("one-shot", "warm"):
                state = Path(tmp) / f"{mode}-{pace}"
                state.mkdir()
                warm = procs.WarmMonitor(state) if mode == "warm" else None
                if warm is not None:
                    warm.prime()
                    warm.idle_pid()
                    time.sleep(0.1)  # let the first idle monitor finish its interpreter start-up
                try:
                    times = bench(state, ns.n, warm, pace)
                finally:
                    if warm is not None:
                        warm.close()
                label = f"{mode:8s} {'back-to-back' if not pace else f'paced {pace * 1000:.0f} ms'}"
                print(f"{label:28s} n={len(times)} p50={statistics.median(times):6.2f} ms "
                      f"p99={pct(times, 0.99):6.2f} ms max={max(times):6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
