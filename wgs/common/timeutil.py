"""Conversions between datetimes and protobuf Timestamps (always UTC), and their validation.

A Timestamp off the wire may hold any int64 seconds and int32 nanos; only 0001-01-01T00:00:00Z to
9999-12-31T23:59:59.999999999Z with nanos in [0, 1e9) is valid (google/protobuf/timestamp.proto).
The server checks every Timestamp of a request before the service sees it (`check_timestamps`), so
a bad value is INVALID_ARGUMENT naming its field, never an INTERNAL from a conversion deep inside.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from wgs.common.errors import InvalidArgument

MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_ts(value: datetime | None) -> Timestamp | None:
    """The Timestamp of `value` (naive means UTC). Integer arithmetic on the offset from the epoch:
    the same result as Timestamp.FromDatetime for every datetime, in half the time (lists convert
    thousands)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH  # days may be negative; seconds and microseconds never are
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def set_ts(field: Timestamp, value: datetime | None) -> None:
    """Set a message's Timestamp field in place to `value` (None leaves it unset): no Timestamp is
    built and copied, which is most of the cost of converting a row with several times."""
    if value is None:
        return
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    field.seconds = delta.days * 86_400 + delta.seconds
    field.nanos = delta.microseconds * 1000


def timestamp_problem(ts: Timestamp) -> str | None:
    """Why `ts` is not a valid Timestamp, or None if it is."""
    if not MIN_SECONDS <= ts.seconds <= MAX_SECONDS:
        return f"seconds {ts.seconds} is out of range (years 1 to 9999)"
    if not 0 <= ts.nanos <= 999_999_999:
        return f"nanos {ts.nanos} is out of range (0 to 999999999)"
    return None


def from_ts(ts: Timestamp | None, field: str = "timestamp") -> datetime | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    problem = timestamp_problem(ts)
    if problem is not None:
        raise InvalidArgument(f"{field}: {problem}", field)
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):  # a year below 1 after the UTC shift
        raise InvalidArgument(f"{field}: {ts.seconds}s is not a representable time", field) from None


def check_timestamps(message: Message, prefix: str = "") -> None:
    """Raise InvalidArgument naming the first invalid Timestamp field anywhere in `message`."""
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        name = f"{prefix}{field.name}"
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            value_field = sub.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for key, item in value.items():
                    _check_one(item, f"{name}[{key!r}]")
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                _check_one(item, f"{name}[{i}]")
        else:
            _check_one(value, name)


def _check_one(value: Message, name: str) -> None:
    if value.DESCRIPTOR.full_name == _TIMESTAMP:
        problem = timestamp_problem(value)  # type: ignore[arg-type]
        if problem is not None:
            raise InvalidArgument(f"{name}: {problem}", name)
        return
    check_timestamps(value, name + ".")
