"""Redaction of injected secrets."""

from __future__ import annotations

from services.supervisor.redact import REDACTED, Redactor


def test_text_redacts_exact_values_longest_first() -> None:
    r = Redactor(["sk-abcdef123456", "sk-abcdef123456-extra", "", "ab"])
    out = r.text("key sk-abcdef123456-extra and sk-abcdef123456; ab stays")
    assert "sk-abc" not in out and out.count(REDACTED) == 2 and "ab stays" in out


def test_argv_hides_secret_flags_and_values() -> None:
    r = Redactor(["hunter22secret"])
    shown = r.argv(["agent", "--api-key", "whatever", "--token=abc", "--model", "m",
                    "--x", "pre-hunter22secret", "--auth-token", "t"])
    assert shown == ["agent", "--api-key", REDACTED, f"--token={REDACTED}", "--model", "m",
                     "--x", f"pre-{REDACTED}", "--auth-token", REDACTED]


def test_empty_redactor_is_identity() -> None:
    r = Redactor()
    assert not r and r.text("x") == "x" and r.argv(["a", "b"]) == ["a", "b"]
