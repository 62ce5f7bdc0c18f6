"""Throwaway certificates for 127.0.0.1: a self-signed one for fakes that serve https, and a small
CA with server and client certificates for the services' TLS and mutual TLS."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def self_signed(tmp: Path) -> tuple[str, str]:
    """(certificate path, key path), valid one day for IP 127.0.0.1; needs the openssl CLI."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@dataclass(frozen=True)
class Pki:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate, in the
    layout cert-manager writes into a Secret (tls.crt, tls.key, ca.crt) per directory."""

    ca: str  # ca.crt
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def ca_signed(tmp: Path, name: str = "pki") -> Pki:
    """A CA plus a server and a client certificate it signed (valid one day); needs the openssl CLI."""
    root = tmp / name
    for sub in ("server", "client"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ca_key, ca = root / "ca.key", root / "ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN=wgs test CA {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(ca_key), "-out", str(ca))
    for sub, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"),
                     ("client", "extendedKeyUsage=clientAuth")):
        key, csr, crt, extfile = (root / sub / "tls.key", root / sub / "tls.csr", root / sub / "tls.crt",
                                  root / sub / "ext.cnf")
        extfile.write_text(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={sub}", "-keyout", str(key), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-days", "1", "-extfile", str(extfile), "-out", str(crt))
        (root / sub / "ca.crt").write_bytes(ca.read_bytes())
    return Pki(str(ca), str(root / "server" / "tls.crt"), str(root / "server" / "tls.key"),
               str(root / "client" / "tls.crt"), str(root / "client" / "tls.key"))
