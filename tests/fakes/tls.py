"""A throwaway self-signed certificate for 127.0.0.1, for fakes that serve https."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(tmp: Path) -> tuple[str, str]:
    """(certificate path, key path), valid one day for IP 127.0.0.1; needs the openssl CLI."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)
