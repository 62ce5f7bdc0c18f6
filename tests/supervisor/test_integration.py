"""Supervisor integration: real graph, dispatch and supervisor processes; real agent processes."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

from tests.supervisor.conftest import Stack, pid_alive, wait_chat, wait_gone
from wgs.v1 import chat_pb2, graph_pb2, runtime_pb2, task_pb2

PY = sys.executable
RS = runtime_pb2
SLEEPER = [PY, "-c", "import time\nprint('agent up', flush=True)\ntime.sleep(600)"]


def create(stack: Stack, command: list[str], **kw: str) -> chat_pb2.CreateChatResponse:
    return stack.chat().CreateChat(chat_pb2.CreateChatRequest(command=command, **kw), timeout=20)


def test_create_chat_returns_running_pid_and_stderr_path(stack: Stack) -> None:
    resp = create(stack, SLEEPER, name="hello")
    chat = resp.chat
    assert resp.created and chat.id.startswith(".chat-")
    rt = chat.runtime
    assert rt.state == RS.RUNTIME_STATE_RUNNING, rt.last_error
    run = rt.current_run
    assert run.pid > 0 and pid_alive(run.pid) and run.monitor_pid > 0
    assert Path(run.stderr_path).exists()
    assert Path(run.stderr_path).is_relative_to(stack.state_dir / "chats" / chat.id)
    assert list(run.argv)[1:] == SLEEPER[1:]
    assert chat.name == "hello" and chat.status == task_pb2.TASK_STATUS_IN_PROGRESS
    assert "chat-loop" in chat.tags
    got = stack.chat().GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=10).chat
    assert got.runtime.current_run.pid == run.pid


def test_agent_exit_3_recorded_with_stderr(stack: Stack) -> None:
    code = "import sys, time\ntime.sleep(1.2)\nsys.stderr.write('fatal: cannot reach endpoint\\n')\nsys.exit(3)"
    chat = create(stack, [PY, "-c", code]).chat
    stub = stack.chat()
    exited, _ = wait_chat(stub, chat.id, lambda c: c.runtime.current_run.HasField("exit_code")
                          or any(r.HasField("exit_code") for r in c.runtime.previous_runs))
    runs = [exited.runtime.current_run, *exited.runtime.previous_runs]
    first = next(r for r in runs if r.number == 1)
    assert first.exit_code == 3
    assert "fatal: cannot reach endpoint" in first.stderr_tail
    got = stub.GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=10).chat
    assert "exit" in got.runtime.last_error or got.runtime.state == RS.RUNTIME_STATE_RUNNING
