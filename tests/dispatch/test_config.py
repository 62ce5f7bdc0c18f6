"""Endpoints config: strict parsing with file/line messages, and reload on change keeping the last good."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from services.dispatch.config import (
    DEFAULTS_KEYS,
    ENDPOINT_KEYS,
    ConfigStore,
    config_path,
    load_config,
    parse_config,
)
from wgs.common.errors import ConfigError

P = Path("/cfg/config.toml")

GOOD = """\
[defaults]
model = "qwen3-coder"

[[endpoints]]
name = "lambda01"
url = "https://lambda01.example:30000"
api_key_env = "LAMBDA01_API_KEY"
default = true
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(text, P)
    return str(err.value)


def test_full_config_parses() -> None:
    cfg = parse_config(GOOD, P)
    assert cfg.defaults.model == "qwen3-coder"
    ep = cfg.default_endpoint()
    assert ep is not None and ep.name == "lambda01" and ep.provider == "oai-compat"
    assert ep.api_key_env == "LAMBDA01_API_KEY"


def test_example_config_in_the_repo_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "services" / "dispatch" / "config.example.toml"
    cfg = load_config(example)
    assert cfg.default_endpoint() is not None
    assert cfg.defaults.executor == "native"
    text = example.read_text()
    undocumented = [k for k in ENDPOINT_KEYS + DEFAULTS_KEYS if not re.search(rf"^#? ?{k} = ", text, re.M)]
    assert not undocumented, f"config.example.toml shows no example of {undocumented}"


def test_missing_file_is_empty_config(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "nope.toml")
    assert cfg.endpoints == () and cfg.default_endpoint() is None


def test_executor_alias_in_defaults_is_normalized() -> None:
    assert parse_config('[defaults]\nexecutor = "NEX"\n', P).defaults.executor == "native"


@pytest.mark.parametrize("text, expected", [
    ('[defaults]\nmodel = "m"\ncolour = "red"\n', "line 3: unknown key 'colour' in [defaults]"),
    (GOOD + 'region = "eu"\n', "line 9: unknown key 'region' in [[endpoints]] entry 1"),
    ('[server]\nport = 1\n', "line 1: unknown key 'server'"),
    ('[[endpoints]]\nname = "a"\nurl = "http://a:1"\n[[endpoints]]\nname = "a"\nurl = "http://b:1"\n',
     "line 5: endpoint name 'a' is used twice"),
    ('[[endpoints]]\nname = "a"\nurl = "a.example:1"\n', "line 3: endpoint 'a': url must start with http"),
    ('[[endpoints]]\nname = "a"\nurl = "http://a:1"\ndefault = true\n'
     '[[endpoints]]\nname = "b"\nurl = "http://b:1"\ndefault = true\n',
     "line 8: more than one endpoint has default = true ('a' and 'b')"),
    ('[defaults]\nendpoint = "zz"\n[[endpoints]]\nname = "a"\nurl = "http://a:1"\n',
     "line 2: [defaults] endpoint = 'zz' names no [[endpoints]] entry (known: a)"),
    ('[defaults]\nexecutor = "gemini"\n', "line 2: [defaults] executor = 'gemini' is not a known executor"),
    ('[defaults]\nexecutor = "command"\n', "line 2: [defaults] executor cannot be 'command'"),
    ('[[endpoints]]\nname = "a"\nurl = "http://a:1"\napi_key = "sk-1"\n', "line 4: unknown key 'api_key'"),
    ('[[endpoints]]\nname = "a"\nurl = "http://a:1"\napi_key_env = "sk-123"\n',
     "line 4: endpoint 'a': api_key_env 'sk-123' is not an environment variable name"),
    ('[[endpoints]]\nname = "a"\nurl = "http://a:1"\ncontext_window = -5\n', "line 4: endpoint 'a': context_window"),
    ('[[endpoints]]\nname = "a"\nurl = "http://a:1"\ncontext_window = 100\n', "from 256"),
    ('[[endpoints]]\nname = "a"\nurl = "http://a:1"\ncontext_window = "32k"\n', "line 4: endpoint 'a': context_window"),
    ('[[endpoints]]\nname = "a"\nurl = "http://a:1"\nprovider = "magic"\n', "line 4: endpoint 'a': provider 'magic'"),
    ('[[endpoints]]\nurl = "http://a:1"\n', "line 1: [[endpoints]] entry 1 has no 'name'"),
    ('[defaults]\nmodel = 3\n', "line 2: [defaults] model must be a string"),
    ('[defaults]\nmodel = "claude:opus"\n', "line 2: [defaults] model"),
    ('[defaults\nmodel = "m"\n', "line 1, column 10: invalid TOML"),
    ('[defaults]\nmodel = \n', "line 2, column 9: invalid TOML"),
])
def test_config_errors_name_file_line_and_problem(text: str, expected: str) -> None:
    msg = error_of(text)
    assert msg.startswith(f"{P}, ")
    assert expected in msg


def test_credentials_in_config_url_are_rejected() -> None:
    msg = error_of('[[endpoints]]\nname = "a"\nurl = "https://u:pw@a:1"\n')
    assert "credentials" in msg and "api_key_env" in msg


def test_config_path_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WGS_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("WGS_CONFIG", raising=False)
    assert config_path() == tmp_path / "config.toml"
    monkeypatch.setenv("WGS_CONFIG", str(tmp_path / "other.toml"))
    assert config_path() == tmp_path / "other.toml"


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as editors do, with a distinct mtime."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_store_reloads_on_change_and_keeps_last_good(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.toml"
    store = ConfigStore(path)
    assert store.current().endpoints == ()

    write(path, GOOD)
    ep = store.current().default_endpoint()
    assert ep is not None and ep.name == "lambda01"

    with caplog.at_level(logging.ERROR, logger="wgs.dispatch.config"):
        write(path, GOOD + "bogus = 1\n")
        kept = store.current()
        store.current()
    assert kept.default_endpoint() is not None  # last good config still in force
    assert "unknown key 'bogus'" in store.last_error
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1  # logged once, not on every call

    write(path, GOOD.replace("lambda01", "lambda09"))
    ep = store.current().default_endpoint()
    assert ep is not None and ep.name == "lambda09"
    assert store.last_error == ""

    path.unlink()
    assert store.current().endpoints == ()


def test_store_fails_fast_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[[endpoints]]\nname = 'a'\n")
    with pytest.raises(ConfigError) as err:
        ConfigStore(path)
    assert str(path) in str(err.value) and "has no 'url'" in str(err.value)
