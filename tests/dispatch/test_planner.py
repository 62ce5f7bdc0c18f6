"""plan_spawn rules: precedence with sources, aliases, endpoint resolution without fallbacks, argv, env."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.dispatch.config import Config, parse_config
from services.dispatch.planner import EnvVar, PlanRequest, Source, SpawnPlan, plan_spawn
from services.dispatch.values import Generation
from wgs.common.errors import FailedPrecondition, InvalidArgument
from wgs.v1 import plan_pb2

CFG_PATH = Path("/etc/wgs/config.toml")
INCIDENT_URL = "https://lambda01.example:30000"

FULL = """
[defaults]
executor = "native"
model = "qwen3-coder"

[[endpoints]]
name = "default-ep"
url = "https://default.example:8000/v1"
api_key_env = "DEFAULT_EP_KEY"
default = true
context_window = 32768

[[endpoints]]
name = "lambda02"
url = "http://lambda02.example:30000"
provider = "vllm"
"""


def cfg(text: str = FULL) -> Config:
    return parse_config(text, CFG_PATH)


EMPTY = Config(path=CFG_PATH)


def plan(config: Config = EMPTY, **kw: object) -> SpawnPlan:
    return plan_spawn(PlanRequest(**kw), config)  # type: ignore[arg-type]


def k(source: Source | None) -> str | None:
    """The kind of a source: "request", "chat", "config_default", "config_endpoint", "builtin", "none"."""
    if source is None:
        return None
    return plan_pb2.ChoiceSource.Name(source.kind).removeprefix("CHOICE_SOURCE_").lower()  # type: ignore[arg-type]


def value_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- the incident ----------------------------------------------------------------------------------

def test_incident_inline_endpoint_url_is_used_not_the_configured_default() -> None:
    p = plan(cfg(), executor="native", model="qwen3-coder", endpoint=INCIDENT_URL)
    assert p.argv == ["wgs-agent", "native", "--model", "qwen3-coder", "--endpoint", INCIDENT_URL,
                      "--max-tokens", "1024"]
    assert "--chat" not in p.argv  # the agent learns its chat from WGS_CHAT_ID: the plan needs no chat
    assert p.endpoint is not None
    assert p.endpoint.url == INCIDENT_URL
    assert k(p.endpoint.source) == "request"
    assert p.endpoint.name == ""
    assert "default.example" not in " ".join(p.argv) + p.summary
    assert k(p.executor_source) == "request" and k(p.model_source) == "request"
    assert p.summary == (f"executor=native (from request), model=qwen3-coder (from request), "
                         f"endpoint={INCIDENT_URL} (from request), max_tokens=1024 (from built-in default)")
    # The default endpoint's key must not be sent to another server.
    assert all(e.name != "WGS_API_KEY" for e in p.env)


def test_chat_origin_labels_sources_chat() -> None:
    p = plan(cfg(), executor="native", model="m1", endpoint=INCIDENT_URL, origin="chat")
    assert (k(p.executor_source), k(p.model_source)) == ("chat", "chat")
    assert p.endpoint is not None and k(p.endpoint.source) == "chat"


# --- executor --------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["nex", "NEX", "Native", "wg-nex", " native "])
def test_native_aliases_normalize_case_insensitively(spelling: str) -> None:
    p = plan(cfg(), executor=spelling, model="m")
    assert p.executor == "native"
    assert p.argv[:2] == ["wgs-agent", "native"]


def test_unknown_executor_is_invalid_argument_listing_valid_ones() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), executor="gemini", model="m")
    msg = err.value.message
    assert "'gemini'" in msg
    for name in ("native", "claude", "codex", "command", "nex"):
        assert name in msg


def test_executor_defaults_config_then_builtin() -> None:
    p = plan(cfg("[defaults]\nexecutor = \"claude\"\n"))
    assert (p.executor, k(p.executor_source)) == ("claude", "config_default")
    p = plan(cfg(), model="m")
    assert (p.executor, k(p.executor_source)) == ("native", "config_default")
    p = plan(cfg(FULL.replace('executor = "native"\n', "")), model="m")
    assert (p.executor, k(p.executor_source)) == ("native", "builtin")


# --- model -----------------------------------------------------------------------------------------

def test_model_defaults_and_sources() -> None:
    p = plan(cfg())
    assert (p.model, k(p.model_source)) == ("qwen3-coder", "config_default")
    p = plan(cfg(), executor="claude")
    assert (p.model, k(p.model_source)) == ("claude:opus", "builtin")
    p = plan(cfg(), executor="codex")
    assert (p.model, k(p.model_source)) == ("codex:gpt-5", "builtin")


def test_native_without_model_or_default_is_failed_precondition_naming_the_config() -> None:
    with pytest.raises(FailedPrecondition) as err:
        plan(cfg(FULL.replace('model = "qwen3-coder"\n', "")), executor="native")
    assert err.value.message.startswith("no model given and no default model configured")
    assert f"[defaults] model in {CFG_PATH}" in err.value.message


def test_default_model_of_another_executor_is_not_borrowed() -> None:
    config = cfg('[defaults]\nexecutor = "claude"\nmodel = "claude:sonnet"\n'
                 '[[endpoints]]\nname = "e"\nurl = "http://e:1"\ndefault = true\n')
    with pytest.raises(FailedPrecondition) as err:
        plan(config, executor="native")
    assert "'claude:sonnet'" in err.value.message and "pass --model" in err.value.message


def test_model_is_kept_as_given_for_the_agent_and_stripped_for_the_cli() -> None:
    p = plan(cfg(), executor="native", model="nex:qwen3-coder")
    assert value_after(p.argv, "--model") == "nex:qwen3-coder"
    p = plan(cfg(), executor="claude", model="claude:sonnet")
    assert p.argv.count("--model") == 2
    assert p.argv[p.argv.index("--model") + 1] == "claude:sonnet"
    assert p.argv[-2:] == ["--model", "sonnet"]


@pytest.mark.parametrize("model", ["-rf", "has space", "x" * 201, "a;b"])
def test_bad_model_is_invalid_argument(model: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), executor="native", model=model)
    assert "model" in err.value.message


def test_model_prefix_of_another_executor_is_rejected_not_silently_switched() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), executor="claude", model="nex:qwen3-coder")
    assert "'nex'" in err.value.message and "'claude'" in err.value.message
    with pytest.raises(InvalidArgument):
        plan(cfg(), executor="native", model="claude:opus")
    # A ':' that is not a known provider prefix is part of the model name.
    p = plan(cfg(), executor="native", model="deepseek-coder-v2:16b")
    assert value_after(p.argv, "--model") == "deepseek-coder-v2:16b"


# --- endpoint --------------------------------------------------------------------------------------

def test_named_endpoint_is_looked_up_with_its_provider() -> None:
    p = plan(cfg(), executor="native", model="m", endpoint="lambda02")
    assert p.endpoint is not None
    assert p.endpoint.name == "lambda02"
    assert p.endpoint.url == "http://lambda02.example:30000"
    assert k(p.endpoint.source) == "request" and p.endpoint.source.detail == "request: endpoint 'lambda02' from config"
    assert "endpoint 'lambda02' from config" in p.summary
    assert value_after(p.argv, "--endpoint") == "http://lambda02.example:30000"
    assert {e.name: e.value for e in p.env} == {"WGS_ENDPOINT_PROVIDER": "vllm"}


def test_unknown_endpoint_name_is_an_error_even_with_a_default() -> None:
    with pytest.raises(FailedPrecondition) as err:
        plan(cfg(), executor="native", model="m", endpoint="lambda01")
    assert err.value.message.startswith("endpoint 'lambda01' is not configured (known: default-ep, lambda02)")
    assert str(CFG_PATH) in err.value.message


def test_configured_default_endpoint_with_context_window_and_key_env() -> None:
    p = plan(cfg(), executor="native", model="m")
    assert p.endpoint is not None
    assert k(p.endpoint.source) == "config_default" and p.endpoint.source.detail == "config default (endpoint 'default-ep')"
    assert value_after(p.argv, "--endpoint") == "https://default.example:8000/v1"
    assert value_after(p.argv, "--context-window") == "32768"
    assert p.generation is not None and k(p.generation.context_window_source) == "config_endpoint"
    key = [e for e in p.env if e.name == "WGS_API_KEY"]
    assert len(key) == 1
    assert key[0].value_from_env == "DEFAULT_EP_KEY" and key[0].secret and key[0].value == ""


def test_defaults_endpoint_names_the_default() -> None:
    config = cfg('[defaults]\nendpoint = "b"\n[[endpoints]]\nname = "a"\nurl = "http://a:1"\n'
                 '[[endpoints]]\nname = "b"\nurl = "http://b:1"\n')
    p = plan(config, model="m")
    assert p.endpoint is not None and p.endpoint.url == "http://b:1"
    assert k(p.endpoint.source) == "config_default" and p.endpoint.source.detail == "config default (endpoint 'b')"


def test_no_endpoint_and_no_default_is_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition) as err:
        plan(EMPTY, executor="native", model="m")
    assert err.value.message.startswith("no endpoint configured: pass --endpoint URL|NAME")
    assert str(CFG_PATH) in err.value.message
    # Endpoints without a default: the first one is NOT implied.
    config = cfg('[[endpoints]]\nname = "only"\nurl = "http://only:1"\n')
    with pytest.raises(FailedPrecondition) as err:
        plan(config, executor="native", model="m")
    assert "no endpoint configured" in err.value.message and "only" in err.value.message


def test_inline_url_of_a_configured_endpoint_uses_its_key_env() -> None:
    p = plan(cfg(), executor="native", model="m", endpoint="https://DEFAULT.example:8000/v1/")
    assert p.endpoint is not None
    assert k(p.endpoint.source) == "request" and p.endpoint.name == "default-ep"
    assert value_after(p.argv, "--endpoint") == "https://DEFAULT.example:8000/v1/"
    assert any(e.value_from_env == "DEFAULT_EP_KEY" for e in p.env)
    # The agent appends /v1 when missing, so these are the same API as the configured one.
    p = plan(cfg(), executor="native", model="m", endpoint="http://lambda02.example:30000/v1")
    assert p.endpoint is not None and p.endpoint.name == "lambda02" and p.endpoint.provider == "vllm"
    # Another port is another server: nothing borrowed from the config.
    p = plan(cfg(), executor="native", model="m", endpoint="https://default.example:8001/v1")
    assert p.endpoint is not None and p.endpoint.name == "" and p.env == [
        EnvVar(name="WGS_ENDPOINT_PROVIDER", value="oai-compat")]


@pytest.mark.parametrize("url, fragment", [
    ("https://user:sk-secret@host:1", "credentials"),
    ("https://host:1/v1?key=sk-secret", "query"),
    ("ftp://host/x", "http"),
    ("https://host:99999", "URL"),
    ("https://", "host"),
])
def test_bad_inline_urls_are_invalid_argument_without_echoing_secrets(url: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), executor="native", model="m", endpoint=url)
    assert fragment in err.value.message
    assert "sk-secret" not in err.value.message


def test_endpoint_for_claude_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), executor="claude", endpoint=INCIDENT_URL)
    assert "does not use an endpoint" in err.value.message and err.value.field == "endpoint"


def test_codex_on_an_openai_compatible_endpoint_gets_it_with_its_key_by_name_only() -> None:
    p = plan(cfg(FULL.replace('provider = "vllm"', 'provider = "vllm"\napi_key_env = "LAB2_KEY"')),
             executor="codex", model="qwen3-coder", endpoint="lambda02")
    assert p.argv[:4] == ["wgs-agent", "codex", "--model", "qwen3-coder"]
    assert value_after(p.argv, "--endpoint") == "http://lambda02.example:30000"
    assert p.argv[p.argv.index("--") + 1] == "codex"
    assert [(e.name, e.value_from_env, e.secret) for e in p.env] == [("WGS_API_KEY", "LAB2_KEY", True)]
    without = plan(cfg(), executor="codex")  # no endpoint given: codex's own service, no default endpoint
    assert without.endpoint is None and "--endpoint" not in without.argv


# --- claude / codex argv ---------------------------------------------------------------------------

def test_codex_chat_gets_codex_argv_not_claude() -> None:
    p = plan(cfg(), executor="codex", model="codex:gpt-5")
    assert p.argv == ["wgs-agent", "codex", "--model", "codex:gpt-5", "--",
                      "codex", "exec", "--json", "--skip-git-repo-check",
                      "--dangerously-bypass-approvals-and-sandbox", "--model", "gpt-5"]
    assert "claude" not in " ".join(p.argv)
    assert p.endpoint is None and p.env == []
    assert p.summary.endswith("endpoint=none (executor=codex)")


def test_claude_argv() -> None:
    p = plan(EMPTY, executor="claude")
    assert p.argv == ["wgs-agent", "claude", "--model", "claude:opus", "--",
                      "claude", "--print", "--input-format", "stream-json", "--output-format", "stream-json",
                      "--verbose", "--dangerously-skip-permissions", "--model", "opus"]


# --- command chats ---------------------------------------------------------------------------------

def test_command_chat_runs_the_argv_as_given() -> None:
    p = plan(cfg(), command=("bash", "-lc", "echo hi; cat"), working_dir="/srv/work")
    assert (p.executor, k(p.executor_source)) == ("command", "request")
    assert p.argv == ["bash", "-lc", "echo hi; cat"]
    assert p.working_dir == "/srv/work"
    assert p.endpoint is None and p.model == "" and p.env == []
    p = plan(cfg(), executor="Command", command=("x",), origin="chat")
    assert (p.executor, k(p.executor_source)) == ("command", "chat")


@pytest.mark.parametrize("kw, fragment", [
    ({"command": ("bash",), "model": "m"}, "no model"),
    ({"command": ("bash",), "endpoint": INCIDENT_URL}, "no endpoint"),
    ({"command": ("bash",), "executor": "native"}, "cannot run a custom command"),
    ({"executor": "command"}, "needs the command"),
    ({"command": ("",)}, "program"),
    ({"command": ("a\x00b",)}, "NUL"),
])
def test_command_conflicts_are_invalid_argument(kw: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), **kw)
    assert fragment in err.value.message


# --- other inputs ----------------------------------------------------------------------------------

def test_working_dir_must_be_absolute() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), model="m", working_dir="relative/dir")
    assert "absolute" in err.value.message
    assert plan(cfg(), model="m").working_dir == ""
    assert plan(cfg(), model="m", working_dir="/tmp/x").working_dir == "/tmp/x"


def test_api_key_value_never_appears_in_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_EP_KEY", "sk-live-should-not-leak")
    p = plan(cfg(), model="m")
    blob = repr(p)
    assert "sk-live-should-not-leak" not in blob
    assert "DEFAULT_EP_KEY" in blob  # only the variable's name
    assert all("DEFAULT_EP_KEY" not in a for a in p.argv)


def test_every_endpoints_key_variable_is_unset_for_every_agent() -> None:
    """An agent must not inherit keys of endpoints it does not talk to (nor its own under its real name)."""
    text = FULL + '\n[[endpoints]]\nname = "third"\nurl = "https://third.example"\napi_key_env = "THIRD_KEY"\n'
    for p in (plan(cfg(text), endpoint="lambda02"), plan(cfg(text), command=("sleep", "1")),
              plan(cfg(text), executor="claude")):
        assert p.unset_env == ("DEFAULT_EP_KEY", "THIRD_KEY")
    own = plan(cfg(text))
    assert [e.value_from_env for e in own.env if e.name == "WGS_API_KEY"] == ["DEFAULT_EP_KEY"]


# --- generation settings ---------------------------------------------------------------------------

GEN = FULL.replace('context_window = 32768', 'context_window = 32768\nmax_tokens = 512\ntemperature = 0.2\nstop = ["END"]')


def test_generation_settings_come_from_the_chat_then_the_endpoint_then_the_builtin_default() -> None:
    p = plan(cfg(GEN), executor="native", model="m")
    g = p.generation
    assert g is not None
    assert (g.max_tokens, k(g.max_tokens_source)) == (512, "config_endpoint")
    assert (g.temperature, k(g.temperature_source)) == (0.2, "config_endpoint")
    assert (g.stop, k(g.stop_source)) == (("END",), "config_endpoint")
    assert g.top_p is None and g.top_p_source is None  # not set anywhere: not sent
    assert value_after(p.argv, "--max-tokens") == "512" and value_after(p.argv, "--stop") == "END"
    assert "--top-p" not in p.argv
    mine = plan(cfg(GEN), executor="native", model="m", generation=Generation(max_tokens=64, top_p=0.9),
                context_window=4096)
    assert mine.generation is not None
    assert (mine.generation.max_tokens, k(mine.generation.max_tokens_source)) == (64, "request")
    assert (mine.generation.top_p, k(mine.generation.top_p_source)) == (0.9, "request")
    assert (mine.generation.temperature, k(mine.generation.temperature_source)) == (0.2, "config_endpoint")
    assert (mine.generation.context_window, k(mine.generation.context_window_source)) == (4096, "request")
    inline = plan(cfg(GEN), executor="native", model="m", endpoint=INCIDENT_URL)
    assert inline.generation is not None
    assert (inline.generation.max_tokens, k(inline.generation.max_tokens_source)) == (1024, "builtin")


@pytest.mark.parametrize("kw, field", [
    ({"max_tokens": 0}, "generation.max_tokens"),
    ({"temperature": 3.5}, "generation.temperature"),
    ({"top_p": 0.0}, "generation.top_p"),
    ({"stop": ("a", "b", "c", "d", "e")}, "generation.stop"),
])
def test_bad_generation_settings_are_invalid_argument_naming_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), executor="native", model="m", generation=Generation(**kw))  # type: ignore[arg-type]
    assert err.value.field == field and field in err.value.message


def test_generation_settings_are_refused_where_they_cannot_apply() -> None:
    with pytest.raises(InvalidArgument, match="native executor only") as err:
        plan(cfg(), executor="claude", generation=Generation(max_tokens=10))
    assert err.value.field == "generation"
    with pytest.raises(InvalidArgument, match="no generation settings"):
        plan(cfg(), command=("bash",), context_window=4096)


def test_an_endpoints_ca_file_reaches_the_agent() -> None:
    p = plan(cfg(FULL.replace('provider = "vllm"', 'provider = "vllm"\nca_file = "/etc/ssl/lab-ca.pem"')),
             executor="native", model="m", endpoint="lambda02")
    assert p.endpoint is not None and p.endpoint.ca_file == "/etc/ssl/lab-ca.pem"
    assert value_after(p.argv, "--ca-file") == "/etc/ssl/lab-ca.pem"


# --- every refusal names its field; every choice says where it came from ------------------------------
# (found by the mutation check: see benchmarks/README.md)

@pytest.mark.parametrize("kw, field, fragment", [
    ({"origin": "cli", "executor": "native", "model": "m", "endpoint": INCIDENT_URL}, "origin",
     "origin 'cli' must be one of request, chat"),
    ({"command": ("bash",), "working_dir": "relative/dir"}, "working_dir",
     "working_dir 'relative/dir' must be an absolute path"),
    ({"command": ("bash",), "working_dir": "/tmp/a\x00b"}, "working_dir", "working_dir must not contain NUL"),
    ({"command": ("bash",), "working_dir": "   "}, "working_dir", "working_dir must not be empty"),
    ({"executor": "x" * 65}, "executor", "executor is too long (65 characters); valid: "),
    ({"executor": "x" * 64}, "executor", f"unknown executor {'x' * 64!r}; valid: "),
    ({"executor": "gpt"}, "executor", "unknown executor 'gpt'; valid: "),
    ({"executor": "native", "command": ("bash",)}, "executor", "executor 'native' cannot run a custom command"),
    ({"executor": "command"}, "command", "executor 'command' needs the command to run (the command argv is empty)"),
    ({"command": ("bash",), "model": "m"}, "model", "takes no model; drop model 'm'"),
    ({"command": ("bash",), "endpoint": "https://u:pw@h.example:1/v1?key=s"}, "endpoint",
     "takes no endpoint; drop endpoint 'https://h.example:1/v1'"),
    ({"command": ("bash",), "context_window": 4096}, "generation",
     "a command chat runs the given argv and takes no generation settings"),
    ({"executor": "claude", "generation": Generation(temperature=0.5)}, "generation", "native executor only"),
    ({"executor": "claude", "generation": Generation(top_p=0.5)}, "generation", "native executor only"),
    ({"executor": "claude", "generation": Generation(stop=("x",))}, "generation", "native executor only"),
    ({"command": ("", "x")}, "command[0]", "command[0] (the program) must not be empty"),
    ({"executor": "native", "model": "bad model!", "endpoint": INCIDENT_URL}, "model",
     "model 'bad model!' is not a valid model name"),
    ({"executor": "claude", "model": "codex:gpt-5"}, "model", "has provider prefix 'codex'"),
    ({"executor": "native", "model": "m", "endpoint": "https://h.example:99999"}, "endpoint",
     "endpoint URL '<unparsable URL>' "),
    ({"executor": "native", "model": "m", "endpoint": "bad name!"}, "endpoint",
     "endpoint 'bad name!' is neither an http(s):// URL nor a valid endpoint name"),
    ({"executor": "native", "model": "m", "endpoint": INCIDENT_URL, "context_window": 5},
     "generation.context_window", "generation.context_window must be an integer number of tokens"),
    ({"executor": "claude", "endpoint": "https://u:pw@h.example/v1"}, "endpoint",
     "drop endpoint 'https://h.example/v1', or use executor 'native' (or 'codex') to talk to an OpenAI-compatible "
     "endpoint"),
])
def test_each_refusal_names_its_field_and_says_why(kw: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), **kw)
    assert err.value.field == field and fragment in err.value.message
    assert "pw@" not in err.value.message and "key=s" not in err.value.message


@pytest.mark.parametrize("kw, message", [
    ({"executor": "command"}, "executor 'command' needs the command to run (the command argv is empty)"),
    ({"command": ("bash",), "context_window": 4096}, "a command chat runs the given argv and takes no generation "
                                                     "settings"),
])
def test_refusals_in_whole_words(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(cfg(), **kw)
    assert err.value.message == message


def test_an_unknown_endpoint_name_or_no_default_is_explained_with_the_fix() -> None:
    with pytest.raises(FailedPrecondition) as err:
        plan(EMPTY, executor="native", model="m", endpoint="lab")
    assert err.value.message == (f"endpoint 'lab' is not configured (known: none) in {CFG_PATH}; pass a URL "
                                 "(https://host:port) or add an [[endpoints]] entry with that name")
    with pytest.raises(FailedPrecondition) as err:
        plan(EMPTY, executor="native", model="m")
    assert err.value.message == (f"no endpoint configured: pass --endpoint URL|NAME or add [[endpoints]] with "
                                 f"default = true to {CFG_PATH}")
    with pytest.raises(FailedPrecondition) as err:
        plan(cfg(FULL.replace("default = true\n", "")), executor="native", model="m")
    assert err.value.message.endswith(f"{CFG_PATH} (configured, none marked default: default-ep, lambda02)")


def test_defaults_say_where_they_came_from() -> None:
    p = plan(cfg())
    assert (p.executor, k(p.executor_source), p.executor_source.detail) == (
        "native", "config_default", f"config default ({CFG_PATH})")
    assert (p.model, k(p.model_source), p.model_source.detail) == (
        "qwen3-coder", "config_default", f"config default ({CFG_PATH})")
    assert p.endpoint is not None and p.endpoint.source.detail == "config default (endpoint 'default-ep')"
    builtin = plan(EMPTY, model="m", endpoint=INCIDENT_URL)
    assert (builtin.executor, k(builtin.executor_source), builtin.executor_source.detail) == (
        "native", "builtin", "built-in default")
    claude = plan(EMPTY, executor="claude")
    assert (claude.model, k(claude.model_source), claude.model_source.detail) == (
        "claude:opus", "builtin", "built-in default")
    chat = plan(cfg(), executor="native", model="m", endpoint=INCIDENT_URL, origin="chat")
    assert chat.executor_source.detail == "chat" and chat.model_source.detail == "chat"


def test_a_command_plan_runs_the_argv_as_given_and_says_so() -> None:
    p = plan(cfg(), command=("bash", "-c", "echo hi"), working_dir="/srv/work")
    assert p.argv == ["bash", "-c", "echo hi"] and p.env == [] and p.endpoint is None and p.generation is None
    assert p.working_dir == "/srv/work"
    assert (k(p.model_source), p.model_source.detail) == ("none", "none (executor=command)")
    assert p.summary == "executor=command (from request), command='bash' with 2 argument(s)"


def test_each_generation_setting_is_the_chats_else_the_endpoints() -> None:
    config = cfg(GEN.replace("temperature = 0.2", "temperature = 0.2\ntop_p = 0.8"))
    p = plan(config, executor="native", model="m", generation=Generation(temperature=0.7, stop=("X",)))
    g = p.generation
    assert g is not None
    assert (g.temperature, k(g.temperature_source)) == (0.7, "request")
    assert (g.stop, k(g.stop_source)) == (("X",), "request")
    assert (g.top_p, k(g.top_p_source)) == (0.8, "config_endpoint")
    assert g.top_p_source is not None and g.top_p_source.detail == "endpoint 'default-ep' in config"
    assert p.argv == ["wgs-agent", "native", "--model", "m", "--endpoint", "https://default.example:8000/v1",
                      "--max-tokens", "512", "--temperature", "0.7", "--top-p", "0.8", "--stop", "X",
                      "--context-window", "32768"]


def test_the_agent_learns_where_its_context_window_came_from() -> None:
    def window_source(p: SpawnPlan) -> list[str]:
        return [e.value for e in p.env if e.name == "WGS_CONTEXT_WINDOW_SOURCE"]

    assert window_source(plan(cfg(), executor="native", model="m")) == ["config_endpoint"]
    assert window_source(plan(cfg(), executor="native", model="m", context_window=4096)) == ["request"]
    assert window_source(plan(cfg(), executor="native", model="m", endpoint="lambda02")) == []  # none known


def test_an_endpoints_ca_file_is_added_to_the_agents_argv() -> None:
    p = plan(cfg(FULL.replace('provider = "vllm"', 'provider = "vllm"\nca_file = "/etc/ssl/lab-ca.pem"')),
             executor="native", model="m", endpoint="lambda02")
    assert p.argv == ["wgs-agent", "native", "--model", "m", "--endpoint", "http://lambda02.example:30000",
                      "--max-tokens", "1024", "--ca-file", "/etc/ssl/lab-ca.pem"]


@pytest.mark.parametrize("url, shown", [
    ("https://user:secret@host.example:8443/v1?key=sk-1#frag", "https://host.example:8443/v1"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ("https://host.example/v1", "https://host.example/v1"),
    ("https://host.example:99999/v1", "<unparsable URL>"),
    ("https://user:pw@/v1", "https:///v1"),
])
def test_urls_are_shown_without_credentials_query_or_fragment(url: str, shown: str) -> None:
    from services.dispatch.planner import redact_url

    assert redact_url(url) == shown
