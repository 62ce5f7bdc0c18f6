from wgs.v1 import runtime_service_pb2 as _runtime_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StopAgentsRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StoppedAgent(_message.Message):
    __slots__ = ("chat_id", "run_number", "pid", "outcome")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    run_number: int
    pid: int
    outcome: str
    def __init__(self, chat_id: _Optional[str] = ..., run_number: _Optional[int] = ..., pid: _Optional[int] = ..., outcome: _Optional[str] = ...) -> None: ...

class StopAgentsResponse(_message.Message):
    __slots__ = ("stopped",)
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    stopped: _containers.RepeatedCompositeFieldContainer[StoppedAgent]
    def __init__(self, stopped: _Optional[_Iterable[_Union[StoppedAgent, _Mapping]]] = ...) -> None: ...

class ListReplicasRequest(_message.Message):
    __slots__ = ("include_expired",)
    INCLUDE_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    include_expired: bool
    def __init__(self, include_expired: _Optional[bool] = ...) -> None: ...

class ListReplicasResponse(_message.Message):
    __slots__ = ("replicas", "answered_by")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[_runtime_service_pb2.SupervisorInfo]
    answered_by: str
    def __init__(self, replicas: _Optional[_Iterable[_Union[_runtime_service_pb2.SupervisorInfo, _Mapping]]] = ..., answered_by: _Optional[str] = ...) -> None: ...
