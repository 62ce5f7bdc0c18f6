import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from wgs.v1 import plan_pb2 as _plan_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RuntimeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNTIME_STATE_UNSPECIFIED: _ClassVar[RuntimeState]
    RUNTIME_STATE_STARTING: _ClassVar[RuntimeState]
    RUNTIME_STATE_RUNNING: _ClassVar[RuntimeState]
    RUNTIME_STATE_BACKOFF: _ClassVar[RuntimeState]
    RUNTIME_STATE_EXITED: _ClassVar[RuntimeState]
    RUNTIME_STATE_FAILED: _ClassVar[RuntimeState]
    RUNTIME_STATE_STOPPED: _ClassVar[RuntimeState]

class RunEnd(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_END_UNSPECIFIED: _ClassVar[RunEnd]
    RUN_END_EXITED: _ClassVar[RunEnd]
    RUN_END_STOPPED: _ClassVar[RunEnd]
    RUN_END_SPAWN_FAILED: _ClassVar[RunEnd]
    RUN_END_UNKNOWN: _ClassVar[RunEnd]
    RUN_END_FENCED: _ClassVar[RunEnd]
RUNTIME_STATE_UNSPECIFIED: RuntimeState
RUNTIME_STATE_STARTING: RuntimeState
RUNTIME_STATE_RUNNING: RuntimeState
RUNTIME_STATE_BACKOFF: RuntimeState
RUNTIME_STATE_EXITED: RuntimeState
RUNTIME_STATE_FAILED: RuntimeState
RUNTIME_STATE_STOPPED: RuntimeState
RUN_END_UNSPECIFIED: RunEnd
RUN_END_EXITED: RunEnd
RUN_END_STOPPED: RunEnd
RUN_END_SPAWN_FAILED: RunEnd
RUN_END_UNKNOWN: RunEnd
RUN_END_FENCED: RunEnd

class Run(_message.Message):
    __slots__ = ("number", "pid", "process_start_ticks", "monitor_pid", "monitor_start_ticks", "argv", "stderr_path", "started_at", "exited_at", "exit_code", "signal", "signal_name", "stderr_tail", "error", "hostname", "supervisor_id", "trace_id", "end", "end_detail", "leftovers_ended")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_START_TICKS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_PID_FIELD_NUMBER: _ClassVar[int]
    MONITOR_START_TICKS_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    STDERR_PATH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_NAME_FIELD_NUMBER: _ClassVar[int]
    STDERR_TAIL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    END_DETAIL_FIELD_NUMBER: _ClassVar[int]
    LEFTOVERS_ENDED_FIELD_NUMBER: _ClassVar[int]
    number: int
    pid: int
    process_start_ticks: int
    monitor_pid: int
    monitor_start_ticks: int
    argv: _containers.RepeatedScalarFieldContainer[str]
    stderr_path: str
    started_at: _timestamp_pb2.Timestamp
    exited_at: _timestamp_pb2.Timestamp
    exit_code: int
    signal: int
    signal_name: str
    stderr_tail: str
    error: str
    hostname: str
    supervisor_id: str
    trace_id: str
    end: RunEnd
    end_detail: str
    leftovers_ended: int
    def __init__(self, number: _Optional[int] = ..., pid: _Optional[int] = ..., process_start_ticks: _Optional[int] = ..., monitor_pid: _Optional[int] = ..., monitor_start_ticks: _Optional[int] = ..., argv: _Optional[_Iterable[str]] = ..., stderr_path: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exited_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., signal_name: _Optional[str] = ..., stderr_tail: _Optional[str] = ..., error: _Optional[str] = ..., hostname: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., end: _Optional[_Union[RunEnd, str]] = ..., end_detail: _Optional[str] = ..., leftovers_ended: _Optional[int] = ...) -> None: ...

class AnswerError(_message.Message):
    __slots__ = ("at", "error_class", "message", "request_id")
    AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    error_class: str
    message: str
    request_id: str
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_class: _Optional[str] = ..., message: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class EndpointWait(_message.Message):
    __slots__ = ("since", "reason", "next_attempt_at")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    reason: str
    next_attempt_at: _timestamp_pb2.Timestamp
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("run_number", "updated_at", "last_answer_error", "waiting", "context_window", "context_window_source", "input_tokens", "output_tokens", "answers", "context_window_detail")
    RUN_NUMBER_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ANSWER_ERROR_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_SOURCE_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_DETAIL_FIELD_NUMBER: _ClassVar[int]
    run_number: int
    updated_at: _timestamp_pb2.Timestamp
    last_answer_error: AnswerError
    waiting: EndpointWait
    context_window: int
    context_window_source: _plan_pb2.ChoiceSource
    input_tokens: int
    output_tokens: int
    answers: int
    context_window_detail: str
    def __init__(self, run_number: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_answer_error: _Optional[_Union[AnswerError, _Mapping]] = ..., waiting: _Optional[_Union[EndpointWait, _Mapping]] = ..., context_window: _Optional[int] = ..., context_window_source: _Optional[_Union[_plan_pb2.ChoiceSource, str]] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., answers: _Optional[int] = ..., context_window_detail: _Optional[str] = ...) -> None: ...

class ChatRuntime(_message.Message):
    __slots__ = ("state", "current_run", "previous_runs", "restart_count", "next_restart_at", "last_error", "plan", "trace_id", "supervisor_id", "lease_expires_at", "state_changed_at", "version", "span_id", "resume_on_start", "agent")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RUN_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RUNS_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RESTART_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_ON_START_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    state: RuntimeState
    current_run: Run
    previous_runs: _containers.RepeatedCompositeFieldContainer[Run]
    restart_count: int
    next_restart_at: _timestamp_pb2.Timestamp
    last_error: str
    plan: _plan_pb2.SpawnPlan
    trace_id: str
    supervisor_id: str
    lease_expires_at: _timestamp_pb2.Timestamp
    state_changed_at: _timestamp_pb2.Timestamp
    version: int
    span_id: str
    resume_on_start: bool
    agent: AgentStatus
    def __init__(self, state: _Optional[_Union[RuntimeState, str]] = ..., current_run: _Optional[_Union[Run, _Mapping]] = ..., previous_runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., restart_count: _Optional[int] = ..., next_restart_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ..., trace_id: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., span_id: _Optional[str] = ..., resume_on_start: _Optional[bool] = ..., agent: _Optional[_Union[AgentStatus, _Mapping]] = ...) -> None: ...
