"""Whether an agent's token still speaks for a live run (the graph is where runs are recorded).

An agent token names a chat and a run number (wgs.common.auth); the role table lets it read and
answer its own chat. It is honoured only while that run lives:

- the chat's latest recorded run has that number, has not exited, and the chat is STARTING or
  RUNNING; or
- the run is being spawned: the supervisor mints the token, starts the process, and only then
  records the run (RecordRunStarted), so an agent may call before its run is recorded. A token for
  latest + 1 is accepted while the chat is STARTING and the latest run has exited (or there is none
  yet). Only the supervisor can mint it, and once run N+1 is recorded (started or failed) the rule
  above decides. The rule lives in GraphStore._live_run (agent reports use it too).

Anything else (an older run, a run that exited, a chat in BACKOFF or STOPPED, a chat without a
runtime) is refused. Which chat and run a request may name at all is the role table's part
(wgs.common.auth: the request's chat_id, and run_number for the reports).
"""

from __future__ import annotations

from services.graph.store import GraphStore


class GraphAuthz:
    def __init__(self, store: GraphStore) -> None:
        self.store = store

    async def run_is_live(self, chat_id: str, number: int) -> bool:
        return await self.store.is_live_run(chat_id, number)
