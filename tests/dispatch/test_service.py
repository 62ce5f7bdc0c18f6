"""The dispatch service as a real process: health, reflection, PlanSpawn over the wire, config handling."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from tests.harness import REPO, ServiceProcess, authed_channel, base_env, start_service
from wgs.common.auth import SUPERVISOR
from wgs.v1 import dispatch_pb2, dispatch_pb2_grpc, plan_pb2

TIMEOUT = 10.0
INCIDENT_URL = "https://lambda01.example:30000"

CONFIG = """\
[defaults]
executor = "native"
model = "qwen3-coder"

[[endpoints]]
name = "default-ep"
url = "https://default.example:8000/v1"
api_key_env = "DEFAULT_EP_KEY"
default = true
"""


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    state = tmp_path_factory.mktemp("dispatch")
    config = state / "endpoints.toml"
    write(config, CONFIG)
    proc = start_service("dispatch", state, env={"WGS_CONFIG": str(config), "DEFAULT_EP_KEY": "sk-live-do-not-leak"})
    yield proc
    assert proc.terminate() == 0, proc.stderr()


@pytest.fixture(scope="module")
def channel(service: ServiceProcess) -> Iterator[grpc.Channel]:
    with authed_channel(service.address, SUPERVISOR) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> dispatch_pb2_grpc.DispatchServiceStub:
    return dispatch_pb2_grpc.DispatchServiceStub(channel)


def plan_error(stub: dispatch_pb2_grpc.DispatchServiceStub, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.PlanSpawn(dispatch_pb2.PlanSpawnRequest(**kw), timeout=TIMEOUT)  # type: ignore[arg-type]
    return err.value


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "wgs.v1.DispatchService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=TIMEOUT))
    names = {s.name for s in responses[0].list_services_response.service}
    assert "wgs.v1.DispatchService" in names


def test_incident_inline_url_over_the_wire(stub: dispatch_pb2_grpc.DispatchServiceStub) -> None:
    resp = stub.PlanSpawn(dispatch_pb2.PlanSpawnRequest(
        executor="native", model="qwen3-coder", endpoint=INCIDENT_URL,
        origin=dispatch_pb2.SETTINGS_ORIGIN_REQUEST), timeout=TIMEOUT)
    plan = resp.plan
    argv = list(plan.argv)
    assert argv == ["wgs-agent", "native", "--model", "qwen3-coder", "--endpoint", INCIDENT_URL, "--max-tokens", "1024"]
    assert plan.endpoint.url == INCIDENT_URL and plan.endpoint.source == plan_pb2.CHOICE_SOURCE_REQUEST
    assert plan.executor == "native" and plan.executor_source == plan_pb2.CHOICE_SOURCE_REQUEST
    assert plan.generation.max_tokens == 1024 and plan.generation.max_tokens_source == plan_pb2.CHOICE_SOURCE_BUILTIN
    assert "default.example" not in str(resp)


def test_default_endpoint_plan_carries_key_by_name_only(stub: dispatch_pb2_grpc.DispatchServiceStub) -> None:
    resp = stub.PlanSpawn(dispatch_pb2.PlanSpawnRequest(executor="nex",
                                                        origin=dispatch_pb2.SETTINGS_ORIGIN_CHAT), timeout=TIMEOUT)
    plan = resp.plan
    assert (plan.executor, plan.executor_source) == ("native", plan_pb2.CHOICE_SOURCE_CHAT)
    assert (plan.model, plan.model_source) == ("qwen3-coder", plan_pb2.CHOICE_SOURCE_CONFIG_DEFAULT)
    assert plan.model_source_detail.startswith("config default (")
    assert plan.endpoint.name == "default-ep"
    assert plan.endpoint.source == plan_pb2.CHOICE_SOURCE_CONFIG_DEFAULT
    assert plan.endpoint.source_detail == "config default (endpoint 'default-ep')"
    key = [e for e in plan.env if e.name == "WGS_API_KEY"]
    assert len(key) == 1 and key[0].secret and key[0].value_from_env == "DEFAULT_EP_KEY" and key[0].value == ""
    assert "sk-live-do-not-leak" not in str(resp)


def test_codex_plan_over_the_wire(stub: dispatch_pb2_grpc.DispatchServiceStub) -> None:
    plan = stub.PlanSpawn(dispatch_pb2.PlanSpawnRequest(executor="codex", model="codex:gpt-5"),
                          timeout=TIMEOUT).plan
    assert list(plan.argv[:2]) == ["wgs-agent", "codex"]
    assert "claude" not in " ".join(plan.argv)
    assert not plan.HasField("endpoint")


@pytest.mark.parametrize("kw, code, fragment", [
    ({"executor": "gemini"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown executor 'gemini'"),
    ({"endpoint": "lambda01"}, grpc.StatusCode.FAILED_PRECONDITION,
     "endpoint 'lambda01' is not configured (known: default-ep)"),
    ({"executor": "claude", "endpoint": INCIDENT_URL}, grpc.StatusCode.INVALID_ARGUMENT,
     "does not use an endpoint"),
    ({"command": ["bash"], "model": "m"}, grpc.StatusCode.INVALID_ARGUMENT, "no model"),
    ({"working_dir": "rel"}, grpc.StatusCode.INVALID_ARGUMENT, "absolute"),
    ({"endpoint": "https://u:sk-pw@h:1"}, grpc.StatusCode.INVALID_ARGUMENT, "credentials"),
    ({"origin": 7}, grpc.StatusCode.INVALID_ARGUMENT, "SettingsOrigin"),
])
def test_bad_input_gets_a_clear_status(stub: dispatch_pb2_grpc.DispatchServiceStub, kw: dict[str, object],
                                       code: grpc.StatusCode, fragment: str) -> None:
    err = plan_error(stub, **kw)
    assert err.code() == code
    assert fragment in (err.details() or "")
    assert "Traceback" not in (err.details() or "") and "sk-pw" not in (err.details() or "")


def test_invalid_argument_names_the_field_in_a_bad_request_detail(stub: dispatch_pb2_grpc.DispatchServiceStub) -> None:
    """grpc examples/python/errors: INVALID_ARGUMENT carries a google.rpc.BadRequest field violation."""
    err = plan_error(stub, executor="native", model="m", endpoint=INCIDENT_URL,
                     generation=plan_pb2.GenerationOverrides(temperature=9))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "generation.temperature"
    assert "0 to 2" in bad.field_violations[0].description


def run_with_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.write_text(text)
    env = base_env(tmp_path, {"WGS_CONFIG": str(config), "WGS_DISPATCH_LISTEN": "127.0.0.1:0"})
    return subprocess.run([sys.executable, "-m", "wgs.cli.main", "serve", "dispatch"], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=30)


def test_bad_config_stops_the_service_at_start_with_a_readable_message(tmp_path: Path) -> None:
    done = run_with_config(tmp_path, CONFIG + 'colour = "red"\n')
    assert done.returncode == 2
    config = tmp_path / "config.toml"
    assert f"wgs dispatch: configuration error: {config}, line 10: unknown key 'colour'" in done.stderr
    assert "Traceback" not in done.stderr


def test_unparsable_config_stops_the_service(tmp_path: Path) -> None:
    done = run_with_config(tmp_path, "[[endpoints]\nname = 'a'\n")
    assert done.returncode == 2
    assert "line 1" in done.stderr and "invalid TOML" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_edits_apply_without_restart(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"  # the default location: <state dir>/config.toml
    proc = start_service("dispatch", tmp_path)
    try:
        with authed_channel(proc.address, SUPERVISOR) as ch:
            stub = dispatch_pb2_grpc.DispatchServiceStub(ch)
            req = dispatch_pb2.PlanSpawnRequest(model="m")
            # No file: empty config, so a native chat without endpoint is refused.
            err = plan_error(stub, model="m")
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no endpoint configured" in (err.details() or "")

            write(config, '[[endpoints]]\nname = "a"\nurl = "http://a.example:1"\ndefault = true\n')
            plan = stub.PlanSpawn(req, timeout=TIMEOUT).plan
            assert plan.endpoint.url == "http://a.example:1"

            write(config, '[[endpoints]]\nname = "b"\nurl = "http://b.example:2"\ndefault = true\n')
            plan = stub.PlanSpawn(req, timeout=TIMEOUT).plan
            assert plan.endpoint.url == "http://b.example:2"

            # A bad edit keeps the last good config and says so where it matters.
            write(config, '[[endpoints]]\nname = "c"\nurl = "nope"\ndefault = true\n')
            plan = stub.PlanSpawn(req, timeout=TIMEOUT).plan
            assert plan.endpoint.url == "http://b.example:2"
            err = plan_error(stub, model="m", endpoint="c")
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            details = err.details() or ""
            assert "endpoint 'c' is not configured (known: b)" in details
            assert "latest edit of the config was rejected" in details and "line 3" in details
    finally:
        assert proc.terminate() == 0
    assert "config change rejected" in proc.stderr()
