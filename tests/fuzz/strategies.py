"""Hypothesis strategies generated from protobuf message descriptors, and malformed request bytes.

`messages(descriptor)` draws a message of that type, half of the time *wild*: every scalar type over
its whole range with its edge values, strings that have broken things before (ids with a trailing
newline, paths out of the state dir, NUL, huge), enums in and out of range, Timestamps in and out of
the valid range, nested messages to a bounded depth, repeated and map fields, one member of each
oneof; and half of the time *plausible*: the same fields with values a caller would send (the ids of
what the fuzzed stack holds, valid enums and times, small numbers), so that requests get past
validation and reach the services' logic (a RecordRunExited with several exits needs every one of
them valid). `malformed(descriptor)` draws bytes that are not a valid serialization of it (random
bytes, truncations, wrong wire types, invalid UTF-8 in string fields, overlong varints).

Process ids are never drawn at random: a recorded pid is what a supervisor may signal, and these
tests run next to other work (as root, here). Fields that name a process get a pid that cannot
exist, 0, a negative number, or the pid of the test's own bystander process (`Draw.bystander`),
which the supervisor must never signal since it never started it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
# What a plausible free-text field holds (none of them names a program that exists).
PLAIN_STRINGS = ["", "fuzz", "a reply", "chat-loop", "line one\nline two"]

_INT32 = st.one_of(st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 5, 100, 1000, 1001]),
                   st.integers(-(2**31), 2**31 - 1))
_INT64 = st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**53]), st.integers(-(2**63), 2**63 - 1))
_UINT32 = st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
_UINT64 = st.one_of(st.sampled_from([0, 1, 2**64 - 1]), st.integers(0, 2**64 - 1))
_STRING = st.one_of(st.sampled_from(INTERESTING_STRINGS), st.text(max_size=40))
_BYTES = st.binary(max_size=64)

WILD: dict[int, st.SearchStrategy[Any]] = {
    T.TYPE_INT32: _INT32, T.TYPE_SINT32: _INT32, T.TYPE_SFIXED32: _INT32,
    T.TYPE_INT64: _INT64, T.TYPE_SINT64: _INT64, T.TYPE_SFIXED64: _INT64,
    T.TYPE_UINT32: _UINT32, T.TYPE_FIXED32: _UINT32, T.TYPE_UINT64: _UINT64, T.TYPE_FIXED64: _UINT64,
    T.TYPE_BOOL: st.booleans(), T.TYPE_FLOAT: st.floats(width=32), T.TYPE_DOUBLE: st.floats(),
    T.TYPE_STRING: _STRING, T.TYPE_BYTES: _BYTES,
}
_SMALL = st.integers(0, 5)
PLAUSIBLE: dict[int, st.SearchStrategy[Any]] = {
    **{t: _SMALL for t in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32, T.TYPE_INT64, T.TYPE_SINT64,
                           T.TYPE_SFIXED64, T.TYPE_UINT32, T.TYPE_FIXED32, T.TYPE_UINT64, T.TYPE_FIXED64)},
    T.TYPE_BOOL: st.booleans(), T.TYPE_FLOAT: st.floats(0, 2, width=32), T.TYPE_DOUBLE: st.floats(0, 2),
    T.TYPE_STRING: st.sampled_from(PLAIN_STRINGS), T.TYPE_BYTES: st.just(b""),
}

# What exists in the fuzzed stack (tests/fuzz/test_fuzz_services.py seeds it).
KNOWN_CHATS = [".chat-1", ".chat-2", ".chat-3"]
SUPERVISOR_ID = "sup-fuzz"

# Field name → the values a caller would send. Wild messages take them three times in four
# (the rest of the time: anything), plausible messages always.
KNOWN: dict[str, st.SearchStrategy[Any]] = {
    "chat_id": st.sampled_from(KNOWN_CHATS),
    "held_chat_ids": st.sampled_from(KNOWN_CHATS),
    "id": st.sampled_from([*KNOWN_CHATS, "task-1", "task-2"]),
    "task_id": st.sampled_from([*KNOWN_CHATS, "task-1"]),
    "supervisor_id": st.sampled_from([SUPERVISOR_ID, SUPERVISOR_ID, "other-sup"]),
    "request_id": st.sampled_from(["req-1", "req-2", "req-3"]),
    "lease_seconds": st.integers(1, 60),
    "after_seq": st.integers(0, 5),
    "expected_version": st.integers(0, 5),
    "number": st.integers(1, 4),
    "run_number": st.integers(1, 4),
    "run": st.integers(-2, 4),  # StreamChatLogRequest.run (0 latest, -1 previous)
    "page_size": st.integers(0, 1001),
    "restart_count": st.integers(0, 5),
    "exit_code": st.integers(0, 255),
    "signal": st.integers(1, 64),
    "hostname": st.sampled_from(["", "fuzz-host"]),
    "signal_name": st.sampled_from(["", "SIGTERM"]),
    "trace_id": st.sampled_from(["", "0123456789abcdef0123456789abcdef"]),
    "span_id": st.sampled_from(["", "0123456789abcdef"]),
    "executor": st.sampled_from(["", "command", "native"]),
    "tag": st.sampled_from(["", "chat-loop", "archived"]),
    "add_tags": st.sampled_from(["chat-loop", "archived", "fuzz"]),
    "remove_tags": st.sampled_from(["chat-loop", "archived", "fuzz"]),
}
# Fields that name a process (Run.pid, Run.monitor_pid): see the module docstring.
PROCESS_FIELDS = frozenset({"pid", "monitor_pid"})


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 4_194_304  # the kernel's limit (PID_MAX_LIMIT on 64-bit)


def _mostly(values: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(values, values, values, other)


TIMESTAMP = "google.protobuf.Timestamp"
_SECONDS_EDGES = [0, 1, -1, 253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801, 2**63 - 1,
                  -(2**63), 1_800_000_000]
_NANOS_EDGES = [0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)]
_PLAUSIBLE_SECONDS = st.integers(1_700_000_000, 1_900_000_000)


@dataclass(frozen=True)
class Draw:
    """How to draw one message: plausibly or wildly, and the one live pid the fuzzer may name."""

    plausible: bool
    bystander: int = 0

    def pids(self) -> st.SearchStrategy[int]:
        impossible = st.integers(_pid_max() + 1, 2**31 - 1)
        known = [self.bystander] if self.bystander > 0 else [0]
        return st.one_of(st.sampled_from(known), impossible, st.sampled_from([0, -1, -(2**31), 2**31 - 1]))


def _class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _enum(field: FieldDescriptor, how: Draw) -> st.SearchStrategy[int]:
    assert field.enum_type is not None
    numbers = [v.number for v in field.enum_type.values]
    if how.plausible:  # a value that means something (UNSPECIFIED is what an unset field says)
        return st.sampled_from([n for n in numbers if n] or numbers)
    return _mostly(st.sampled_from(numbers), st.sampled_from([-1, max(numbers) + 1, 2**31 - 1]))


def _value(field: FieldDescriptor, depth: int, how: Draw) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return _any_message(field.message_type, depth + 1, how)
    if field.type == T.TYPE_ENUM:
        return _enum(field, how)
    if field.name in PROCESS_FIELDS:
        return how.pids()
    known = KNOWN.get(field.name)
    if known is not None:
        return known if how.plausible else _mostly(known, WILD[field.type])
    return (PLAUSIBLE if how.plausible else WILD)[field.type]


@st.composite
def _timestamp(draw: st.DrawFn, descriptor: Descriptor, how: Draw) -> Message:
    ts = _class(descriptor)()
    if how.plausible:
        ts.seconds = draw(_PLAUSIBLE_SECONDS)  # type: ignore[attr-defined]
        ts.nanos = draw(st.integers(0, 999_999_999))  # type: ignore[attr-defined]
        return ts
    ts.seconds = draw(st.one_of(st.sampled_from(_SECONDS_EDGES), _PLAUSIBLE_SECONDS,  # type: ignore[attr-defined]
                                st.integers(-(2**40), 2**40)))
    ts.nanos = draw(st.one_of(st.sampled_from(_NANOS_EDGES), st.integers(0, 999_999_999)))  # type: ignore[attr-defined]
    return ts


def _present(draw: st.DrawFn, field: FieldDescriptor, how: Draw) -> bool:
    """Whether to set a field: about half of them; but most of the known ones (ids are mostly
    required: left unset, the request never gets past validation) and, in plausible messages, of
    the nested messages and enums (a state) too. (Hypothesis leans to the first choice: set.)"""
    if how.plausible and (field.name in KNOWN or field.type in (T.TYPE_MESSAGE, T.TYPE_ENUM)):
        return draw(st.integers(0, 7)) != 7
    if field.name in KNOWN:
        return draw(st.integers(0, 3)) != 3
    return draw(st.booleans())


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, depth: int, how: Draw) -> Message:
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
        chosen = group is not None and group.name in oneof_chosen  # the drawn member of its oneof
        if not chosen and not _present(draw, field, how):
            continue
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            key_field, value_field = sub.fields_by_name["key"], sub.fields_by_name["value"]
            items = draw(st.dictionaries(_value(key_field, depth, how), _value(value_field, depth, how),
                                         max_size=3))
            target = getattr(msg, field.name)
            for k, v in items.items():
                if value_field.type == T.TYPE_MESSAGE:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            wanted = how.plausible and (field.type == T.TYPE_MESSAGE or field.name in KNOWN)
            values = draw(st.lists(_value(field, depth, how), min_size=1 if wanted else 0,
                                   max_size=2 if how.plausible else 4))
            target = getattr(msg, field.name)
            if field.type == T.TYPE_MESSAGE:
                for v in values:
                    target.add().CopyFrom(v)
            else:
                target.extend(values)
        elif field.type == T.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(draw(_value(field, depth, how)))
        else:
            setattr(msg, field.name, draw(_value(field, depth, how)))
    return msg


def _any_message(descriptor: Descriptor, depth: int, how: Draw) -> st.SearchStrategy[Message]:
    if descriptor.full_name == TIMESTAMP:
        return _timestamp(descriptor, how)
    return _message(descriptor, depth, how)


def messages(descriptor: Descriptor, *, bystander: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type, half plausible, half wild (see the module docstring);
    `bystander` is the pid fields naming a process may take besides impossible ones."""
    return st.one_of(_any_message(descriptor, 0, Draw(True, bystander)),
                     _any_message(descriptor, 0, Draw(False, bystander)))


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
