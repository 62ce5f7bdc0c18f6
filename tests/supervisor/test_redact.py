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


def test_a_secret_inside_a_longer_one_does_not_split_it() -> None:
    # "pass" sorts after "apass1": only longest-first replacement hides all of "apass1".
    r = Redactor(["pass", "apass1"])
    assert r.text("apass1 and pass") == f"{REDACTED} and {REDACTED}"


def test_secrets_of_four_characters_are_redacted_shorter_ones_are_not() -> None:
    r = Redactor(["abcd", "xyz"])
    assert r and r.text("abcd xyz") == f"{REDACTED} xyz"
    assert not Redactor(["xyz", ""])  # nothing to redact: callers fall back to the plan's redactor
