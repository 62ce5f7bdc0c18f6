"""Hypothesis strategies generated from protobuf message descriptors, and malformed request bytes.

`messages(descriptor)` draws a message of that type: every scalar type over its whole range with its
edge values, strings that have broken things before (ids with a trailing newline, paths out of the
state dir, NUL, huge), enums in and out of range, Timestamps in and out of the valid range, nested
messages to a bounded depth, repeated and map fields, one member of each oneof. `malformed(descriptor)`
draws bytes that are not a valid serialization of it (random bytes, truncations, wrong wire types,
invalid UTF-8 in string fields, overlong varints).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

T = FieldDescriptor
MAX_DEPTH = 3

INTERESTING_STRINGS = [
    "", ".chat-1", ".chat-1\n", ".chat-0", ".chat-999999999", ".chat-1/../../etc", "../../../../etc/passwd",
    "/etc/passwd", "/proc/self/environ", "chat-1", "task-1", "a" * 129, "x" * 70_000, "\x00", "a\x00b",
    "line\nbreak", "\u202e\u0301", "sup-a", "native", "claude", "codex", "command", "nex", "lab", "m",
    "http://127.0.0.1:1", "https://user:pw@example.invalid/v1", "0" * 32, "f" * 16, "req-1", "wgs1.a.b",
    "%s%s%n", "' OR 1=1 --", "${HOME}", "🙂",
]

_INT32 = st.one_of(st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 5, 100, 1000, 1001]),
                   st.integers(-(2**31), 2**31 - 1))
_INT64 = st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**53]), st.integers(-(2**63), 2**63 - 1))
_UINT32 = st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
_UINT64 = st.one_of(st.sampled_from([0, 1, 2**64 - 1]), st.integers(0, 2**64 - 1))
_STRING = st.one_of(st.sampled_from(INTERESTING_STRINGS), st.text(max_size=40))
_BYTES = st.binary(max_size=64)

SCALARS: dict[int, st.SearchStrategy[Any]] = {
    T.TYPE_INT32: _INT32, T.TYPE_SINT32: _INT32, T.TYPE_SFIXED32: _INT32,
    T.TYPE_INT64: _INT64, T.TYPE_SINT64: _INT64, T.TYPE_SFIXED64: _INT64,
    T.TYPE_UINT32: _UINT32, T.TYPE_FIXED32: _UINT32, T.TYPE_UINT64: _UINT64, T.TYPE_FIXED64: _UINT64,
    T.TYPE_BOOL: st.booleans(), T.TYPE_FLOAT: st.floats(width=32), T.TYPE_DOUBLE: st.floats(),
    T.TYPE_STRING: _STRING, T.TYPE_BYTES: _BYTES,
}

# Field names whose values mostly come from what exists in the fuzzed stack, so requests get past
# validation and reach the services' logic (the rest of the time: anything).
KNOWN_CHATS = [".chat-1", ".chat-2", ".chat-3"]
SUPERVISOR_ID = "sup-fuzz"


def _mostly(values: list[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(values), st.sampled_from(values), st.sampled_from(values), other)


FIELD_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "chat_id": _mostly(KNOWN_CHATS, _STRING),
    "id": _mostly([*KNOWN_CHATS, "task-1", "task-2"], _STRING),
    "task_id": _mostly([*KNOWN_CHATS, "task-1"], _STRING),
    "supervisor_id": _mostly([SUPERVISOR_ID, "other-sup"], _STRING),
    "request_id": _mostly(["req-1", "req-2", "req-3"], _STRING),
    "lease_seconds": st.one_of(st.integers(1, 60), _INT32),
    "after_seq": st.one_of(st.integers(0, 5), _INT64),
    "expected_version": st.one_of(st.integers(0, 5), _INT64),
    "number": st.one_of(st.integers(1, 4), _INT32),
    "page_size": st.one_of(st.integers(0, 1001), _INT32),
    "limit": st.one_of(st.integers(0, 1001), _INT32),
}

TIMESTAMP = "google.protobuf.Timestamp"
_SECONDS_EDGES = [0, 1, -1, 253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801, 2**63 - 1,
                  -(2**63), 1_800_000_000]
_NANOS_EDGES = [0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)]


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    hint = FIELD_HINTS.get(field.name)
    if hint is not None and field.type not in (T.TYPE_MESSAGE, T.TYPE_ENUM):
        return hint
    if field.type == T.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.sampled_from([-1, max(numbers) + 1, 2**31 - 1]))
    if field.type == T.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return SCALARS[field.type]


def _class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@st.composite
def _timestamp(draw: st.DrawFn, descriptor: Descriptor) -> Message:
    ts = _class(descriptor)()
    ts.seconds = draw(st.one_of(st.sampled_from(_SECONDS_EDGES), st.integers(-(2**40), 2**40)))  # type: ignore[attr-defined]
    ts.nanos = draw(st.one_of(st.sampled_from(_NANOS_EDGES), st.integers(0, 999_999_999)))  # type: ignore[attr-defined]
    return ts


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> Message:
    msg = _class(descriptor)()
    if depth >= MAX_DEPTH:
        return msg
    oneof_chosen: dict[str, str | None] = {
        o.name: draw(st.sampled_from([None, *[f.name for f in o.fields]])) for o in descriptor.oneofs
        if not (len(o.fields) == 1 and o.fields[0].has_presence and o.name.startswith("_"))  # proto3 optional
    }
    for field in descriptor.fields:
        group = field.containing_oneof
        if group is not None and group.name in oneof_chosen and oneof_chosen[group.name] != field.name:
            continue
        if group is None or group.name not in oneof_chosen:
            if not draw(st.booleans()):  # leave about half of the fields unset
                continue
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            key_field, value_field = sub.fields_by_name["key"], sub.fields_by_name["value"]
            items = draw(st.dictionaries(_value(key_field, depth), _value(value_field, depth), max_size=3))
            target = getattr(msg, field.name)
            for k, v in items.items():
                if value_field.type == T.TYPE_MESSAGE:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            values = draw(st.lists(_value(field, depth), max_size=4))
            target = getattr(msg, field.name)
            if field.type == T.TYPE_MESSAGE:
                for v in values:
                    target.add().CopyFrom(v)
            else:
                target.extend(values)
        elif field.type == T.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(draw(_value(field, depth)))
        else:
            setattr(msg, field.name, draw(_value(field, depth)))
    return msg


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type (see the module docstring)."""
    if descriptor.full_name == TIMESTAMP:
        return _timestamp(descriptor)
    return _message(descriptor, depth)


# -- malformed bytes ----------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_fields(descriptor: Descriptor) -> list[int]:
    return [f.number for f in descriptor.fields if f.type == T.TYPE_STRING and not f.is_repeated] or [1]


@st.composite
def malformed(draw: st.DrawFn, descriptor: Descriptor) -> bytes:
    """Bytes that do not parse as `descriptor`'s message (most of them; a few random ones may)."""
    kind = draw(st.sampled_from(["random", "truncated", "bad_utf8", "wrong_wire_type", "overlong_varint",
                                 "huge_length", "end_group"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=200))
    if kind == "truncated":
        valid = draw(messages(descriptor)).SerializeToString()
        extra = _varint((1 << 3) | 2) + _varint(50) + b"short"  # a length-delimited field cut short
        whole = valid + extra
        return whole[: draw(st.integers(len(valid) + 1, len(whole) - 1))]
    if kind == "bad_utf8":
        number = draw(st.sampled_from(_string_fields(descriptor)))
        junk = draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"a\x80b"]))
        return _varint((number << 3) | 2) + _varint(len(junk)) + junk
    if kind == "wrong_wire_type":
        number = draw(st.sampled_from([f.number for f in descriptor.fields] or [1]))
        return _varint((number << 3) | draw(st.sampled_from([3, 6, 7])))
    if kind == "overlong_varint":
        return _varint(1 << 3) + b"\xff" * 11
    if kind == "huge_length":
        return _varint((1 << 3) | 2) + _varint(2**31)
    return _varint((1 << 3) | 4)  # an END_GROUP without a start
