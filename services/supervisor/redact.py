"""Redaction of secrets from anything the supervisor shows: stderr tails, argv, log lines.

Secrets are known by exact value: the values the supervisor copies from its own environment into an
agent's environment (plan env entries with `secret` or `value_from_env`). Any occurrence of such a
value is replaced. Argv shown to people additionally hides the value of secret-bearing flags
(`--api-key X`, `--token=X`, ...), whatever the value is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from wgs.common.auth import redact_tokens

REDACTED = "[redacted]"
MIN_SECRET_LEN = 4  # shorter values would redact ordinary text ("1", "on") everywhere

_SECRET_FLAG_RE = re.compile(
    r"^--?[A-Za-z0-9_-]*(api[-_]?key|token|secret|password|passwd|credential|auth)[A-Za-z0-9_-]*$",
    re.IGNORECASE,
)


class Redactor:
    """Replaces known secret values; build one per run from the injected values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also redact these values (e.g. a run's own credentials once they are minted)."""
        values = set(self._secrets) | {s for s in secrets if s and len(s) >= MIN_SECRET_LEN}
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(values, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return redact_tokens(value)  # wgs credentials too, whoever they belong to (an agent may print its env)

    def argv(self, argv: Iterable[str]) -> list[str]:
        """Argv for display: values of secret-bearing flags and known secret values hidden."""
        out: list[str] = []
        hide_next = False
        for arg in argv:
            if hide_next:
                out.append(REDACTED)
                hide_next = False
                continue
            flag, eq, _ = arg.partition("=")
            if _SECRET_FLAG_RE.match(flag):
                if eq:
                    out.append(f"{flag}={REDACTED}")
                    continue
                hide_next = True
                out.append(arg)
                continue
            out.append(self.text(arg))
        return out
