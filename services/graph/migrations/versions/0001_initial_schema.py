"""Initial schema: tasks, tags, task log, chat messages, chat runtime, runs, counters.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24 02:50:03.755625
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('counters',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_counters'))
    )
    op.create_table('tasks',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('chat_number', sa.BigInteger(), nullable=True),
    sa.Column('title', sa.String(length=512), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('assigned', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('executor', sa.String(length=64), nullable=False),
    sa.Column('endpoint', sa.String(length=2048), nullable=False),
    sa.Column('command_argv', sa.JSON(), nullable=False),
    sa.Column('working_dir', sa.String(length=4096), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('chat_number', name=op.f('uq_tasks_chat_number')),
    sa.UniqueConstraint('request_id', name=op.f('uq_tasks_request_id'))
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tasks_status'), ['status'], unique=False)

    op.create_table('chat_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('chat_id', sa.String(length=128), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('role', sa.SmallInteger(), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['chat_id'], ['tasks.id'], name=op.f('fk_chat_messages_chat_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_messages')),
    sa.UniqueConstraint('chat_id', 'role', 'request_id', name=op.f('uq_chat_messages_chat_id_role_request_id')),
    sa.UniqueConstraint('chat_id', 'seq', name=op.f('uq_chat_messages_chat_id_seq'))
    )
    op.create_table('chat_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('chat_id', sa.String(length=128), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('process_start_ticks', sa.BigInteger(), nullable=False),
    sa.Column('monitor_pid', sa.Integer(), nullable=False),
    sa.Column('monitor_start_ticks', sa.BigInteger(), nullable=False),
    sa.Column('argv', sa.JSON(), nullable=False),
    sa.Column('stderr_path', sa.String(length=4096), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exited_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('signal', sa.Integer(), nullable=True),
    sa.Column('signal_name', sa.String(length=32), nullable=False),
    sa.Column('stderr_tail', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('supervisor_id', sa.String(length=200), nullable=False),
    sa.Column('trace_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['chat_id'], ['tasks.id'], name=op.f('fk_chat_runs_chat_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_runs')),
    sa.UniqueConstraint('chat_id', 'number', name=op.f('uq_chat_runs_chat_id_number'))
    )
    op.create_table('chat_runtime',
    sa.Column('chat_id', sa.String(length=128), nullable=False),
    sa.Column('state', sa.SmallInteger(), nullable=False),
    sa.Column('restart_count', sa.Integer(), nullable=False),
    sa.Column('next_restart_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('plan_json', sa.Text(), nullable=False),
    sa.Column('trace_id', sa.String(length=32), nullable=False),
    sa.Column('supervisor_id', sa.String(length=200), nullable=False),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('state_changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['chat_id'], ['tasks.id'], name=op.f('fk_chat_runtime_chat_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('chat_id', name=op.f('pk_chat_runtime'))
    )
    with op.batch_alter_table('chat_runtime', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_runtime_supervisor_id'), ['supervisor_id'], unique=False)

    op.create_table('task_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.String(length=128), nullable=False),
    sa.Column('timestamp', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_log_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_log'))
    )
    with op.batch_alter_table('task_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_log_task_id'), ['task_id'], unique=False)

    op.create_table('task_tags',
    sa.Column('task_id', sa.String(length=128), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_tags_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'tag', name=op.f('pk_task_tags'))
    )
    with op.batch_alter_table('task_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_tags_tag'), ['tag'], unique=False)

    # Id counters start at 0: the first chat is .chat-1, the first allocated task id task-1.
    counters = sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    op.bulk_insert(counters, [{"name": "chat", "value": 0}, {"name": "task", "value": 0}])


def downgrade() -> None:
    with op.batch_alter_table('task_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_tags_tag'))

    op.drop_table('task_tags')
    with op.batch_alter_table('task_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_log_task_id'))

    op.drop_table('task_log')
    with op.batch_alter_table('chat_runtime', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_runtime_supervisor_id'))

    op.drop_table('chat_runtime')
    op.drop_table('chat_runs')
    op.drop_table('chat_messages')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_status'))

    op.drop_table('tasks')
    op.drop_table('counters')
