"""Domain errors raised by the plain-Python logic and mapped to gRPC status codes in one place.

Logic modules raise these; the server interceptor (wgs.common.server) turns them into a status
with the message unchanged, so the message must be one a person can act on.
"""

from __future__ import annotations

import grpc


class WgsError(Exception):
    """Base class: an error whose message is meant for the caller."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(WgsError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(WgsError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(WgsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(WgsError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(WgsError):
    """A concurrent change won (optimistic concurrency); re-read and retry."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(WgsError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(WgsError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(WgsError):
    """No credentials, or credentials this stack did not issue."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(WgsError):
    """Valid credentials that do not allow this call; the message names the role and the call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ConfigError(Exception):
    """Bad configuration detected at start-up; the process exits with this message."""
