"""The graph service: the only component that touches the database.

Modules: db (ORM schema, engine settings), migrations + migrate (Alembic, applied at start),
store (every GraphService operation, plain Python), records (RuntimeService: chat records, runs,
states, leases, supervisors), reconcile (Reconcile's judgement, pure, from records and leases only:
the graph reads no /proc), authz (whether an agent's token speaks for a live run), fanout (watcher
wake-ups and reply pieces), pgnotify (the same wake-ups across graph replicas: PostgreSQL
LISTEN/NOTIFY), convert (rows -> wgs.v1 messages), servicer (thin gRPC layers), server
(`wgs serve graph`).
"""
