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

class Chat(_message.Message):
    __slots__ = ("id", "name", "title", "status", "tags", "model", "executor", "endpoint", "command", "created_at", "runtime", "stderr_tail", "trace_id", "pid", "generation", "owner_notice")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    STDERR_TAIL_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    OWNER_NOTICE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    title: str
    status: _task_pb2.TaskStatus
    tags: _containers.RepeatedScalarFieldContainer[str]
    model: str
    executor: str
    endpoint: str
    command: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    runtime: _runtime_pb2.ChatRuntime
    stderr_tail: str
    trace_id: str
    pid: int
    generation: _plan_pb2.GenerationOverrides
    owner_notice: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., title: _Optional[str] = ..., status: _Optional[_Union[_task_pb2.TaskStatus, str]] = ..., tags: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., executor: _Optional[str] = ..., endpoint: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ..., stderr_tail: _Optional[str] = ..., trace_id: _Optional[str] = ..., pid: _Optional[int] = ..., generation: _Optional[_Union[_plan_pb2.GenerationOverrides, _Mapping]] = ..., owner_notice: _Optional[str] = ...) -> None: ...

class CreateChatRequest(_message.Message):
    __slots__ = ("name", "model", "executor", "endpoint", "command", "request_id", "working_dir", "generation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    executor: str
    endpoint: str
    command: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    working_dir: str
    generation: _plan_pb2.GenerationOverrides
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., executor: _Optional[str] = ..., endpoint: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., working_dir: _Optional[str] = ..., generation: _Optional[_Union[_plan_pb2.GenerationOverrides, _Mapping]] = ...) -> None: ...

class CreateChatResponse(_message.Message):
    __slots__ = ("chat", "created")
    CHAT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    chat: Chat
    created: bool
    def __init__(self, chat: _Optional[_Union[Chat, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetChatRequest(_message.Message):
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class GetChatResponse(_message.Message):
    __slots__ = ("chat",)
    CHAT_FIELD_NUMBER: _ClassVar[int]
    chat: Chat
    def __init__(self, chat: _Optional[_Union[Chat, _Mapping]] = ...) -> None: ...

class ListChatsRequest(_message.Message):
    __slots__ = ("include_ended", "page_size", "page_token")
    INCLUDE_ENDED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    include_ended: bool
    page_size: int
    page_token: str
    def __init__(self, include_ended: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListChatsResponse(_message.Message):
    __slots__ = ("chats", "next_page_token")
    CHATS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    chats: _containers.RepeatedCompositeFieldContainer[Chat]
    next_page_token: str
    def __init__(self, chats: _Optional[_Iterable[_Union[Chat, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("chat_id", "text", "request_id")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    text: str
    request_id: str
    def __init__(self, chat_id: _Optional[str] = ..., text: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("message", "respawned", "runtime")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPAWNED_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    message: _task_pb2.ChatMessage
    respawned: bool
    runtime: _runtime_pb2.ChatRuntime
    def __init__(self, message: _Optional[_Union[_task_pb2.ChatMessage, _Mapping]] = ..., respawned: _Optional[bool] = ..., runtime: _Optional[_Union[_runtime_pb2.ChatRuntime, _Mapping]] = ...) -> None: ...

class ListChatMessagesRequest(_message.Message):
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

class ListChatMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_task_pb2.ChatMessage]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_task_pb2.ChatMessage, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchChatMessagesRequest(_message.Message):
    __slots__ = ("chat_id", "after_seq", "include_partial")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    after_seq: int
    include_partial: bool
    def __init__(self, chat_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., include_partial: _Optional[bool] = ...) -> None: ...

class WatchChatMessagesResponse(_message.Message):
    __slots__ = ("message", "partial")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    message: _task_pb2.ChatMessage
    partial: _task_pb2.PartialMessage
    def __init__(self, message: _Optional[_Union[_task_pb2.ChatMessage, _Mapping]] = ..., partial: _Optional[_Union[_task_pb2.PartialMessage, _Mapping]] = ...) -> None: ...

class StopChatRequest(_message.Message):
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class StopChatResponse(_message.Message):
    __slots__ = ("chat",)
    CHAT_FIELD_NUMBER: _ClassVar[int]
    chat: Chat
    def __init__(self, chat: _Optional[_Union[Chat, _Mapping]] = ...) -> None: ...

class DeleteChatRequest(_message.Message):
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class DeleteChatResponse(_message.Message):
    __slots__ = ("chat",)
    CHAT_FIELD_NUMBER: _ClassVar[int]
    chat: Chat
    def __init__(self, chat: _Optional[_Union[Chat, _Mapping]] = ...) -> None: ...

class ArchiveChatRequest(_message.Message):
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class ArchiveChatResponse(_message.Message):
    __slots__ = ("chat",)
    CHAT_FIELD_NUMBER: _ClassVar[int]
    chat: Chat
    def __init__(self, chat: _Optional[_Union[Chat, _Mapping]] = ...) -> None: ...

class InterruptChatRequest(_message.Message):
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class InterruptChatResponse(_message.Message):
    __slots__ = ("delivered", "pid", "detail")
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    delivered: bool
    pid: int
    detail: str
    def __init__(self, delivered: _Optional[bool] = ..., pid: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class RestartChatRequest(_message.Message):
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class RestartChatResponse(_message.Message):
    __slots__ = ("chat",)
    CHAT_FIELD_NUMBER: _ClassVar[int]
    chat: Chat
    def __init__(self, chat: _Optional[_Union[Chat, _Mapping]] = ...) -> None: ...

class WatchChatRequest(_message.Message):
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class WatchChatResponse(_message.Message):
    __slots__ = ("chat",)
    CHAT_FIELD_NUMBER: _ClassVar[int]
    chat: Chat
    def __init__(self, chat: _Optional[_Union[Chat, _Mapping]] = ...) -> None: ...

class StreamChatLogRequest(_message.Message):
    __slots__ = ("chat_id", "run", "follow")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    run: int
    follow: bool
    def __init__(self, chat_id: _Optional[str] = ..., run: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class StreamChatLogResponse(_message.Message):
    __slots__ = ("data", "run_number", "ended", "from_record")
    DATA_FIELD_NUMBER: _ClassVar[int]
    RUN_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    FROM_RECORD_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    run_number: int
    ended: bool
    from_record: bool
    def __init__(self, data: _Optional[bytes] = ..., run_number: _Optional[int] = ..., ended: _Optional[bool] = ..., from_record: _Optional[bool] = ...) -> None: ...
