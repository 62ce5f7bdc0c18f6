"""Lifecycle records: how runs end, agent status, generation settings, shutdown resume, supervisors.

- chat_runs: end (RunEnd), end_detail, leftovers_ended;
- chat_runtime: resume_on_start (stopped by a shutdown: resume when the supervisor starts),
  agent_status_json (what the live agent reports: answer errors, waiting, tokens);
- tasks: generation_json (a chat's generation settings as given);
- chat_messages: trace_parent (the SendMessage's trace, joined by the answer);
- supervisors: one row per supervisor replica, its heartbeat and capacity (placement, failover).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("chat_runs") as batch:
        batch.add_column(sa.Column("end", sa.SmallInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("end_detail", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("leftovers_ended", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("chat_runtime") as batch:
        batch.add_column(sa.Column("resume_on_start", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("agent_status_json", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("generation_json", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("chat_messages") as batch:
        batch.add_column(sa.Column("trace_parent", sa.String(length=64), nullable=False, server_default=""))
    op.create_table(
        "supervisors",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("advertise_address", sa.String(length=512), nullable=False, server_default=""),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("free_capacity", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("live_chats", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_live_chats", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("memory_limit_bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_supervisors")),
    )
    op.create_index(op.f("ix_chat_runtime_lease_expires_at"), "chat_runtime", ["lease_expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_chat_runtime_lease_expires_at"), table_name="chat_runtime")
    op.drop_table("supervisors")
    with op.batch_alter_table("chat_messages") as batch:
        batch.drop_column("trace_parent")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("generation_json")
    with op.batch_alter_table("chat_runtime") as batch:
        batch.drop_column("agent_status_json")
        batch.drop_column("resume_on_start")
    with op.batch_alter_table("chat_runs") as batch:
        batch.drop_column("leftovers_ended")
        batch.drop_column("end_detail")
        batch.drop_column("end")
