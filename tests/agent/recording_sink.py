"""A StatusSink test double: records every event, in order."""

from __future__ import annotations

from typing import Any, TypeVar

from wgs.agent.status import (
    AnswerFailedEvent,
    AnswerSucceededEvent,
    ContextWindowEvent,
    EndpointBackEvent,
    EndpointWaitingEvent,
    PartialReplyEvent,
    TokenUsageEvent,
)

E = TypeVar("E")


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def _add(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def answer_failed(self, event: AnswerFailedEvent) -> None:
        await self._add(event)

    async def answer_succeeded(self, event: AnswerSucceededEvent) -> None:
        await self._add(event)

    async def endpoint_waiting(self, event: EndpointWaitingEvent) -> None:
        await self._add(event)

    async def endpoint_back(self, event: EndpointBackEvent) -> None:
        await self._add(event)

    async def token_usage(self, event: TokenUsageEvent) -> None:
        await self._add(event)

    async def partial_reply(self, event: PartialReplyEvent) -> None:
        await self._add(event)

    async def context_window(self, event: ContextWindowEvent) -> None:
        await self._add(event)
