"""Start real wgs services as processes on free loopback ports, for integration tests.

Each service binds 127.0.0.1:0 and reports its port through WGS_ADDRESS_FILE, so there is no race
for free ports. Waiting is on events (the address file appearing, health SERVING), bounded.

Authentication is on, as in production: every process started with `base_env` shares this test
run's stack secret (`secret_file()`, WGS_AUTH_SECRET_FILE), and tests talk to the services through
`authed_channel(address, role)`, which presents a token of that role.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wgs.common import auth
from wgs.common.clients import aio_channel, sync_channel

REPO = Path(__file__).resolve().parent.parent
_SECRET_FILE: Path | None = None


def secret_file() -> Path:
    """This test run's stack secret (random, 0600), created on first use and removed at exit."""
    global _SECRET_FILE
    if _SECRET_FILE is None:
        folder = Path(tempfile.mkdtemp(prefix="wgs-test-secret-"))
        atexit.register(shutil.rmtree, folder, True)
        path = folder / "secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32).hex().encode())
        os.close(fd)
        _SECRET_FILE = path
    return _SECRET_FILE


def secret() -> bytes:
    return auth.read_secret(secret_file())


def token(role: str = auth.CLIENT, chat_id: str = "", run: int = 0) -> str:
    """A token of this test run's stack for `role` (agents: for `chat_id` run `run`)."""
    return auth.mint_token(secret(), auth.Identity(role, chat_id=chat_id, run=run))


def authed_channel(address: str, role: str = auth.CLIENT, *, chat_id: str = "", run: int = 0) -> grpc.Channel:
    """A blocking channel to a test service presenting a token of `role` (use it with `with`)."""
    return sync_channel(address, token=token(role, chat_id, run))


def authed_aio_channel(address: str, role: str = auth.CLIENT, *, chat_id: str = "", run: int = 0
                       ) -> grpc.aio.Channel:
    return aio_channel(address, token=token(role, chat_id, run))


def test_database_urls() -> list[str]:
    """Database back-ends every graph test runs on: SQLite always, PostgreSQL when configured."""
    urls = ["sqlite"]
    if os.environ.get("WGS_TEST_DATABASE_URL"):
        urls.append("postgresql")
    return urls


test_database_urls.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """Yield a SQLAlchemy URL of an empty database of the given kind, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'graph.db'}"
        return
    import sqlalchemy as sa

    base = os.environ["WGS_TEST_DATABASE_URL"]
    name = f"wgs_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(base).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    address: str
    stderr_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def base_env(state_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WGS_", "OTEL_"))}
    env.update(
        {
            "WGS_STATE_DIR": str(state_dir),
            "WGS_LOG_FORMAT": "json",
            "WGS_SHUTDOWN_GRACE_SECONDS": "5",
            "OTEL_SDK_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
            "WGS_AUTH_SECRET_FILE": str(secret_file()),
        }
    )
    if extra:
        env.update(extra)
    return env


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    return grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)


def tls_credentials(ca: str, client: Any = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting `ca` (a PEM file), with `client`'s certificate if given
    (tests.fakes.tls.Pki)."""
    roots = Path(ca).read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(roots)
    return grpc.ssl_channel_credentials(roots, Path(client.client_key).read_bytes(),
                                        Path(client.client_cert).read_bytes())


def wait_serving(address: str, service: str = "", timeout: float = 20.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
    """Block until the health service reports SERVING (uses Watch: event-driven)."""
    deadline = time.monotonic() + timeout
    with _channel(address, credentials) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{address} not SERVING within {timeout}s")
            try:
                for resp in stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=remaining):
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"{address} not SERVING within {timeout}s") from None
                time.sleep(0.05)


def start_service(name: str, state_dir: Path, env: dict[str, str] | None = None,
                  timeout: float = 30.0, *, listen: str = "127.0.0.1:0", tls_ca: str | None = None,
                  tls_client: Any = None) -> ServiceProcess:
    """Start `wgs serve NAME` on a free port; return once it is SERVING. A service with TLS is
    checked over TLS trusting `tls_ca` (and with `tls_client`'s certificate for mutual TLS)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    run_dir = state_dir / "test-run"
    run_dir.mkdir(exist_ok=True)
    addr_file = run_dir / f"{name}.addr"
    addr_file.unlink(missing_ok=True)
    stderr_path = run_dir / f"{name}.stderr"
    full_env = base_env(state_dir, env)
    full_env[f"WGS_{name.upper()}_LISTEN"] = listen
    full_env["WGS_ADDRESS_FILE"] = str(addr_file)
    err = open(stderr_path, "ab")  # handed to the child, closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "wgs.cli.main", "serve", name],
        env=full_env, stdout=err, stderr=err, cwd=str(REPO),
    )
    err.close()
    deadline = time.monotonic() + timeout
    while not addr_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{stderr_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{name} did not start within {timeout}s:\n{stderr_path.read_text()}")
        time.sleep(0.02)
    address = addr_file.read_text().strip().replace("0.0.0.0:", "127.0.0.1:")
    creds = tls_credentials(tls_ca, tls_client) if tls_ca else None
    wait_serving(address, timeout=max(1.0, deadline - time.monotonic()), credentials=creds)
    return ServiceProcess(name, proc, address, stderr_path, full_env)


def kill_agents(state_dir: Path) -> int:
    """Kill every run monitor (and so its agent's process group) started for this state dir.

    The supervisor leaves agents running when it stops, so a restarted supervisor can adopt them;
    a test that is done with its stack must end them itself. Returns how many groups were killed.
    """
    killed = 0
    marker = str(state_dir).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"runmon.py" in c for c in cmd) and any(marker in c for c in cmd):
            try:
                os.killpg(int(entry), signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    if killed:  # a SIGKILLed monitor cannot remove its run's cgroup: remove the emptied ones
        from services.supervisor.procs import remove_stale_cgroups

        remove_stale_cgroups(state_dir, wait=5.0)
    return killed
