"""Unit tests of the CLI's pure parsing and formatting (no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc
import pytest

from wgs.cli.output import (
    CliError,
    chat_details,
    chat_failure,
    chat_table,
    chat_to_dict,
    parse_chat_id,
    reconcile_lines,
    reconcile_to_dict,
    rpc_error_line,
)
from wgs.cli.procs import describe_exit, is_alive, start_ticks, tail_lines
from wgs.cli.stackfile import ExitRecord, KeeperRecord, ServiceRecord, StackRecord, client_target
from wgs.v1 import chat_pb2, graph_pb2, plan_pb2, runtime_pb2, task_pb2


@pytest.mark.parametrize("arg", [".chat-3", "chat-3", "3", " 3 "])
def test_chat_id_forms(arg: str) -> None:
    assert parse_chat_id(arg) == ".chat-3"


@pytest.mark.parametrize("arg", ["", "chat-", ".chat-x", "-1", "03", ".chat-3/../x", "task-3", "1e3"])
def test_bad_chat_ids_are_refused_with_the_accepted_forms(arg: str) -> None:
    with pytest.raises(CliError) as err:
        parse_chat_id(arg)
    assert ".chat-N, chat-N or N" in err.value.message
    assert err.value.exit_code == 2


def test_error_line_is_one_line_with_the_status_in_words() -> None:
    line = rpc_error_line(grpc.StatusCode.NOT_FOUND, "chat .chat-9\ndoes not exist", service="supervisor",
                          address="127.0.0.1:1", timeout=10)
    assert line == "not found: chat .chat-9 does not exist"
    line = rpc_error_line(grpc.StatusCode.INVALID_ARGUMENT, "endpoint 'x' is unknown", service="supervisor",
                          address="127.0.0.1:1", timeout=10)
    assert line == "invalid argument: endpoint 'x' is unknown"


def test_unreachable_names_the_service_its_address_and_wgs_up() -> None:
    line = rpc_error_line(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", service="supervisor",
                          address="127.0.0.1:50153", timeout=10)
    assert "supervisor" in line and "127.0.0.1:50153" in line and "wgs up" in line
    assert "\n" not in line
    line = rpc_error_line(grpc.StatusCode.DEADLINE_EXCEEDED, "", service="graph", address="h:1", timeout=2.5)
    assert "graph" in line and "2.5s" in line


def _failed_chat() -> chat_pb2.Chat:
    run = runtime_pb2.Run(number=2, pid=4242, exit_code=1, stderr_path="/s/chats/.chat-7/run-2.log",
                          argv=["wgs-agent", "native", "--chat", ".chat-7"], stderr_tail="boom\n")
    run.exited_at.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    plan = plan_pb2.SpawnPlan(
        executor="native", executor_source=plan_pb2.CHOICE_SOURCE_REQUEST, executor_source_detail="request",
        model="qwen3-coder", model_source=plan_pb2.CHOICE_SOURCE_REQUEST, model_source_detail="request",
        argv=["wgs-agent", "native"],
        endpoint=plan_pb2.PlannedEndpoint(url="https://lambda01.example:30000", source=plan_pb2.CHOICE_SOURCE_REQUEST,
                                          source_detail="request"),
        env=[plan_pb2.EnvVar(name="WGS_API_KEY", value_from_env="LAMBDA_KEY", secret=True)],
    )
    rt = runtime_pb2.ChatRuntime(state=runtime_pb2.RUNTIME_STATE_BACKOFF, current_run=run, restart_count=1,
                                 last_error="agent exited with code 1: connection refused", plan=plan,
                                 trace_id="ab" * 16)
    rt.next_restart_at.FromDatetime(datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC))
    return chat_pb2.Chat(id=".chat-7", name="demo", runtime=rt, stderr_tail="boom\n", trace_id="ab" * 16,
                         status=task_pb2.TASK_STATUS_IN_PROGRESS, pid=0)


def test_json_has_the_documented_keys() -> None:
    doc = chat_to_dict(_failed_chat(), "http://jaeger:16686/")
    for key in ("id", "state", "pid", "exit_code", "signal", "restart_count", "last_error", "stderr_path",
                "stderr_tail", "trace_id", "plan"):
        assert key in doc
    # The run's pid is history (it exited): the chat has no live pid now.
    assert doc["id"] == ".chat-7" and doc["state"] == "BACKOFF" and doc["pid"] is None
    assert doc["current_run"]["pid"] == 4242 and doc["current_run"]["end"] is None
    assert doc["exit_code"] == 1 and doc["signal"] is None and doc["restart_count"] == 1
    assert doc["plan"]["executor"] == "native" and doc["plan"]["model"] == "qwen3-coder"
    assert doc["plan"]["endpoint"] == {"name": "", "url": "https://lambda01.example:30000", "provider": "",
                                       "api_key_env": "", "source": "request", "source_kind": "request",
                                       "ca_file": None}
    assert doc["plan"]["executor_source"] == "request" and doc["plan"]["executor_source_kind"] == "request"
    assert doc["plan"]["argv"] == ["wgs-agent", "native"]
    assert doc["plan"]["env"] == [{"name": "WGS_API_KEY", "from_env": "LAMBDA_KEY", "secret": True}]
    assert doc["trace_url"] == "http://jaeger:16686/trace/" + "ab" * 16
    json.dumps(doc)  # serializable


def test_json_of_a_chat_without_run_or_plan_uses_nulls() -> None:
    doc = chat_to_dict(chat_pb2.Chat(id=".chat-1", runtime=runtime_pb2.ChatRuntime(
        state=runtime_pb2.RUNTIME_STATE_STARTING)))
    assert doc["pid"] is None and doc["exit_code"] is None and doc["stderr_path"] is None
    assert doc["plan"]["endpoint"] is None and doc["plan"]["executor"] is None


def test_signal_is_named() -> None:
    chat = _failed_chat()
    chat.runtime.current_run.ClearField("exit_code")
    chat.runtime.current_run.signal = 9
    chat.runtime.current_run.signal_name = "SIGKILL"
    doc = chat_to_dict(chat)
    assert doc["signal"] == "SIGKILL" and doc["exit_code"] is None
    assert "killed by SIGKILL" in chat_details(chat)


def test_show_explains_the_death() -> None:
    text = chat_details(_failed_chat(), "http://jaeger:16686", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert "BACKOFF" in text and "exit code 1" in text and "connection refused" in text
    assert "https://lambda01.example:30000" in text and "(from request)" in text
    assert "/s/chats/.chat-7/run-2.log" in text and "boom" in text
    assert "http://jaeger:16686/trace/" + "ab" * 16 in text
    assert "in 5.0s" in text


def test_failure_of_a_created_chat() -> None:
    assert "connection refused" in (chat_failure(_failed_chat()) or "")
    ok = chat_pb2.Chat(id=".chat-1", runtime=runtime_pb2.ChatRuntime(state=runtime_pb2.RUNTIME_STATE_RUNNING))
    assert chat_failure(ok) is None
    clean = chat_pb2.Chat(id=".chat-1", runtime=runtime_pb2.ChatRuntime(
        state=runtime_pb2.RUNTIME_STATE_EXITED, current_run=runtime_pb2.Run(number=1, pid=5, exit_code=0)))
    assert chat_failure(clean) is None
    failed = chat_pb2.Chat(id=".chat-1", runtime=runtime_pb2.ChatRuntime(
        state=runtime_pb2.RUNTIME_STATE_FAILED, current_run=runtime_pb2.Run(number=1, error="executable not found: x")))
    assert "FAILED" in (chat_failure(failed) or "") and "executable not found" in (chat_failure(failed) or "")


def test_table_lists_state_pid_and_error() -> None:
    dead = _failed_chat()
    table = chat_table([dead])
    assert ".chat-7" in table and "BACKOFF" in table and "connection refused" in table
    assert "4242" not in table  # the run is over: no pid is shown as if it lived
    live = _failed_chat()
    live.pid = 4343
    live.runtime.state = runtime_pb2.RUNTIME_STATE_RUNNING
    assert "4343" in chat_table([live])


def test_reconcile_text_and_json() -> None:
    resp = graph_pb2.ReconcileResponse(
        examined=2,
        actions=[graph_pb2.ReconcileAction(task_id=".chat-2", from_status=task_pb2.TASK_STATUS_IN_PROGRESS,
                                           to_status=task_pb2.TASK_STATUS_OPEN, reason="lease expired", applied=False)],
        kept=[graph_pb2.ReconcileAction(task_id=".chat-3", reason="lease valid until 12:00")],
    )
    text = reconcile_lines(resp, dry_run=True)
    assert "would reset .chat-2: IN_PROGRESS -> OPEN (lease expired)" in text
    assert "kept        .chat-3: lease valid until 12:00" in text
    doc = reconcile_to_dict(resp, dry_run=True)
    assert doc["reset"][0]["task_id"] == ".chat-2" and doc["kept"][0]["reason"] == "lease valid until 12:00"


def test_process_identity_uses_start_ticks() -> None:
    import os

    me = os.getpid()
    ticks = start_ticks(me)
    assert ticks is not None and is_alive(me, ticks)
    assert not is_alive(me, ticks + 1)  # same pid, different process
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(2) == "exit code 2"


def test_tail_reads_only_after_offset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "x.log"
    p.write_text("old run\n" * 3 + "new 1\nnew 2\n")
    offset = len("old run\n" * 3)
    assert tail_lines(p, 10, offset) == ["new 1", "new 2"]
    assert tail_lines(p, 1) == ["new 2"]


def test_stack_record_round_trip_and_targets() -> None:
    rec = StackRecord(state_dir="/s", started_at="t", keeper=KeeperRecord(7, 8, True, "/s/logs/stack.log"),
                      services={"graph": ServiceRecord("graph", 1, 2, "127.0.0.1:5", "/s/logs/graph.log")})
    rec.services["graph"].last_exit = ExitRecord(at="t", pid=0, returncode=-9, how="killed by SIGKILL")
    assert StackRecord.from_json(rec.to_json()) == rec
    assert client_target("0.0.0.0:5") == "127.0.0.1:5" and client_target("[::]:5") == "[::1]:5"
