"""Cost of authentication per call: GetTask round trips against a real graph process with a token
(HMAC check + role table) and with WGS_AUTH=off, same machine, same client.

    .venv/bin/python benchmarks/auth_overhead.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from tests.harness import authed_channel, start_service  # noqa: E402
from wgs.common import auth  # noqa: E402
from wgs.v1 import graph_pb2, graph_pb2_grpc  # noqa: E402


def run(channel: grpc.Channel, calls: int) -> list[float]:
    stub = graph_pb2_grpc.GraphServiceStub(channel)
    stub.CreateTask(graph_pb2.CreateTaskRequest(id="bench", title="bench"), timeout=10)
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        stub.GetTask(graph_pb2.GetTaskRequest(id="bench"), timeout=10)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for label, env in (("token", {}), ("WGS_AUTH=off", {"WGS_AUTH": "off"})):
            graph = start_service("graph", Path(tmp) / label.replace("=", "-"), env)
            try:
                channel = authed_channel(graph.address, auth.SUPERVISOR) if not env else grpc.insecure_channel(
                    graph.address)
                with channel:
                    results[label] = run(channel, ns.calls)
            finally:
                graph.terminate()
    for label, times in results.items():
        times.sort()
        print(f"{label:<14} GetTask median {statistics.median(times):.3f} ms  p95 {times[int(len(times) * .95)]:.3f} ms"
              f"  ({len(times)} calls)")


if __name__ == "__main__":
    main()
