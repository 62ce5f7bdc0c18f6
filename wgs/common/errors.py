"""Domain errors raised by the plain-Python logic and mapped to gRPC status codes in one place.

Logic modules raise these; the server interceptor (wgs.common.server) turns them into a status
with the message unchanged, so the message must be one a person can act on.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2


class WgsError(Exception):
    """Base class: an error whose message is meant for the caller."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        """Structured details sent with the status (google.rpc error details)."""
        return []

    def to_status(self) -> status_pb2.Status:
        """The google.rpc.Status for this error (code, message, details)."""
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=self.details())


class InvalidArgument(WgsError):
    """A request field is malformed. `field` (a path like "generation.max_tokens") becomes a
    google.rpc.BadRequest field violation, so programs can point at the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field

    def details(self) -> list[any_pb2.Any]:
        if not self.field:
            return []
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)])
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


def field_of(details: list[any_pb2.Any]) -> str:
    """The first field named by a google.rpc.BadRequest among status details ("" if none)."""
    for item in details:
        if item.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            item.Unpack(bad)
            for violation in bad.field_violations:
                return str(violation.field)
    return ""


class NotFound(WgsError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(WgsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(WgsError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(WgsError):
    """A concurrent change won (optimistic concurrency); re-read and retry."""

    code = grpc.StatusCode.ABORTED


def _retry_info(seconds: float | None) -> list[any_pb2.Any]:
    if seconds is None:
        return []
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(max(1, int(seconds * 1000)))
    packed = any_pb2.Any()
    packed.Pack(info)
    return [packed]


class ResourceExhausted(WgsError):
    """Over a limit. `retry_after` (seconds) becomes a google.rpc.RetryInfo: when trying again may work."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> list[any_pb2.Any]:
        return _retry_info(self.retry_after)


class Unavailable(WgsError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> list[any_pb2.Any]:
        return _retry_info(self.retry_after)


class Unauthenticated(WgsError):
    """No credentials, or credentials this stack did not issue."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(WgsError):
    """Valid credentials that do not allow this call; the message names the role and the call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ConfigError(Exception):
    """Bad configuration detected at start-up; the process exits with this message."""
