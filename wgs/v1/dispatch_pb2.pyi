from wgs.v1 import plan_pb2 as _plan_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SettingsOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETTINGS_ORIGIN_UNSPECIFIED: _ClassVar[SettingsOrigin]
    SETTINGS_ORIGIN_REQUEST: _ClassVar[SettingsOrigin]
    SETTINGS_ORIGIN_CHAT: _ClassVar[SettingsOrigin]
SETTINGS_ORIGIN_UNSPECIFIED: SettingsOrigin
SETTINGS_ORIGIN_REQUEST: SettingsOrigin
SETTINGS_ORIGIN_CHAT: SettingsOrigin

class PlanSpawnRequest(_message.Message):
    __slots__ = ("executor", "model", "endpoint", "command", "working_dir", "origin", "generation")
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    executor: str
    model: str
    endpoint: str
    command: _containers.RepeatedScalarFieldContainer[str]
    working_dir: str
    origin: SettingsOrigin
    generation: _plan_pb2.GenerationOverrides
    def __init__(self, executor: _Optional[str] = ..., model: _Optional[str] = ..., endpoint: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., working_dir: _Optional[str] = ..., origin: _Optional[_Union[SettingsOrigin, str]] = ..., generation: _Optional[_Union[_plan_pb2.GenerationOverrides, _Mapping]] = ...) -> None: ...

class PlanSpawnResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: _plan_pb2.SpawnPlan
    def __init__(self, plan: _Optional[_Union[_plan_pb2.SpawnPlan, _Mapping]] = ...) -> None: ...
