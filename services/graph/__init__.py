"""The graph service: the only component that touches the database.

Modules: db (ORM schema, engine settings), migrations + migrate (Alembic, applied at start),
store (every GraphService operation, plain Python), convert (rows -> wgs.v1 messages), procs
(/proc facts used by Reconcile), servicer (thin gRPC layer), server (`wgs serve graph`).
"""
