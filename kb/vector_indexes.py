"""One chunk table for every embedding size: a partial expression HNSW index per dimension,
over the chunks of the knowledge bases large enough to be searched through it (`in_vector_index`,
see kb.models.VectorIndex). Queries must use exactly the indexed expression and imply its
predicate, so all of them come from here.

The indexes are built only by a worker (kb.tasks.vector_index_ensure), with CREATE INDEX
CONCURRENTLY: a plain CREATE INDEX takes a SHARE lock on the chunk table for the whole build, and
every team's inserts queue behind it (and behind any long store it has to wait for itself)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from django.db import DatabaseError, connection
from django.db.backends.utils import CursorWrapper

MAX_VECTOR_INDEX_DIMS = 2000  # pgvector's HNSW limit for `vector`
MAX_HALFVEC_INDEX_DIMS = 4000  # and for `halfvec`, used above that


def vector_type(dims: int) -> str:
    if dims <= MAX_VECTOR_INDEX_DIMS:
        return f"vector({dims})"
    if dims <= MAX_HALFVEC_INDEX_DIMS:
        return f"halfvec({dims})"
    raise ValueError(f"embeddings of {dims} dimensions cannot be indexed (at most {MAX_HALFVEC_INDEX_DIMS})")


def embedding_expression(dims: int, column: str = "embedding") -> str:
    """The indexed expression, e.g. `(embedding::vector(384))`."""
    return f"({column}::{vector_type(int(dims))})"


def index_predicate(dims: int, table: str = "") -> str:
    """The index's WHERE clause; a query that includes it can use the index."""
    prefix = f"{table}." if table else ""
    return f"{prefix}dims = {int(dims)} AND {prefix}in_vector_index"


def distance_operator_class(dims: int) -> str:
    return "vector_cosine_ops" if dims <= MAX_VECTOR_INDEX_DIMS else "halfvec_cosine_ops"


def index_name(dims: int) -> str:
    return f"kb_chunk_embedding_{int(dims)}_hnsw"


def indexable(dims: int) -> bool:
    """Whether an HNSW index can hold this size; above it, search stays exact."""
    return 0 < int(dims) <= MAX_HALFVEC_INDEX_DIMS


def vector_index_ready(dims: int) -> bool:
    """Whether this dimension's index exists and is valid (a build killed part-way leaves an
    invalid one, which queries do not use and which vector_index_build replaces)."""
    with connection.cursor() as cursor:
        return _index_valid(cursor, int(dims)) is True


BUILD_LOCK_ID = 4_242_002  # pg advisory lock: one index build on the chunk table at a time
BUILD_LOCK_POLL_S = 0.5


def vector_index_build(dims: int) -> bool:
    """Create this dimension's HNSW index CONCURRENTLY if it is not there and valid yet: other
    sessions go on inserting into (and searching) the chunk table meanwhile. The caller is a
    worker with a dimension measured from the real model (kb.services.vector_index_ensure), never a
    request. True when this call built it, False when it was there already."""
    dims = int(dims)
    if not indexable(dims):
        raise ValueError(f"embeddings of {dims} dimensions cannot be indexed (at most {MAX_HALFVEC_INDEX_DIMS})")
    if connection.in_atomic_block:
        # PostgreSQL refuses CONCURRENTLY inside a transaction block; say who is wrong.
        raise RuntimeError("vector_index_build runs CREATE INDEX CONCURRENTLY: call it outside transaction.atomic")
    name = index_name(dims)
    with connection.cursor() as cursor, _build_lock(cursor):
        valid = _index_valid(cursor, dims)
        if valid is True:
            return False
        if valid is False:
            # Invalid under the lock: no build of ours runs, so this is what a killed one left.
            # IF NOT EXISTS would keep it (and searches would never use it): replace it.
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # name is built from an int
        cursor.execute(
            f"CREATE INDEX CONCURRENTLY {name} ON kb_chunk USING hnsw "
            f"({embedding_expression(dims)} {distance_operator_class(dims)}) WHERE {index_predicate(dims)}"
        )
    return True


def _index_valid(cursor: CursorWrapper, dims: int) -> bool | None:
    """True when valid, False when present but invalid, None when absent."""
    cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [index_name(dims)])
    row = cursor.fetchone()
    return None if row is None else bool(row[0])


@contextlib.contextmanager
def _build_lock(cursor: CursorWrapper) -> Iterator[None]:
    """A session advisory lock, polled rather than waited for: a session blocked in
    pg_advisory_lock holds a snapshot, which the running CREATE INDEX CONCURRENTLY waits for in
    turn (a deadlock). Between polls this session holds nothing. Builds of different dimensions
    take turns too: two concurrent builds on one table wait for each other the same way. A worker
    killed mid-build drops its session, and with it the lock."""
    while True:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [BUILD_LOCK_ID])
        row = cursor.fetchone()
        if row is not None and row[0]:
            break
        time.sleep(BUILD_LOCK_POLL_S)
    try:
        yield
    finally:
        # A connection lost mid-build has released the lock already; the build's error is the one to see.
        with contextlib.suppress(DatabaseError):
            cursor.execute("SELECT pg_advisory_unlock(%s)", [BUILD_LOCK_ID])
