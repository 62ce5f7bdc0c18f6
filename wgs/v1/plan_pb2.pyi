from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlannedEndpoint(_message.Message):
    __slots__ = ("name", "url", "provider", "api_key_env", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ENV_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    provider: str
    api_key_env: str
    source: str
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., provider: _Optional[str] = ..., api_key_env: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class EnvVar(_message.Message):
    __slots__ = ("name", "value", "value_from_env", "secret")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FROM_ENV_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    value_from_env: str
    secret: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., value_from_env: _Optional[str] = ..., secret: _Optional[bool] = ...) -> None: ...

class SpawnPlan(_message.Message):
    __slots__ = ("chat_id", "executor", "executor_source", "model", "model_source", "endpoint", "argv", "env", "working_dir", "summary", "unset_env")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    UNSET_ENV_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    executor: str
    executor_source: str
    model: str
    model_source: str
    endpoint: PlannedEndpoint
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedCompositeFieldContainer[EnvVar]
    working_dir: str
    summary: str
    unset_env: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chat_id: _Optional[str] = ..., executor: _Optional[str] = ..., executor_source: _Optional[str] = ..., model: _Optional[str] = ..., model_source: _Optional[str] = ..., endpoint: _Optional[_Union[PlannedEndpoint, _Mapping]] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[_Union[EnvVar, _Mapping]]] = ..., working_dir: _Optional[str] = ..., summary: _Optional[str] = ..., unset_env: _Optional[_Iterable[str]] = ...) -> None: ...
