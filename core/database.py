"""The web processes' database connections (a pool each: settings, DATABASE_POOL_MAX_SIZE)."""

from __future__ import annotations

from django.db import connection


def release_pooled_connection() -> None:
    """Give this thread's connection back to its pool before a long wait that needs no database
    (a model writing its answer), so that a pool's few connections serve many open streams.
    Without a pool nothing happens: the connection is this thread's own, kept for its next query.
    Inside a transaction nothing happens either: the transaction needs its connection."""
    if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
        connection.close()
