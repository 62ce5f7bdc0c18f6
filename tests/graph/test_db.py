"""Schema, migrations and engine configuration of the graph database."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services.graph import db, migrate
from wgs.common.errors import ConfigError

TABLES = {"tasks", "task_tags", "task_log", "chat_messages", "chat_runtime", "chat_runs", "counters"}


def test_migrations_from_empty_to_head_are_idempotent(db_url: str) -> None:
    engine = db.create_engine(db_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision() is not None
        assert TABLES <= set(sa.inspect(engine).get_table_names())
        migrate.upgrade(engine)  # already at head: nothing to do, no error
        with engine.connect() as conn:
            counters = {name: value for name, value in conn.execute(sa.text("SELECT name, value FROM counters"))}
        assert counters == {"chat": 0, "task": 0}
    finally:
        engine.dispose()


def test_concurrent_migrations_from_empty_all_succeed(db_url: str) -> None:
    """Replicas starting together: one migrates, the others wait and find the schema at head."""
    engines = [db.create_engine(db_url) for _ in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(migrate.upgrade, engines))
        assert migrate.current_revision(engines[0]) == migrate.head_revision()
    finally:
        for engine in engines:
            engine.dispose()


def test_models_match_migrations_and_downgrade_to_empty(db_url: str) -> None:
    engine = db.create_engine(db_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.Base.metadata)
        assert diff == [], f"ORM models and migrations differ: {diff}"
        cfg = migrate.alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        assert not TABLES & set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_default_url_is_sqlite_in_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"
    url = db.database_url(state, None)
    assert url.get_backend_name() == "sqlite" and url.database == str(state / "graph.db")
    assert state.is_dir()


@pytest.mark.parametrize("raw", ["mysql://u@h/db", "postgresql://u@h/db", "sqlite://", "sqlite:///:memory:",
                                 "not a url"])
def test_unsupported_urls_are_config_errors_naming_the_variable(raw: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WGS_DATABASE_URL"):
        db.database_url(tmp_path, raw)


def test_sqlite_engine_uses_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    engine = db.create_engine(db.database_url(tmp_path, None))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()


def test_upgrade_from_the_previous_revision_keeps_existing_chats(db_url: str) -> None:
    """A database written by the previous release (revision 0001) upgrades in place at start."""
    engine = db.create_engine(db_url)
    try:
        migrate.upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO tasks (id, chat_number, title, description, status, priority, assigned, model, "
                "executor, endpoint, command_argv, working_dir, created_at, updated_at, version) VALUES "
                "('.chat-7', 7, 'Chat: old', '', 2, 50, '', 'qwen3-coder', 'native', 'https://h:30000', "
                "'[]', '', :now, :now, 1)"), {"now": "2026-11-01 10:00:00+00:00"})
            conn.execute(sa.text(
                "INSERT INTO chat_runtime (chat_id, state, restart_count, last_error, plan_json, trace_id, "
                "supervisor_id, state_changed_at, version) VALUES ('.chat-7', 2, 1, '', '', "
                "'0123456789abcdef0123456789abcdef', 'sup-old', :now, 3)"), {"now": "2026-11-01 10:00:00+00:00"})
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision() != "0001"
        with engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT t.title, t.endpoint, r.trace_id, r.span_id, r.supervisor_id, r.version "
                "FROM tasks t JOIN chat_runtime r ON r.chat_id = t.id WHERE t.id = '.chat-7'")).one()
        assert tuple(row) == ("Chat: old", "https://h:30000", "0123456789abcdef0123456789abcdef", "", "sup-old", 3)
    finally:
        engine.dispose()
