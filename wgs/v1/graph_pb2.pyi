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

class CreateTaskRequest(_message.Message):
    __slots__ = ("id", "title", "description", "status", "priority", "tags", "model", "executor", "endpoint", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    description: str
    status: _task_pb2.TaskStatus
    priority: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    model: str
    executor: str
    endpoint: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., status: _Optional[_Union[_task_pb2.TaskStatus, str]] = ..., priority: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., executor: _Optional[str] = ..., endpoint: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateTaskResponse(_message.Message):
    __slots__ = ("task", "created")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    created: bool
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("statuses", "tag", "page_size", "page_token")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[_task_pb2.TaskStatus]
    tag: str
    page_size: int
    page_token: str
    def __init__(self, statuses: _Optional[_Iterable[_Union[_task_pb2.TaskStatus, str]]] = ..., tag: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TaskUpdate(_message.Message):
    __slots__ = ("title", "description", "status", "priority", "assigned", "add_tags", "remove_tags", "model", "executor", "endpoint")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    ADD_TAGS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_TAGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    title: str
    description: str
    status: _task_pb2.TaskStatus
    priority: int
    assigned: str
    add_tags: _containers.RepeatedScalarFieldContainer[str]
    remove_tags: _containers.RepeatedScalarFieldContainer[str]
    model: str
    executor: str
    endpoint: str
    def __init__(self, title: _Optional[str] = ..., description: _Optional[str] = ..., status: _Optional[_Union[_task_pb2.TaskStatus, str]] = ..., priority: _Optional[int] = ..., assigned: _Optional[str] = ..., add_tags: _Optional[_Iterable[str]] = ..., remove_tags: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., executor: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class UpdateTaskRequest(_message.Message):
    __slots__ = ("id", "expected_version", "update", "log_message", "actor")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    LOG_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    expected_version: int
    update: TaskUpdate
    log_message: str
    actor: str
    def __init__(self, id: _Optional[str] = ..., expected_version: _Optional[int] = ..., update: _Optional[_Union[TaskUpdate, _Mapping]] = ..., log_message: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class UpdateTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class AppendTaskLogRequest(_message.Message):
    __slots__ = ("id", "actor", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor: str
    message: str
    def __init__(self, id: _Optional[str] = ..., actor: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class AppendTaskLogResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: _task_pb2.LogEntry
    def __init__(self, entry: _Optional[_Union[_task_pb2.LogEntry, _Mapping]] = ...) -> None: ...

class CreateChatTaskRequest(_message.Message):
    __slots__ = ("name", "model", "executor", "endpoint", "command_argv", "working_dir", "request_id", "supervisor_id", "lease_seconds", "max_live_chats", "trace_id", "span_id")
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
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., executor: _Optional[str] = ..., endpoint: _Optional[str] = ..., command_argv: _Optional[_Iterable[str]] = ..., working_dir: _Optional[str] = ..., request_id: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., lease_seconds: _Optional[int] = ..., max_live_chats: _Optional[int] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class GetChatRecordResponse(_message.Message):
    __slots__ = ("task", "runtime")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class ListChatRecordsRequest(_message.Message):
    __slots__ = ("include_ended", "supervisor_id", "states", "page_size", "page_token")
    INCLUDE_ENDED_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    include_ended: bool
    supervisor_id: str
    states: _containers.RepeatedScalarFieldContainer[_runtime_pb2.RuntimeState]
    page_size: int
    page_token: str
    def __init__(self, include_ended: _Optional[bool] = ..., supervisor_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_runtime_pb2.RuntimeState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

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

class AppendMessageRequest(_message.Message):
    __slots__ = ("chat_id", "role", "content", "request_id")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    role: _task_pb2.MessageRole
    content: str
    request_id: str
    def __init__(self, chat_id: _Optional[str] = ..., role: _Optional[_Union[_task_pb2.MessageRole, str]] = ..., content: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AppendMessageResponse(_message.Message):
    __slots__ = ("message", "created")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    message: _task_pb2.ChatMessage
    created: bool
    def __init__(self, message: _Optional[_Union[_task_pb2.ChatMessage, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("chat_id", "after_seq", "limit")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    after_seq: int
    limit: int
    def __init__(self, chat_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_task_pb2.ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[_task_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class WatchMessagesRequest(_message.Message):
    __slots__ = ("chat_id", "after_seq")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    after_seq: int
    def __init__(self, chat_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class WatchMessagesResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _task_pb2.ChatMessage
    def __init__(self, message: _Optional[_Union[_task_pb2.ChatMessage, _Mapping]] = ...) -> None: ...

class RecordRunStartedRequest(_message.Message):
    __slots__ = ("chat_id", "run", "plan", "state", "supervisor_id")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    run: _runtime_pb2.Run
    plan: _plan_pb2.SpawnPlan
    state: _runtime_pb2.RuntimeState
    supervisor_id: str
    def __init__(self, chat_id: _Optional[str] = ..., run: _Optional[_Union[_runtime_pb2.Run, _Mapping]] = ..., plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ..., state: _Optional[_Union[_runtime_pb2.RuntimeState, str]] = ..., supervisor_id: _Optional[str] = ...) -> None: ...

class RecordRunStartedResponse(_message.Message):
    __slots__ = ("runtime",)
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class RecordRunExitedRequest(_message.Message):
    __slots__ = ("chat_id", "run", "state", "restart_count", "next_restart_at", "last_error", "supervisor_id", "plan")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RESTART_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    run: _runtime_pb2.Run
    state: _runtime_pb2.RuntimeState
    restart_count: int
    next_restart_at: _timestamp_pb2.Timestamp
    last_error: str
    supervisor_id: str
    plan: _plan_pb2.SpawnPlan
    def __init__(self, chat_id: _Optional[str] = ..., run: _Optional[_Union[_runtime_pb2.Run, _Mapping]] = ..., state: _Optional[_Union[_runtime_pb2.RuntimeState, str]] = ..., restart_count: _Optional[int] = ..., next_restart_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ...) -> None: ...

class RecordRunExitedResponse(_message.Message):
    __slots__ = ("runtime",)
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class UpdateChatRuntimeRequest(_message.Message):
    __slots__ = ("chat_id", "state", "restart_count", "next_restart_at", "last_error", "supervisor_id", "plan")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RESTART_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    state: _runtime_pb2.RuntimeState
    restart_count: int
    next_restart_at: _timestamp_pb2.Timestamp
    last_error: str
    supervisor_id: str
    plan: _plan_pb2.SpawnPlan
    def __init__(self, chat_id: _Optional[str] = ..., state: _Optional[_Union[_runtime_pb2.RuntimeState, str]] = ..., restart_count: _Optional[int] = ..., next_restart_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ...) -> None: ...

class UpdateChatRuntimeResponse(_message.Message):
    __slots__ = ("runtime",)
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class RenewLeasesRequest(_message.Message):
    __slots__ = ("supervisor_id", "lease_seconds")
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    supervisor_id: str
    lease_seconds: int
    def __init__(self, supervisor_id: _Optional[str] = ..., lease_seconds: _Optional[int] = ...) -> None: ...

class RenewLeasesResponse(_message.Message):
    __slots__ = ("renewed", "lease_expires_at")
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    renewed: int
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, renewed: _Optional[int] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("runtime", "previous_supervisor_id")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    runtime: _runtime_pb2.ChatRuntime
    previous_supervisor_id: str
    def __init__(self, runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ..., previous_supervisor_id: _Optional[str] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class ReconcileAction(_message.Message):
    __slots__ = ("task_id", "from_status", "to_status", "reason", "applied")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    TO_STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    from_status: _task_pb2.TaskStatus
    to_status: _task_pb2.TaskStatus
    reason: str
    applied: bool
    def __init__(self, task_id: _Optional[str] = ..., from_status: _Optional[_Union[_task_pb2.TaskStatus, str]] = ..., to_status: _Optional[_Union[_task_pb2.TaskStatus, str]] = ..., reason: _Optional[str] = ..., applied: _Optional[bool] = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("actions", "examined", "kept")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    EXAMINED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[ReconcileAction]
    examined: int
    kept: _containers.RepeatedCompositeFieldContainer[ReconcileAction]
    def __init__(self, actions: _Optional[_Iterable[_Union[ReconcileAction, _Mapping]]] = ..., examined: _Optional[int] = ..., kept: _Optional[_Iterable[_Union[ReconcileAction, _Mapping]]] = ...) -> None: ...
