"""Property-based fuzzing of every RPC of every service, over real processes (tests/harness.py).

For each method: requests drawn from its message descriptor (tests/fuzz/strategies.py), sent with a
supervisor token (the widest role, so the calls reach the service code); for the methods agents may
call, also with the token of the live agent of .chat-3; and malformed request bytes sent through a
generic channel call with raw serializers, with and without a token. Asserted: no INTERNAL, no
UNKNOWN, no traceback in the services' logs (nor an ERROR record from a library: grpc,
OpenTelemetry, asyncio), no file created outside the state dir, every service still SERVING, and the
bystander — a process of the test's own whose pid the requests name as a run's agent or monitor —
never signalled. Reproducible (derandomize) and bounded twice: a few dozen examples per method, and
a wall-clock budget (FUZZ_BUDGET_SECONDS for all the fuzzing tests together, shared out as they run:
each test gets the budget left in proportion to its examples among those of the tests left, so
every method is fuzzed in every phase).
A test whose share is spent stops sending (the rest of its examples are drawn but not sent); the
outcome checks at the end run whatever was sent, and the report says how many examples were cut.
The whole module stays under 2 minutes on the 2-core CI machine (docs/security.md, "Clean
rejections", has the figures).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import KNOWN_CHATS, SUPERVISOR_ID, malformed, messages
from tests.harness import REPO, ServiceProcess, authed_channel, kill_agents, start_service, token
from wgs.common import auth
from wgs.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    dispatch_pb2,
    graph_pb2,
    graph_pb2_grpc,
    runtime_service_pb2,
    runtime_service_pb2_grpc,
    supervisor_pb2,
    task_pb2,
)

# service → (pb2 module, process serving it)
SERVICES: dict[str, tuple[Any, str]] = {
    "wgs.v1.ChatService": (chat_pb2, "supervisor"),
    "wgs.v1.SupervisorService": (supervisor_pb2, "supervisor"),
    "wgs.v1.GraphService": (graph_pb2, "graph"),
    "wgs.v1.RuntimeService": (runtime_service_pb2, "graph"),
    "wgs.v1.DispatchService": (dispatch_pb2, "dispatch"),
    "grpc.health.v1.Health": (health_pb2, "graph"),
}
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
UNARY_TIMEOUT = 10.0
# A valid watch waits for news: its first answer or this deadline ends the example. A watch answers
# what is stored at once (well under 50 ms here), so 0.25 s still reaches the handlers; a deadline
# that ends one is a client deadline, itself a path the fuzzing checks (no ERROR record for it).
STREAM_TIMEOUT = 0.25
EXAMPLES = {"unary": 120, "stream": 20, "raw": 50, "agent": 40}
# Wall-clock seconds for all the fuzzing tests together (the stack's start and the final checks
# come on top: ~10 s more). MIN_SHARE: a test always gets at least this long.
FUZZ_BUDGET_SECONDS = float(os.environ.get("WGS_FUZZ_BUDGET_SECONDS", "80"))
MIN_SHARE = 0.2
FUZZ_SETTINGS = {"deadline": None, "derandomize": True, "database": None, "print_blob": True,
                 "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much]}


@dataclass
class Budget:
    """The fuzzing tests' shared wall-clock budget."""

    seconds: float
    examples_left: int  # of the fuzzing tests not started yet
    started: float | None = None
    tests: list[str] = field(default_factory=list)  # the fuzzing tests that ran, in order
    sent: Counter[str] = field(default_factory=Counter)  # test → examples sent
    cut: Counter[str] = field(default_factory=Counter)  # test → examples drawn but not sent

    def share(self, test: str, examples: int) -> float:
        """Called as a test of `examples` examples starts: the monotonic time by which it must stop
        sending (its part of the budget left, by its examples, and at least MIN_SHARE)."""
        self.tests.append(test)
        now = time.monotonic()
        if self.started is None:
            self.started = now
        left = max(0.0, self.started + self.seconds - now)
        share = max(MIN_SHARE, left * examples / max(examples, self.examples_left))
        self.examples_left -= examples
        return now + share

    def spent(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started


@dataclass
class Stack:
    state: Path
    procs: dict[str, ServiceProcess]
    outside_before: set[str]
    bystander: subprocess.Popen[bytes]  # not started by any service: must never be signalled
    budget: Budget
    bad: list[str] = field(default_factory=list)  # "method: code details" of every INTERNAL/UNKNOWN
    codes: Counter[str] = field(default_factory=Counter)  # "method code" → count, for the report

    def sending(self, test: str, until: float) -> bool:
        """Whether this example is sent: the test's share of the budget is not spent yet."""
        if time.monotonic() < until:
            self.budget.sent[test] += 1
            return True
        self.budget.cut[test] += 1
        return False


def _outside_files(state: Path) -> set[str]:
    """Files where a service could wrongly write: next to the state dir (where the stack's TMPDIR
    is, so temporary files count), in the repository (the services' and default agents' working
    directory), and in /tmp's top level."""
    seen: set[str] = set()
    for root in (state.parent, REPO):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", "__pycache__", ".mypy_cache", ".hypothesis",
                                                            ".ruff_cache", ".pytest_cache", state.name)]
            seen.update(os.path.join(dirpath, f) for f in filenames)
    seen.update(os.path.join("/tmp", f) for f in os.listdir("/tmp") if os.path.isfile(os.path.join("/tmp", f)))
    return seen


def _could_be_ours(path: str, state: Path) -> bool:
    """Other processes (test runs, helpers, installs) share /tmp: there, only names this stack could
    have produced count — from the strings the requests carry or the stack's own names."""
    if not path.startswith("/tmp/"):
        return True
    name = path[len("/tmp/"):]
    return any(mark in name for mark in (".chat-", "fuzz", SUPERVISOR_ID, state.parent.name, "passwd", "environ"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("fuzz") / "state"
    traced = {"OTEL_SDK_DISABLED": "false"}  # spans to <state>/traces: the instrumentation is fuzzed too
    tmp = state.parent / "tmp"  # temporary files of the stack (and its agents) land where they are seen
    tmp.mkdir(parents=True)
    traced.update({"TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp)})
    procs: dict[str, ServiceProcess] = {}
    # Its own session and process group, as a run monitor's: as tempting a target as can be.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
    try:
        procs["graph"] = start_service("graph", state, traced)
        procs["dispatch"] = start_service("dispatch", state, traced)
        procs["supervisor"] = start_service("supervisor", state, {
            **traced, "WGS_GRAPH_ADDR": procs["graph"].address, "WGS_DISPATCH_ADDR": procs["dispatch"].address,
            "WGS_SUPERVISOR_ID": SUPERVISOR_ID, "WGS_RESTART_MAX_FAILURES": "1", "WGS_STOP_GRACE_SECONDS": "1"})
        _seed(procs)
        examples = sum(_examples(phase, m) for phase in ("agent", "generated", "malformed")
                       for _, m in (AGENT_METHODS if phase == "agent" else METHODS))
        yield Stack(state, procs, _outside_files(state), bystander, Budget(FUZZ_BUDGET_SECONDS, examples))
    finally:
        for proc in reversed(list(procs.values())):
            proc.terminate()
        kill_agents(state)
        bystander.kill()
        bystander.wait()


def _seed(procs: dict[str, ServiceProcess]) -> None:
    """Things for the fuzzer to find (strategies.KNOWN_CHATS): .chat-1 and .chat-2 recorded in the graph
    only, .chat-3 a real chat of the supervisor with a live agent; tasks task-1 and task-2."""
    with authed_channel(procs["graph"].address, auth.SUPERVISOR) as ch:
        graph = graph_pb2_grpc.GraphServiceStub(ch)
        runtime = runtime_service_pb2_grpc.RuntimeServiceStub(ch)
        for _ in range(2):
            runtime.CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(
                supervisor_id=SUPERVISOR_ID, lease_seconds=600), timeout=10)
        for task in ("task-1", "task-2"):
            graph.CreateTask(graph_pb2.CreateTaskRequest(id=task, title=task), timeout=10)
    with authed_channel(procs["supervisor"].address) as ch:
        sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
        chat = chat_pb2_grpc.ChatServiceStub(ch).CreateChat(chat_pb2.CreateChatRequest(command=sleeper), timeout=20)
        assert chat.chat.id == KNOWN_CHATS[2]


def _methods() -> list[tuple[str, MethodDescriptor]]:
    out = []
    for service, (module, _) in SERVICES.items():
        for method in module.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods:
            out.append((service, method))
    return out


METHODS = _methods()


def _examples(phase: str, method: MethodDescriptor) -> int:
    """max_examples of a fuzzing test: `phase` agent, generated or malformed."""
    if phase == "malformed":
        return EXAMPLES["raw"]
    if method.server_streaming:
        return EXAMPLES["stream"]
    return EXAMPLES["agent" if phase == "agent" else "unary"]
IDS = [f"{s.rsplit('.', 1)[1]}.{m.name}" for s, m in METHODS]


def _call(stack: Stack, service: str, method: MethodDescriptor, payload: bytes, tok: str | None) -> None:
    """Send raw request bytes; record INTERNAL/UNKNOWN answers."""
    address = stack.procs[SERVICES[service][1]].address
    path = f"/{service}/{method.name}"
    metadata = [("authorization", f"Bearer {tok}")] if tok else None
    with grpc.insecure_channel(address) as channel:
        try:
            if method.server_streaming:
                call = channel.unary_stream(path)(payload, timeout=STREAM_TIMEOUT, metadata=metadata)
                try:
                    next(iter(call), None)
                finally:
                    call.cancel()
            else:
                channel.unary_unary(path)(payload, timeout=UNARY_TIMEOUT, metadata=metadata)
            stack.codes[f"{path} OK"] += 1
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            stack.codes[f"{path} {code.name}"] += 1
            if code in BAD_CODES:
                stack.bad.append(f"{path}: {code.name} {exc.details()}")  # type: ignore[attr-defined]


AGENT_METHODS = [(s, m) for s, m in METHODS if (rule := auth.CALLS.get(f"/{s}/{m.name}")) and rule.agent]


@pytest.mark.parametrize(("service", "method"), AGENT_METHODS, ids=[f"{s.rsplit('.', 1)[1]}.{m.name}"
                                                                    for s, m in AGENT_METHODS])
def test_generated_requests_as_an_agent(stack: Stack, service: str, method: MethodDescriptor) -> None:
    """The agent path of the role check (own chat, own run, live run: the graph reads the record).
    Runs first, while the agent of .chat-3 lives; most requests name its chat and run."""
    tok = token(auth.AGENT, KNOWN_CHATS[2], 1)
    n = _examples("agent", method)
    test = f"agent {service}/{method.name}"
    until = stack.budget.share(test, n)

    @settings(max_examples=n, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(messages(method.input_type, bystander=stack.bystander.pid), st.integers(0, 3))
    def run(request: Message, mix: int) -> None:
        if not stack.sending(test, until):
            return
        if mix != 3:  # three in four: a request the agent may make, as drawn otherwise
            fields = request.DESCRIPTOR.fields_by_name
            request.chat_id = KNOWN_CHATS[2]  # type: ignore[attr-defined]
            if "run_number" in fields:
                request.run_number = 1  # type: ignore[attr-defined]
            if "role" in fields:
                request.role = task_pb2.MESSAGE_ROLE_ASSISTANT  # type: ignore[attr-defined]
        _call(stack, service, method, request.SerializeToString(), tok)

    run()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=IDS)
def test_generated_requests(stack: Stack, service: str, method: MethodDescriptor) -> None:
    tok = token(auth.SUPERVISOR)
    n = _examples("generated", method)
    test = f"generated {service}/{method.name}"
    until = stack.budget.share(test, n)

    @settings(max_examples=n, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(messages(method.input_type, bystander=stack.bystander.pid))
    def run(request: Message) -> None:
        if stack.sending(test, until):
            _call(stack, service, method, request.SerializeToString(), tok)

    run()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=IDS)
def test_malformed_bytes(stack: Stack, service: str, method: MethodDescriptor) -> None:
    tok = token(auth.SUPERVISOR)
    test = f"malformed {service}/{method.name}"
    until = stack.budget.share(test, _examples("malformed", method))

    @settings(max_examples=_examples("malformed", method), **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(malformed(method.input_type), st.booleans())
    def run(payload: bytes, with_token: bool) -> None:
        if stack.sending(test, until):
            _call(stack, service, method, payload, tok if with_token else None)

    run()


def test_no_internal_no_traceback_no_escape_and_still_serving(stack: Stack) -> None:
    """Runs after the fuzzing above (pytest keeps file order)."""
    assert not stack.bad, f"{len(stack.bad)} INTERNAL/UNKNOWN answers, e.g.:\n" + "\n".join(stack.bad[:20])
    for name, proc in stack.procs.items():
        log = proc.stderr()
        assert "Traceback" not in log, f"{name} logged a traceback:\n{log[log.index('Traceback') - 2000:][:6000]}"
        assert '"exception":' not in log, f"{name} logged an exception"
        # ERROR records of our own describe agents' failures (a fuzzed command that does not exist);
        # one from a library (grpc, OpenTelemetry, asyncio) means a request broke something.
        foreign = [line for line in log.splitlines()
                   if ('"level": "ERROR"' in line or '"level": "CRITICAL"' in line) and '"logger": "wgs.' not in line]
        assert not foreign, f"{name} logged errors:\n" + "\n".join(foreign[:10])
    assert stack.bystander.poll() is None, f"the bystander (pid {stack.bystander.pid}) was killed: {stack.bystander.returncode}"
    new = sorted(_outside_files(stack.state) - stack.outside_before)
    new = [p for p in new if _could_be_ours(p, stack.state)]
    assert not new, f"files created outside the state dir: {new[:20]}"
    for name, proc in stack.procs.items():
        with grpc.insecure_channel(proc.address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
        assert proc.proc.poll() is None, f"{name} exited"
    total = sum(stack.codes.values())
    budget = stack.budget
    # The budget shares time out, it never drops a method: each fuzzing test sent some of its examples.
    assert budget.tests and all(budget.sent[t] > 0 for t in budget.tests), [t for t in budget.tests
                                                                            if not budget.sent[t]]
    cut = sum(budget.cut.values())
    print(f"fuzz: {total} calls in {budget.spent():.1f}s (budget {budget.seconds:g}s); {cut} examples drawn "
          f"but not sent, in {len(budget.cut)} tests{': ' + ', '.join(sorted(budget.cut)) if cut else ''}")
    print("fuzz: answers: " + ", ".join(f"{k}={v}" for k, v in sorted(stack.codes.items())))
