"""Fixtures for the graph tests: every store test runs on SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.graph import db, migrate
from services.graph.records import ChatRecords
from services.graph.store import GraphStore
from tests import harness


@pytest.fixture(params=harness.test_database_urls())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty database (not migrated)."""
    with harness.fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[GraphStore]:
    """A GraphStore over a freshly migrated database."""
    engine = db.create_engine(db_url)
    migrate.upgrade(engine)
    st = GraphStore(engine)
    try:
        yield st
    finally:
        await st.close()


@pytest.fixture
def records(store: GraphStore) -> ChatRecords:
    """RuntimeService's logic over the same store."""
    return ChatRecords(store)
