"""Memory of one idle native agent (`wgs-agent native`), after it has answered one message.

Starts a real graph service and the fake OpenAI-compatible server, creates a chat, runs the agent
variant, sends one message, waits for the answer, lets the agent idle, and reads Rss/Pss from
/proc/<pid>/smaps_rollup (median of --runs runs). Tracing is on (file exporter), as in production.

Variants:
  agent        - `wgs-agent native` as it is (the hand-written httpx client);
  openai-sdk   - the same agent, plus what using the `openai` SDK would add: `import openai`, an
                 `AsyncOpenAI` client, `opentelemetry-instrumentation-openai-v2` instrumented and
                 `truststore` (needs those packages in the interpreter: pip install openai
                 opentelemetry-instrumentation-openai-v2).

Run: `.venv/bin/python benchmarks/agent_memory.py [--runs 3] [--variants agent,openai-sdk]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from tests.fakes.fake_openai import FakeOpenAI  # noqa: E402
from tests.harness import authed_channel, base_env, start_service, token  # noqa: E402
from wgs.common.auth import AGENT, SUPERVISOR  # noqa: E402
from wgs.v1 import graph_pb2, graph_pb2_grpc, runtime_service_pb2, runtime_service_pb2_grpc, task_pb2  # noqa: E402

SDK_PRELUDE = """
import sys, openai, truststore
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from wgs.common import telemetry
from wgs.common.settings import state_dir
telemetry.setup_tracing("agent", state_dir(), instrument_grpc_client=False, instrument_httpx=True)
OpenAIInstrumentor().instrument()
client = openai.AsyncOpenAI(base_url=sys.argv[-1] + "/v1", api_key="x")
from wgs.agent.main import main
sys.exit(main(sys.argv[1:-1]))
"""


def smaps_rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


def measure(variant: str, graph_addr: str, state: Path, fake: FakeOpenAI, idle: float) -> dict[str, float]:
    # The chat is recorded as a supervisor records it (STARTING: run 1 is being spawned, so run 1's
    # agent token is valid), and the agent presents that token, as under a supervisor.
    with authed_channel(graph_addr, SUPERVISOR) as ch:
        chat = runtime_service_pb2_grpc.RuntimeServiceStub(ch).CreateChatTask(
            runtime_service_pb2.CreateChatTaskRequest(name="mem", supervisor_id="bench", lease_seconds=600),
            timeout=10).task.id
    with authed_channel(graph_addr, SUPERVISOR) as ch:
        stub = graph_pb2_grpc.GraphServiceStub(ch)
        args = ["native", "--chat", chat, "--model", "m", "--endpoint", fake.base_url]
        if variant == "agent":
            argv = [str(Path(sys.executable).parent / "wgs-agent"), *args]
        else:
            argv = [sys.executable, "-c", SDK_PRELUDE, *args, fake.base_url]
        env = base_env(state, {"WGS_GRAPH_ADDR": graph_addr, "WGS_CHAT_ID": chat, "WGS_RUN_NUMBER": "1",
                               "WGS_TOKEN": token(AGENT, chat, 1)})
        env.pop("OTEL_SDK_DISABLED", None)
        env.pop("WGS_AUTH_SECRET_FILE", None)  # an agent has its token, never the stack secret
        with open(state / f"{variant}.stderr", "ab") as err:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            stub.AppendMessage(graph_pb2.AppendMessageRequest(
                chat_id=chat, role=task_pb2.MESSAGE_ROLE_USER, content="hello", request_id="r1"), timeout=10)
            for resp in stub.WatchMessages(graph_pb2.WatchMessagesRequest(chat_id=chat), timeout=60):
                if resp.message.request_id == "r1" and resp.message.role != task_pb2.MESSAGE_ROLE_USER:
                    break
            time.sleep(idle)  # a benchmark: let the idle agent settle before reading its memory
            roll = smaps_rollup(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.returncode not in (0, -15):
                print((state / f"{variant}.stderr").read_text()[-2000:], file=sys.stderr)
    return {"rss_mib": roll["Rss"] / 1024, "pss_mib": roll["Pss"] / 1024,
            "uss_mib": (roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0)) / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--variants", default="agent,openai-sdk")
    ns = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="wgs-agent-mem-") as tmp:
        state = Path(tmp)
        graph = start_service("graph", state / "graph")
        try:
            with FakeOpenAI(models=["m"]) as fake:
                for variant in ns.variants.split(","):
                    runs = [measure(variant, graph.address, state, fake, ns.idle) for _ in range(ns.runs)]
                    results[variant] = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
        finally:
            graph.terminate()
    print(f"{'variant':<12} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8}")
    for variant, r in results.items():
        print(f"{variant:<12} {r['rss_mib']:>8} {r['pss_mib']:>8} {r['uss_mib']:>8}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
