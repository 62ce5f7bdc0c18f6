"""The README documents exactly what the code does: the env table and the commands."""

from __future__ import annotations

import re

from tests.harness import REPO
from wgs.cli.envvars import markdown_table
from wgs.cli.main import build_parser

README = REPO / "README.md"


def test_env_table_in_readme_matches_settings() -> None:
    text = README.read_text()
    m = re.search(r"<!-- env-table:start -->\n(.*?)\n<!-- env-table:end -->", text, re.S)
    assert m, "README.md lacks the env-table markers"
    assert m.group(1) == markdown_table(), (
        "README.md's environment table is stale: replace the lines between the env-table markers "
        "with the output of `.venv/bin/wgs env --markdown`"
    )


def test_every_cli_command_is_in_readme() -> None:
    text = README.read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sp in sub.choices.items():  # type: ignore[union-attr]
        if name == "chat":
            chat_sub = next(a for a in sp._actions if a.dest == "chat_command")
            for chat_name in chat_sub.choices:  # type: ignore[union-attr]
                assert f"`wgs chat {chat_name}" in text, chat_name
        else:
            assert f"`wgs {name}" in text, name


def test_readme_commands_are_the_ones_ci_runs() -> None:
    text = README.read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "./scripts/install.sh" in text and "./scripts/install.sh" in ci
    assert "\n.venv/bin/pytest -q\n" in text and "\n.venv/bin/pytest -q\n" in ci


def _keys(doc: dict[str, object]) -> set[str]:
    """Every key of a chat's JSON, nested objects included (lists of objects: their keys)."""
    out: set[str] = set()
    for key, value in doc.items():
        out.add(key)
        if isinstance(value, dict):
            out |= _keys(value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out |= _keys(value[0])
    return out


def test_every_json_key_of_a_chat_is_in_readme() -> None:
    from wgs.cli.output import chat_to_dict
    from wgs.v1 import chat_pb2, plan_pb2, runtime_pb2

    S = plan_pb2
    plan = S.SpawnPlan(
        executor="native", model="m", argv=["wgs-agent"], env=[S.EnvVar(name="A", value="1")],
        endpoint=S.PlannedEndpoint(url="https://h:1", ca_file="/ca.pem"),
        generation=S.GenerationSettings(max_tokens=1, temperature=0.1, top_p=0.5, stop=["x"], context_window=300))
    agent = runtime_pb2.AgentStatus(
        last_answer_error=runtime_pb2.AnswerError(error_class="timeout"),
        waiting=runtime_pb2.EndpointWait(reason="down"), context_window=300)
    rt = runtime_pb2.ChatRuntime(plan=plan, agent=agent, current_run=runtime_pb2.Run(number=1),
                                 previous_runs=[runtime_pb2.Run(number=0)])
    doc = chat_to_dict(chat_pb2.Chat(id=".chat-1", runtime=rt), jaeger_url="http://jaeger")
    text = README.read_text()
    section = text.split("### JSON output", 1)[1].split("\n## ", 1)[0]
    missing = sorted(k for k in _keys(doc) if not re.search(rf"\b{re.escape(k)}\b", section))
    assert not missing, f"README.md's 'JSON output' does not name these keys of the chat JSON: {missing}"
