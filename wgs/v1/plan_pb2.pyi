from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChoiceSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHOICE_SOURCE_UNSPECIFIED: _ClassVar[ChoiceSource]
    CHOICE_SOURCE_REQUEST: _ClassVar[ChoiceSource]
    CHOICE_SOURCE_CHAT: _ClassVar[ChoiceSource]
    CHOICE_SOURCE_CONFIG_DEFAULT: _ClassVar[ChoiceSource]
    CHOICE_SOURCE_CONFIG_ENDPOINT: _ClassVar[ChoiceSource]
    CHOICE_SOURCE_BUILTIN: _ClassVar[ChoiceSource]
    CHOICE_SOURCE_NONE: _ClassVar[ChoiceSource]
    CHOICE_SOURCE_SERVER: _ClassVar[ChoiceSource]
CHOICE_SOURCE_UNSPECIFIED: ChoiceSource
CHOICE_SOURCE_REQUEST: ChoiceSource
CHOICE_SOURCE_CHAT: ChoiceSource
CHOICE_SOURCE_CONFIG_DEFAULT: ChoiceSource
CHOICE_SOURCE_CONFIG_ENDPOINT: ChoiceSource
CHOICE_SOURCE_BUILTIN: ChoiceSource
CHOICE_SOURCE_NONE: ChoiceSource
CHOICE_SOURCE_SERVER: ChoiceSource

class PlannedEndpoint(_message.Message):
    __slots__ = ("name", "url", "provider", "api_key_env", "source", "source_detail", "ca_file")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ENV_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    CA_FILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    provider: str
    api_key_env: str
    source: ChoiceSource
    source_detail: str
    ca_file: str
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., provider: _Optional[str] = ..., api_key_env: _Optional[str] = ..., source: _Optional[_Union[ChoiceSource, str]] = ..., source_detail: _Optional[str] = ..., ca_file: _Optional[str] = ...) -> None: ...

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

class GenerationSettings(_message.Message):
    __slots__ = ("max_tokens", "max_tokens_source", "temperature", "temperature_source", "top_p", "top_p_source", "stop", "stop_source", "context_window", "context_window_source")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_P_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_SOURCE_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    max_tokens_source: ChoiceSource
    temperature: float
    temperature_source: ChoiceSource
    top_p: float
    top_p_source: ChoiceSource
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_source: ChoiceSource
    context_window: int
    context_window_source: ChoiceSource
    def __init__(self, max_tokens: _Optional[int] = ..., max_tokens_source: _Optional[_Union[ChoiceSource, str]] = ..., temperature: _Optional[float] = ..., temperature_source: _Optional[_Union[ChoiceSource, str]] = ..., top_p: _Optional[float] = ..., top_p_source: _Optional[_Union[ChoiceSource, str]] = ..., stop: _Optional[_Iterable[str]] = ..., stop_source: _Optional[_Union[ChoiceSource, str]] = ..., context_window: _Optional[int] = ..., context_window_source: _Optional[_Union[ChoiceSource, str]] = ...) -> None: ...

class GenerationOverrides(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "stop", "context_window")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    context_window: int
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., context_window: _Optional[int] = ...) -> None: ...

class SpawnPlan(_message.Message):
    __slots__ = ("executor", "executor_source", "executor_source_detail", "model", "model_source", "model_source_detail", "endpoint", "argv", "env", "working_dir", "summary", "unset_env", "generation")
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_SOURCE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    UNSET_ENV_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    executor: str
    executor_source: ChoiceSource
    executor_source_detail: str
    model: str
    model_source: ChoiceSource
    model_source_detail: str
    endpoint: PlannedEndpoint
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedCompositeFieldContainer[EnvVar]
    working_dir: str
    summary: str
    unset_env: _containers.RepeatedScalarFieldContainer[str]
    generation: GenerationSettings
    def __init__(self, executor: _Optional[str] = ..., executor_source: _Optional[_Union[ChoiceSource, str]] = ..., executor_source_detail: _Optional[str] = ..., model: _Optional[str] = ..., model_source: _Optional[_Union[ChoiceSource, str]] = ..., model_source_detail: _Optional[str] = ..., endpoint: _Optional[_Union[PlannedEndpoint, _Mapping]] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[_Union[EnvVar, _Mapping]]] = ..., working_dir: _Optional[str] = ..., summary: _Optional[str] = ..., unset_env: _Optional[_Iterable[str]] = ..., generation: _Optional[_Union[GenerationSettings, _Mapping]] = ...) -> None: ...
