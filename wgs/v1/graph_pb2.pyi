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
    __slots__ = ("chat_id", "after_seq", "page_size", "page_token")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    after_seq: int
    page_size: int
    page_token: str
    def __init__(self, chat_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_task_pb2.ChatMessage]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_task_pb2.ChatMessage, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchMessagesRequest(_message.Message):
    __slots__ = ("chat_id", "after_seq", "include_partial")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    after_seq: int
    include_partial: bool
    def __init__(self, chat_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., include_partial: _Optional[bool] = ...) -> None: ...

class WatchMessagesResponse(_message.Message):
    __slots__ = ("message", "partial")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    message: _task_pb2.ChatMessage
    partial: _task_pb2.PartialMessage
    def __init__(self, message: _Optional[_Union[_task_pb2.ChatMessage, _Mapping]] = ..., partial: _Optional[_Union[_task_pb2.PartialMessage, _Mapping]] = ...) -> None: ...

class ReportAgentStatusRequest(_message.Message):
    __slots__ = ("chat_id", "run_number", "answer_error", "answer_succeeded", "waiting", "endpoint_ok", "input_tokens", "output_tokens", "context_window", "context_window_source", "context_window_detail")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ERROR_FIELD_NUMBER: _ClassVar[int]
    ANSWER_SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_OK_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_DETAIL_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    run_number: int
    answer_error: _runtime_pb2.AnswerError
    answer_succeeded: bool
    waiting: _runtime_pb2.EndpointWait
    endpoint_ok: bool
    input_tokens: int
    output_tokens: int
    context_window: int
    context_window_source: _plan_pb2.ChoiceSource
    context_window_detail: str
    def __init__(self, chat_id: _Optional[str] = ..., run_number: _Optional[int] = ..., answer_error: _Optional[_Union[_runtime_pb2.AnswerError, _Mapping]] = ..., answer_succeeded: _Optional[bool] = ..., waiting: _Optional[_Union[_runtime_pb2.EndpointWait, _Mapping]] = ..., endpoint_ok: _Optional[bool] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., context_window: _Optional[int] = ..., context_window_source: _Optional[_Union[_plan_pb2.ChoiceSource, str]] = ..., context_window_detail: _Optional[str] = ...) -> None: ...

class ReportAgentStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _runtime_pb2.AgentStatus
    def __init__(self, status: _Optional[_Union[_runtime_pb2.AgentStatus, _Mapping]] = ...) -> None: ...

class PublishPartialMessageRequest(_message.Message):
    __slots__ = ("chat_id", "run_number", "request_id", "offset", "text")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_NUMBER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    run_number: int
    request_id: str
    offset: int
    text: str
    def __init__(self, chat_id: _Optional[str] = ..., run_number: _Optional[int] = ..., request_id: _Optional[str] = ..., offset: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class PublishPartialMessageResponse(_message.Message):
    __slots__ = ("delivered",)
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    delivered: int
    def __init__(self, delivered: _Optional[int] = ...) -> None: ...

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
