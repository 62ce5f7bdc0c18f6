"""A StatusSink test double: records every event, and lets a test wait for one (no sleeps)."""

from __future__ import annotations

import asyncio
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
        self._changed = asyncio.Condition()

    async def _add(self, event: Any) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type[E], count: int = 1, timeout: float = 20.0) -> E:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.of(kind)) >= count)
        return self.of(kind)[count - 1]

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
