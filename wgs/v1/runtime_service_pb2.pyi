import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from wgs.v1 import plan_pb2 as _plan_pb2
from wgs.v1 import runtime_pb2 as _runtime_pb2
from wgs.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateChatTaskRequest(_message.Message):
    __slots__ = ("name", "model", "executor", "endpoint", "command_argv", "working_dir", "request_id", "supervisor_id", "lease_seconds", "max_live_chats", "trace_id", "span_id", "plan", "generation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ARGV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_LIVE_CHATS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    executor: str
    endpoint: str
    command_argv: _containers.RepeatedScalarFieldContainer[str]
    working_dir: str
    request_id: str
    supervisor_id: str
    lease_seconds: int
    max_live_chats: int
    trace_id: str
    span_id: str
    plan: _plan_pb2.SpawnPlan
    generation: _plan_pb2.GenerationOverrides
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., executor: _Optional[str] = ..., endpoint: _Optional[str] = ..., command_argv: _Optional[_Iterable[str]] = ..., working_dir: _Optional[str] = ..., request_id: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., lease_seconds: _Optional[int] = ..., max_live_chats: _Optional[int] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ..., generation: _Optional[_Union[_plan_pb2.GenerationOverrides, _Mapping]] = ...) -> None: ...

class CreateChatTaskResponse(_message.Message):
    __slots__ = ("task", "runtime", "created")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    runtime: _runtime_pb2.ChatRuntime
    created: bool
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetChatRecordRequest(_message.Message):
    __slots__ = ("chat_id", "with_log")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    WITH_LOG_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    with_log: bool
    def __init__(self, chat_id: _Optional[str] = ..., with_log: _Optional[bool] = ...) -> None: ...

class GetChatRecordResponse(_message.Message):
    __slots__ = ("task", "runtime")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class ListChatRecordsRequest(_message.Message):
    __slots__ = ("include_ended", "supervisor_id", "states", "page_size", "page_token", "lease_expired")
    INCLUDE_ENDED_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    include_ended: bool
    supervisor_id: str
    states: _containers.RepeatedScalarFieldContainer[_runtime_pb2.RuntimeState]
    page_size: int
    page_token: str
    lease_expired: bool
    def __init__(self, include_ended: _Optional[bool] = ..., supervisor_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_runtime_pb2.RuntimeState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., lease_expired: _Optional[bool] = ...) -> None: ...

class ChatRecord(_message.Message):
    __slots__ = ("task", "runtime")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class ListChatRecordsResponse(_message.Message):
    __slots__ = ("chats", "next_page_token")
    CHATS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    chats: _containers.RepeatedCompositeFieldContainer[ChatRecord]
    next_page_token: str
    def __init__(self, chats: _Optional[_Iterable[_Union[ChatRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RecordRunStartedRequest(_message.Message):
    __slots__ = ("chat_id", "run", "plan", "supervisor_id", "expected_state")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_STATE_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    run: _runtime_pb2.Run
    plan: _plan_pb2.SpawnPlan
    supervisor_id: str
    expected_state: _runtime_pb2.RuntimeState
    def __init__(self, chat_id: _Optional[str] = ..., run: _Optional[_Union[_runtime_pb2.Run, _Mapping]] = ..., plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ..., supervisor_id: _Optional[str] = ..., expected_state: _Optional[_Union[_runtime_pb2.RuntimeState, str]] = ...) -> None: ...

class RecordRunStartedResponse(_message.Message):
    __slots__ = ("runtime",)
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class RunExit(_message.Message):
    __slots__ = ("chat_id", "run", "state", "restart_count", "next_restart_at", "last_error", "plan", "resume_on_start", "task_status", "add_tags")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RESTART_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    RESUME_ON_START_FIELD_NUMBER: _ClassVar[int]
    TASK_STATUS_FIELD_NUMBER: _ClassVar[int]
    ADD_TAGS_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    run: _runtime_pb2.Run
    state: _runtime_pb2.RuntimeState
    restart_count: int
    next_restart_at: _timestamp_pb2.Timestamp
    last_error: str
    plan: _plan_pb2.SpawnPlan
    resume_on_start: bool
    task_status: _task_pb2.TaskStatus
    add_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chat_id: _Optional[str] = ..., run: _Optional[_Union[_runtime_pb2.Run, _Mapping]] = ..., state: _Optional[_Union[_runtime_pb2.RuntimeState, str]] = ..., restart_count: _Optional[int] = ..., next_restart_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ..., resume_on_start: _Optional[bool] = ..., task_status: _Optional[_Union[_task_pb2.TaskStatus, str]] = ..., add_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordRunExitedRequest(_message.Message):
    __slots__ = ("exits", "supervisor_id")
    EXITS_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    exits: _containers.RepeatedCompositeFieldContainer[RunExit]
    supervisor_id: str
    def __init__(self, exits: _Optional[_Iterable[_Union[RunExit, _Mapping]]] = ..., supervisor_id: _Optional[str] = ...) -> None: ...

class RunExitResult(_message.Message):
    __slots__ = ("chat_id", "runtime", "error_code", "error_message")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    runtime: _runtime_pb2.ChatRuntime
    error_code: int
    error_message: str
    def __init__(self, chat_id: _Optional[str] = ..., runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class RecordRunExitedResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RunExitResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RunExitResult, _Mapping]]] = ...) -> None: ...

class TransitionChatRequest(_message.Message):
    __slots__ = ("chat_id", "supervisor_id", "from_state", "to_state", "restart_count", "next_restart_at", "last_error", "plan", "resume_on_start", "task_status", "add_tags", "log_message")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RESTART_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    RESUME_ON_START_FIELD_NUMBER: _ClassVar[int]
    TASK_STATUS_FIELD_NUMBER: _ClassVar[int]
    ADD_TAGS_FIELD_NUMBER: _ClassVar[int]
    LOG_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    supervisor_id: str
    from_state: _runtime_pb2.RuntimeState
    to_state: _runtime_pb2.RuntimeState
    restart_count: int
    next_restart_at: _timestamp_pb2.Timestamp
    last_error: str
    plan: _plan_pb2.SpawnPlan
    resume_on_start: bool
    task_status: _task_pb2.TaskStatus
    add_tags: _containers.RepeatedScalarFieldContainer[str]
    log_message: str
    def __init__(self, chat_id: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., from_state: _Optional[_Union[_runtime_pb2.RuntimeState, str]] = ..., to_state: _Optional[_Union[_runtime_pb2.RuntimeState, str]] = ..., restart_count: _Optional[int] = ..., next_restart_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ..., resume_on_start: _Optional[bool] = ..., task_status: _Optional[_Union[_task_pb2.TaskStatus, str]] = ..., add_tags: _Optional[_Iterable[str]] = ..., log_message: _Optional[str] = ...) -> None: ...

class TransitionChatResponse(_message.Message):
    __slots__ = ("task", "runtime")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class RenewLeasesRequest(_message.Message):
    __slots__ = ("supervisor_id", "lease_seconds", "advertise_address", "free_capacity", "live_chats", "max_live_chats", "memory_used_bytes", "memory_limit_bytes", "held_chat_ids")
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FREE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LIVE_CHATS_FIELD_NUMBER: _ClassVar[int]
    MAX_LIVE_CHATS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    HELD_CHAT_IDS_FIELD_NUMBER: _ClassVar[int]
    supervisor_id: str
    lease_seconds: int
    advertise_address: str
    free_capacity: int
    live_chats: int
    max_live_chats: int
    memory_used_bytes: int
    memory_limit_bytes: int
    held_chat_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, supervisor_id: _Optional[str] = ..., lease_seconds: _Optional[int] = ..., advertise_address: _Optional[str] = ..., free_capacity: _Optional[int] = ..., live_chats: _Optional[int] = ..., max_live_chats: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., held_chat_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RenewLeasesResponse(_message.Message):
    __slots__ = ("renewed", "lease_expires_at", "lost_chat_ids")
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LOST_CHAT_IDS_FIELD_NUMBER: _ClassVar[int]
    renewed: int
    lease_expires_at: _timestamp_pb2.Timestamp
    lost_chat_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, renewed: _Optional[int] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lost_chat_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ClaimChatRequest(_message.Message):
    __slots__ = ("chat_id", "supervisor_id", "lease_seconds")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    supervisor_id: str
    lease_seconds: int
    def __init__(self, chat_id: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., lease_seconds: _Optional[int] = ...) -> None: ...

class ClaimChatResponse(_message.Message):
    __slots__ = ("runtime", "previous_supervisor_id", "previous_lease_expired_at", "task")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_LEASE_EXPIRED_AT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    runtime: _runtime_pb2.ChatRuntime
    previous_supervisor_id: str
    previous_lease_expired_at: _timestamp_pb2.Timestamp
    task: _task_pb2.Task
    def __init__(self, runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ..., previous_supervisor_id: _Optional[str] = ..., previous_lease_expired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class ListSupervisorsRequest(_message.Message):
    __slots__ = ("include_expired",)
    INCLUDE_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    include_expired: bool
    def __init__(self, include_expired: _Optional[bool] = ...) -> None: ...

class SupervisorInfo(_message.Message):
    __slots__ = ("supervisor_id", "advertise_address", "heartbeat_at", "lease_expires_at", "free_capacity", "live_chats", "max_live_chats", "memory_used_bytes", "memory_limit_bytes", "owned_chats")
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    FREE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LIVE_CHATS_FIELD_NUMBER: _ClassVar[int]
    MAX_LIVE_CHATS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OWNED_CHATS_FIELD_NUMBER: _ClassVar[int]
    supervisor_id: str
    advertise_address: str
    heartbeat_at: _timestamp_pb2.Timestamp
    lease_expires_at: _timestamp_pb2.Timestamp
    free_capacity: int
    live_chats: int
    max_live_chats: int
    memory_used_bytes: int
    memory_limit_bytes: int
    owned_chats: int
    def __init__(self, supervisor_id: _Optional[str] = ..., advertise_address: _Optional[str] = ..., heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., free_capacity: _Optional[int] = ..., live_chats: _Optional[int] = ..., max_live_chats: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., owned_chats: _Optional[int] = ...) -> None: ...

class ListSupervisorsResponse(_message.Message):
    __slots__ = ("supervisors",)
    SUPERVISORS_FIELD_NUMBER: _ClassVar[int]
    supervisors: _containers.RepeatedCompositeFieldContainer[SupervisorInfo]
    def __init__(self, supervisors: _Optional[_Iterable[_Union[SupervisorInfo, _Mapping]]] = ...) -> None: ...

class WatchChatRecordsRequest(_message.Message):
    __slots__ = ("chat_id", "include_current")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CURRENT_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    include_current: bool
    def __init__(self, chat_id: _Optional[str] = ..., include_current: _Optional[bool] = ...) -> None: ...

class WatchChatRecordsResponse(_message.Message):
    __slots__ = ("chat",)
    CHAT_FIELD_NUMBER: _ClassVar[int]
    chat: ChatRecord
    def __init__(self, chat: _Optional[_Union[ChatRecord, _Mapping]] = ...) -> None: ...
