"""TLS and mutual TLS from certificate files (a throwaway CA, tests/fakes/tls.py), for services and
clients, the CLI included; plaintext off loopback refused unless explicitly allowed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fakes.tls import Pki, ca_signed
from tests.harness import REPO, base_env, kill_agents, start_service, token
from wgs.common import auth
from wgs.v1 import graph_pb2, graph_pb2_grpc

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")


def tls_env(pki: Pki, *, mutual: bool = False) -> dict[str, str]:
    env = {"WGS_TLS_CERT_FILE": pki.server_cert, "WGS_TLS_KEY_FILE": pki.server_key, "WGS_TLS_CA_FILE": pki.ca}
    if mutual:
        env["WGS_TLS_CLIENT_AUTH"] = "1"
    return env


def _list_tasks(channel: grpc.Channel) -> None:
    metadata = [("authorization", f"Bearer {token(auth.CLIENT)}")]
    graph_pb2_grpc.GraphServiceStub(channel).ListTasks(graph_pb2.ListTasksRequest(), timeout=5, metadata=metadata)


def _creds(pki: Pki, *, client_cert: bool) -> grpc.ChannelCredentials:
    ca = Path(pki.ca).read_bytes()
    if not client_cert:
        return grpc.ssl_channel_credentials(ca)
    return grpc.ssl_channel_credentials(ca, Path(pki.client_key).read_bytes(), Path(pki.client_cert).read_bytes())


def test_server_tls_refuses_plaintext_and_serves_verified_clients(tmp_path: Path) -> None:
    pki = ca_signed(tmp_path)
    graph = start_service("graph", tmp_path / "state", tls_env(pki), tls_ca=pki.ca)
    try:
        with grpc.insecure_channel(graph.address) as ch, pytest.raises(grpc.RpcError) as err:
            _list_tasks(ch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(graph.address, _creds(pki, client_cert=False)) as ch:
            _list_tasks(ch)
        other = ca_signed(tmp_path, "other")  # a client trusting another CA does not talk to it
        with grpc.secure_channel(graph.address, _creds(other, client_cert=False)) as ch, \
                pytest.raises(grpc.RpcError) as err:
            _list_tasks(ch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        graph.terminate()
    assert '"tls": "TLS"' in graph.stderr()


def test_mutual_tls_requires_a_client_certificate_of_the_ca(tmp_path: Path) -> None:
    pki = ca_signed(tmp_path)
    graph = start_service("graph", tmp_path / "state", tls_env(pki, mutual=True), tls_ca=pki.ca, tls_client=pki)
    try:
        with grpc.secure_channel(graph.address, _creds(pki, client_cert=False)) as ch, \
                pytest.raises(grpc.RpcError) as err:
            _list_tasks(ch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(graph.address, _creds(pki, client_cert=True)) as ch:
            _list_tasks(ch)
    finally:
        graph.terminate()


def test_a_whole_stack_over_mutual_tls_with_the_cli(tmp_path: Path) -> None:
    """graph, dispatch and supervisor with mutual TLS; the supervisor dials graph and dispatch with
    its certificate, the CLI with the client certificate (all from WGS_TLS_* files)."""
    pki = ca_signed(tmp_path)
    state = tmp_path / "state"
    server = tls_env(pki, mutual=True)
    procs = []
    try:
        procs.append(start_service("graph", state, server, tls_ca=pki.ca, tls_client=pki))
        procs.append(start_service("dispatch", state, server, tls_ca=pki.ca, tls_client=pki))
        procs.append(start_service("supervisor", state, {
            **server, "WGS_GRAPH_ADDR": procs[0].address, "WGS_DISPATCH_ADDR": procs[1].address},
            tls_ca=pki.ca, tls_client=pki))
        cli_env = base_env(state, {"WGS_SUPERVISOR_ADDR": procs[2].address, "WGS_TLS_CA_FILE": pki.ca,
                                   "WGS_TLS_CERT_FILE": pki.client_cert, "WGS_TLS_KEY_FILE": pki.client_key})
        code = "import time; print('up', flush=True); time.sleep(60)"
        created = subprocess.run([sys.executable, "-m", "wgs.cli.main", "chat", "create", "--json", "--state-dir",
                                  str(state), "--", sys.executable, "-c", code], env=cli_env, cwd=str(REPO),
                                 capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        chat = json.loads(created.stdout)
        assert chat["state"] == "RUNNING", chat
        plain = base_env(state, {"WGS_SUPERVISOR_ADDR": procs[2].address, "WGS_RPC_TIMEOUT_SECONDS": "3"})
        refused = subprocess.run([sys.executable, "-m", "wgs.cli.main", "chat", "list", "--state-dir", str(state)],
                                 env=plain, cwd=str(REPO), capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and refused.stderr.startswith("wgs: cannot reach the supervisor"), refused
        stopped = subprocess.run([sys.executable, "-m", "wgs.cli.main", "chat", "stop", chat["id"], "--state-dir",
                                  str(state)], env=cli_env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
    finally:
        for proc in reversed(procs):
            proc.terminate()
        kill_agents(state)


def test_certificates_renewed_in_place_are_served_without_a_restart(tmp_path: Path) -> None:
    """cert-manager rewrites tls.crt/tls.key in place: new connections get the new certificate."""
    first, second = ca_signed(tmp_path, "first"), ca_signed(tmp_path, "second")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        shutil.copy(Path(first.server_cert).parent / name, live / name)
    env = {"WGS_TLS_CERT_FILE": str(live / "tls.crt"), "WGS_TLS_KEY_FILE": str(live / "tls.key")}
    graph = start_service("graph", tmp_path / "state", env, tls_ca=first.ca)
    try:
        with grpc.secure_channel(graph.address, _creds(first, client_cert=False)) as ch:
            _list_tasks(ch)
        time.sleep(1.1)  # the reloader looks at the files at most once a second (and mtimes need to differ)
        for name in ("tls.key", "tls.crt"):
            shutil.copy(Path(second.server_cert).parent / name, live / name)
        deadline = time.monotonic() + 15
        while True:  # the first handshake after the change triggers the reload
            try:
                with grpc.secure_channel(graph.address, _creds(second, client_cert=False)) as ch:
                    _list_tasks(ch)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, graph.stderr()
                time.sleep(0.2)
    finally:
        graph.terminate()
    assert "TLS certificate reloaded" in graph.stderr()


def _serve_and_exit(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = base_env(tmp_path, {"WGS_GRAPH_LISTEN": "0.0.0.0:0", **env})
    return subprocess.run([sys.executable, "-m", "wgs.cli.main", "serve", "graph"], env=full, cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)


def test_plaintext_off_loopback_is_refused_unless_allowed(tmp_path: Path) -> None:
    refused = _serve_and_exit(tmp_path, {})
    assert refused.returncode == 2
    assert "WGS_GRAPH_LISTEN listens on '0.0.0.0' (not loopback) without TLS" in refused.stderr
    assert "WGS_ALLOW_INSECURE_LISTEN=1" in refused.stderr and "Traceback" not in refused.stderr
    allowed = start_service("graph", tmp_path / "allowed", {"WGS_ALLOW_INSECURE_LISTEN": "1"}, listen="0.0.0.0:0")
    try:
        warnings = [json.loads(line) for line in allowed.stderr().splitlines() if '"WARNING"' in line]
        assert any("without TLS (WGS_ALLOW_INSECURE_LISTEN=1)" in w["msg"] for w in warnings), allowed.stderr()
    finally:
        allowed.terminate()


def test_the_health_listener_is_plaintext_health_only(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a free port for the probe listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pki = ca_signed(tmp_path)
    graph = start_service("graph", tmp_path / "state", {**tls_env(pki, mutual=True),
                                                        "WGS_HEALTH_LISTEN": f"127.0.0.1:{port}"},
                          tls_ca=pki.ca, tls_client=pki)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="wgs.v1.GraphService"), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                _list_tasks(ch)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        graph.terminate()
