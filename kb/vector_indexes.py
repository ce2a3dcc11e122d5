"""One chunk table for every embedding size: a partial expression HNSW index per dimension.
Queries must use exactly the indexed expression, so both come from here."""

from __future__ import annotations

from django.db import connection

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


def distance_operator_class(dims: int) -> str:
    return "vector_cosine_ops" if dims <= MAX_VECTOR_INDEX_DIMS else "halfvec_cosine_ops"


def ensure_vector_index(dims: int) -> None:
    """Create the HNSW index for this dimension if it does not exist yet (cheap when it does)."""
    dims = int(dims)
    name = f"kb_chunk_embedding_{dims}_hnsw"
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON kb_chunk USING hnsw "  # dims is an int
            f"({embedding_expression(dims)} {distance_operator_class(dims)}) WHERE dims = {dims}"
        )
