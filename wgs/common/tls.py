"""Transport security from certificate files named by environment variables.

One set of variables per process, in the layout cert-manager writes into a Secret (tls.crt,
tls.key, ca.crt):

- WGS_TLS_CERT_FILE + WGS_TLS_KEY_FILE: the process's certificate chain and key. A service serves
  TLS with them; a client (the supervisor calling graph, the CLI, an agent) presents them as its
  client certificate when given.
- WGS_TLS_CA_FILE: CA bundle. Clients verify the server with it (else the system roots); a service
  with WGS_TLS_CLIENT_AUTH=1 requires client certificates signed by it (mutual TLS).
- WGS_TLS_SERVER_NAME: the name clients expect in the server's certificate when it differs from
  the host they dial.

A client uses TLS as soon as WGS_TLS_CA_FILE or WGS_TLS_CERT_FILE is set. A service re-reads its
certificate and key when the files change (cert-manager renews them in place): new connections get
the new certificate without a restart.

A service refuses to listen without TLS on an address other than loopback, unless
WGS_ALLOW_INSECURE_LISTEN=1 (then it logs a WARNING).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from wgs.common.errors import ConfigError
from wgs.common.logs import fields
from wgs.common.settings import env_str

log = logging.getLogger("wgs.tls")

CERT_VAR = "WGS_TLS_CERT_FILE"
KEY_VAR = "WGS_TLS_KEY_FILE"
CA_VAR = "WGS_TLS_CA_FILE"
CLIENT_AUTH_VAR = "WGS_TLS_CLIENT_AUTH"
SERVER_NAME_VAR = "WGS_TLS_SERVER_NAME"
ALLOW_INSECURE_VAR = "WGS_ALLOW_INSECURE_LISTEN"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    value = env_str(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} must be 1 or 0")


def _read(var: str, path: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"{var}={path}: cannot read it: {exc.strerror}") from None
    if not data.strip():
        raise ConfigError(f"{var}={path} is empty")
    return data


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    client_auth: bool = False
    server_name: str = ""

    @classmethod
    def from_env(cls) -> TlsConfig:
        cfg = cls(
            cert_file=env_str(CERT_VAR, ""), key_file=env_str(KEY_VAR, ""), ca_file=env_str(CA_VAR, ""),
            client_auth=env_flag(CLIENT_AUTH_VAR), server_name=env_str(SERVER_NAME_VAR, ""),
        )
        if bool(cfg.cert_file) != bool(cfg.key_file):
            have, missing = (CERT_VAR, KEY_VAR) if cfg.cert_file else (KEY_VAR, CERT_VAR)
            raise ConfigError(f"{have} is set but {missing} is not: a certificate needs its key")
        return cfg

    @property
    def serves_tls(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def dials_tls(self) -> bool:
        return bool(self.ca_file or self.cert_file)

    def describe(self) -> str:
        if not self.serves_tls:
            return "plaintext"
        return "mutual TLS" if self.client_auth else "TLS"


# ---------------------------------------------------------------------------------------------
# server side


class _Reloader:
    """Certificate fetcher for grpc.dynamic_ssl_server_credentials: re-reads the files when their
    modification times change (checked on new handshakes, at most once a second)."""

    def __init__(self, cfg: TlsConfig) -> None:
        self.cfg = cfg
        self._stamp = self._stamps()
        self._checked = 0.0

    def _stamps(self) -> tuple[float, ...]:
        out = []
        for path in (self.cfg.cert_file, self.cfg.key_file, self.cfg.ca_file):
            try:
                out.append(os.stat(path).st_mtime if path else 0.0)
            except OSError:
                out.append(-1.0)
        return tuple(out)

    def initial(self) -> Any:
        return _certificate_configuration(self.cfg)

    def __call__(self) -> Any:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return None
        self._checked = now
        stamp = self._stamps()
        if stamp == self._stamp:
            return None
        try:
            config = _certificate_configuration(self.cfg)
        except ConfigError as exc:  # half-written renewal: keep serving the old certificate
            log.warning("TLS certificate files changed but cannot be loaded (%s); keeping the old ones", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self.cfg.cert_file, extra=fields(path=self.cfg.cert_file))
        return config


def _certificate_configuration(cfg: TlsConfig) -> Any:
    key = _read(KEY_VAR, cfg.key_file)
    chain = _read(CERT_VAR, cfg.cert_file)
    roots = _read(CA_VAR, cfg.ca_file) if cfg.ca_file else None
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)


def server_credentials(cfg: TlsConfig) -> grpc.ServerCredentials:
    """TLS (or mutual TLS with WGS_TLS_CLIENT_AUTH) credentials; ConfigError naming a bad file."""
    if cfg.client_auth and not cfg.ca_file:
        raise ConfigError(f"{CLIENT_AUTH_VAR}=1 needs {CA_VAR}: the CA that signs the client certificates")
    reloader = _Reloader(cfg)
    try:
        return grpc.dynamic_ssl_server_credentials(reloader.initial(), reloader,
                                                   require_client_authentication=cfg.client_auth)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot use the TLS files {cfg.cert_file} / {cfg.key_file}: {exc}") from None


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(name: str, host: str, cfg: TlsConfig) -> None:
    """Refuse a plaintext listener off loopback unless WGS_ALLOW_INSECURE_LISTEN=1 (then warn)."""
    if cfg.serves_tls or is_loopback(host):
        return
    if not env_flag(ALLOW_INSECURE_VAR):
        raise ConfigError(
            f"{name} listens on {host!r} (not loopback) without TLS: anyone on the network could read the calls "
            f"and their tokens. Set {CERT_VAR} and {KEY_VAR} (see docs/security.md), listen on 127.0.0.1, or set "
            f"{ALLOW_INSECURE_VAR}=1 if the network is private")
    log.warning("%s listens on %s without TLS (%s=1): calls and their tokens travel in cleartext", name, host,
                ALLOW_INSECURE_VAR, extra=fields(address=host))


# ---------------------------------------------------------------------------------------------
# client side


def channel_credentials(cfg: TlsConfig) -> grpc.ChannelCredentials | None:
    """Credentials for dialing a service, or None for plaintext (no TLS variable set)."""
    if not cfg.dials_tls:
        return None
    roots = _read(CA_VAR, cfg.ca_file) if cfg.ca_file else None
    key = _read(KEY_VAR, cfg.key_file) if cfg.cert_file else None
    chain = _read(CERT_VAR, cfg.cert_file) if cfg.cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)


def channel_options(cfg: TlsConfig) -> list[tuple[str, Any]]:
    if cfg.dials_tls and cfg.server_name:
        return [("grpc.ssl_target_name_override", cfg.server_name)]
    return []
