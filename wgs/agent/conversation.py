"""The conversation as the agent sees it: which USER messages still need an answer, and the
history to send with each. Pure (no I/O), rebuilt from the graph's messages.

Each USER message is answered exactly once, by an ASSISTANT or SYSTEM_ERROR message carrying the
user's request id (the graph makes (chat, role, request_id) unique). A USER message stored without
a request id is keyed by its seq ("seq-N"), so its answer is still idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgs.v1 import task_pb2

USER = task_pb2.MESSAGE_ROLE_USER
ASSISTANT = task_pb2.MESSAGE_ROLE_ASSISTANT
SYSTEM_ERROR = task_pb2.MESSAGE_ROLE_SYSTEM_ERROR


@dataclass(frozen=True)
class Msg:
    seq: int
    role: int
    content: str
    request_id: str
    traceparent: str = ""  # W3C trace context of the call that sent it (SendMessage), when stored

    @classmethod
    def from_proto(cls, m: task_pb2.ChatMessage) -> Msg:
        # The trace of the call that stored the message (SendMessage): the answer joins it.
        return cls(seq=m.seq, role=m.role, content=m.content, request_id=m.request_id,
                   traceparent=m.trace_parent)

    @property
    def key(self) -> str:
        """The request id an answer to this (USER) message carries."""
        return self.request_id or f"seq-{self.seq}"


@dataclass(frozen=True)
class Turn:
    """One completed exchange: what the user said and what the agent answered."""

    user: str
    assistant: str


@dataclass
class Conversation:
    users: list[Msg] = field(default_factory=list)  # USER messages in seq order
    answers: dict[str, Msg] = field(default_factory=dict)  # request key -> first answer
    last_seq: int = 0
    last: Msg | None = None  # the message with the highest seq
    _seen: set[int] = field(default_factory=set)

    def add(self, m: Msg) -> None:
        """Record a message (duplicates, e.g. from a re-opened watch, are ignored)."""
        if m.seq in self._seen:
            return
        self._seen.add(m.seq)
        if m.seq > self.last_seq:
            self.last_seq, self.last = m.seq, m
        if m.role == USER:
            self.users.append(m)
            self.users.sort(key=lambda u: u.seq)
        elif m.role in (ASSISTANT, SYSTEM_ERROR) and m.request_id:
            self.answers.setdefault(m.request_id, m)

    def is_answered(self, user: Msg) -> bool:
        return user.key in self.answers

    def pending(self) -> list[Msg]:
        """USER messages without an answer, oldest first."""
        return [u for u in self.users if not self.is_answered(u)]

    def next_pending(self) -> Msg | None:
        for u in self.users:
            if not self.is_answered(u):
                return u
        return None

    def history_before(self, user: Msg) -> list[Turn]:
        """Completed turns before `user`, in the order the user asked them.

        A turn answered with SYSTEM_ERROR is left out (the model never answered it), as are
        unanswered ones; informational SYSTEM messages are not part of the model's context.
        """
        turns: list[Turn] = []
        for u in self.users:
            if u.seq >= user.seq:
                break
            ans = self.answers.get(u.key)
            if ans is not None and ans.role == ASSISTANT:
                turns.append(Turn(u.content, ans.content))
        return turns

    def all_turns(self) -> list[Turn]:
        turns: list[Turn] = []
        for u in self.users:
            ans = self.answers.get(u.key)
            if ans is not None and ans.role == ASSISTANT:
                turns.append(Turn(u.content, ans.content))
        return turns
