"""Backend of `wgs-agent native`: answers with an OpenAI-compatible endpoint."""

from __future__ import annotations

from wgs.agent.conversation import Turn
from wgs.agent.openai_http import OpenAIClient


class NativeBackend:
    def __init__(self, client: OpenAIClient, system_prompt: str) -> None:
        self.client = client
        self.system_prompt = system_prompt
        self.description = f"native model={client.s.model} endpoint={client.s.base_url}"

    async def start(self) -> None:
        await self.client.check()

    async def answer(self, turns: list[Turn], prompt: str) -> str:
        messages = self.client.build_messages(self.system_prompt, [(t.user, t.assistant) for t in turns], prompt)
        return await self.client.complete(messages)

    async def interrupt(self) -> None:
        return None  # cancelling the task closed the HTTP stream

    async def close(self) -> None:
        await self.client.aclose()
