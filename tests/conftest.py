"""Suite-wide guard: no test may leave an agent (or its run monitor) running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import kill_agents


@pytest.fixture(scope="session", autouse=True)
def no_agent_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    leaked = kill_agents(tmp_path_factory.getbasetemp())
    assert leaked == 0, f"{leaked} agent process group(s) were left running by the tests (now killed)"
