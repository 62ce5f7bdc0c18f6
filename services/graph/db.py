"""Database schema (SQLAlchemy 2 typed ORM) and engine creation for the graph service.

The schema itself is created and evolved only by the Alembic migrations in
services/graph/migrations; these models must match them (a test compares the two).
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from wgs.common import paths, telemetry
from wgs.common.errors import ConfigError

DATABASE_URL_VAR = "WGS_DATABASE_URL"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option marking a connection whose transaction will write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "wgs_write"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every back-end.

    SQLite has no time zones: values are stored as naive UTC and read back as aware UTC, so
    comparisons in SQL (lease expiry) and in Python agree.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


class Counter(Base):
    """Monotonic counters ("chat", "task") for id allocation; values are never handed out twice."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)


class TaskRow(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    # Chats only: N of ".chat-N", so chats can be ordered by number; NULL for other tasks.
    chat_number: Mapped[int | None] = mapped_column(sa.BigInteger, unique=True, nullable=True)
    title: Mapped[str] = mapped_column(sa.String(512), nullable=False)
    description: Mapped[str] = mapped_column(sa.Text, nullable=False, default="")
    status: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False, index=True)
    priority: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    assigned: Mapped[str] = mapped_column(sa.String(200), nullable=False, default="")
    model: Mapped[str] = mapped_column(sa.String(200), nullable=False, default="")
    executor: Mapped[str] = mapped_column(sa.String(64), nullable=False, default="")
    endpoint: Mapped[str] = mapped_column(sa.String(2048), nullable=False, default="")
    command_argv: Mapped[list[str]] = mapped_column(sa.JSON, nullable=False, default=list)
    working_dir: Mapped[str] = mapped_column(sa.String(4096), nullable=False, default="")
    request_id: Mapped[str | None] = mapped_column(sa.String(128), unique=True, nullable=True)
    generation_json: Mapped[str] = mapped_column(sa.Text, nullable=False, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=1)


class TaskTag(Base):
    """One row per (task, tag): tag filters are an index lookup, not a string search."""

    __tablename__ = "task_tags"
    task_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(sa.String(64), primary_key=True, index=True)


class TaskLogRow(Base):
    __tablename__ = "task_log"
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    task_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True
    )
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    message: Mapped[str] = mapped_column(sa.Text, nullable=False)


class MessageRow(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        sa.UniqueConstraint("chat_id", "seq"),
        # NULL request ids (none given) never collide; given ones make appends idempotent.
        sa.UniqueConstraint("chat_id", "role", "request_id"),
    )
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    chat_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    role: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    content: Mapped[str] = mapped_column(sa.Text, nullable=False)
    request_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    trace_parent: Mapped[str] = mapped_column(sa.String(64), nullable=False, default="", server_default="")


class ChatRuntimeRow(Base):
    __tablename__ = "chat_runtime"
    chat_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    restart_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    next_restart_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str] = mapped_column(sa.Text, nullable=False, default="")
    plan_json: Mapped[str] = mapped_column(sa.Text, nullable=False, default="")
    trace_id: Mapped[str] = mapped_column(sa.String(32), nullable=False, default="")
    span_id: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="", server_default="")
    supervisor_id: Mapped[str] = mapped_column(sa.String(200), nullable=False, index=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=1)
    # Stopped by its supervisor's shutdown: resumes when that supervisor starts again.
    resume_on_start: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False,
                                                  server_default=sa.false())
    # AgentStatus (proto JSON) as the live agent reports it; "" before any report.
    agent_status_json: Mapped[str] = mapped_column(sa.Text, nullable=False, default="", server_default="")


class RunRow(Base):
    """One run of a chat's agent; only the last RUNS_KEPT per chat are kept."""

    __tablename__ = "chat_runs"
    __table_args__ = (sa.UniqueConstraint("chat_id", "number"),)
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    chat_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    pid: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    process_start_ticks: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    monitor_pid: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    monitor_start_ticks: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    argv: Mapped[list[str]] = mapped_column(sa.JSON, nullable=False, default=list)
    stderr_path: Mapped[str] = mapped_column(sa.String(4096), nullable=False, default="")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    exited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    signal: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    signal_name: Mapped[str] = mapped_column(sa.String(32), nullable=False, default="")
    stderr_tail: Mapped[str] = mapped_column(sa.Text, nullable=False, default="")
    error: Mapped[str] = mapped_column(sa.Text, nullable=False, default="")
    hostname: Mapped[str] = mapped_column(sa.String(255), nullable=False, default="")
    supervisor_id: Mapped[str] = mapped_column(sa.String(200), nullable=False, default="")
    trace_id: Mapped[str] = mapped_column(sa.String(32), nullable=False, default="")
    end: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False, default=0, server_default="0")
    end_detail: Mapped[str] = mapped_column(sa.Text, nullable=False, default="", server_default="")
    leftovers_ended: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")


class SupervisorRow(Base):
    """A supervisor replica's last heartbeat (RenewLeases): where it is reached and what it can take."""

    __tablename__ = "supervisors"
    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    advertise_address: Mapped[str] = mapped_column(sa.String(512), nullable=False, default="", server_default="")
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    free_capacity: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    live_chats: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    max_live_chats: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    memory_used_bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0, server_default="0")
    memory_limit_bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0, server_default="0")


def database_url(state_dir: Path, raw: str | None) -> sa.URL:
    """The URL to use: WGS_DATABASE_URL if set, else SQLite in the state dir (created if missing)."""
    if not raw:
        state_dir.mkdir(parents=True, exist_ok=True)
        return sa.URL.create("sqlite", database=str(state_dir / "graph.db"))
    try:
        url = sa.make_url(raw)
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"{DATABASE_URL_VAR} is not a database URL; use sqlite:///path/graph.db or "
            "postgresql+psycopg://user@host:5432/db"
        ) from None
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:":
            raise ConfigError(
                f"{DATABASE_URL_VAR} must name a SQLite file (sqlite:///path/graph.db); "
                "an in-memory database would lose every chat on restart"
            )
        Path(url.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        return url
    if url.drivername in ("postgresql+psycopg", "postgresql+psycopg3"):
        return url.set(drivername="postgresql+psycopg")
    raise ConfigError(
        f"{DATABASE_URL_VAR} uses driver {url.drivername!r}; supported are sqlite:///… and "
        "postgresql+psycopg://…"
    )


def _enable_wal(cur: Any, budget_seconds: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
    """Switch a SQLite database to WAL. On a fresh file opened by several processes at once the
    switch needs an exclusive lock that SQLite may refuse at once ("database is locked") instead of
    waiting on busy_timeout, so retry within the same budget."""
    deadline = time.monotonic() + budget_seconds
    delay = 0.01
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


# Files SQLite keeps next to the database; every conversation passes through them.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_sqlite_files(database: Path) -> None:
    """Create the database file 0600 if missing, and tighten it and its WAL/SHM/journal to 0600
    (with a log line) where an older stack left them wider. SQLite creates the WAL and SHM files
    with the database file's permissions, so new ones are 0600 too."""
    if not database.exists():
        try:
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, paths.PRIVATE_FILE))
        except FileExistsError:  # another process created it first: tightened below
            pass
    for path in (database, *(database.with_name(database.name + suffix) for suffix in SQLITE_COMPANIONS)):
        paths.tighten(path, paths.PRIVATE_FILE)


def create_engine(url: sa.URL | str) -> Engine:
    """Engine with the settings the store relies on (SQLite: WAL, foreign keys, busy timeout; its
    files 0600)."""
    url = sa.make_url(url) if isinstance(url, str) else url
    engine: Engine
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            private_sqlite_files(Path(url.database).expanduser())
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Driver-level autocommit: SQLAlchemy's "begin" event below issues BEGIN itself, so
            # write transactions can take the write lock up front (BEGIN IMMEDIATE) and queue on
            # busy_timeout instead of failing with "database is locked" when upgrading a read lock.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cur)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            write = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    telemetry.instrument_sqlalchemy(engine)
    return engine
