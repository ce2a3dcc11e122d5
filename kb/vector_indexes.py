"""One chunk table for every embedding size: a partial expression HNSW index per dimension,
over the chunks of the knowledge bases large enough to be searched through it (`in_vector_index`,
see kb.models.VectorIndex). Queries must use exactly the indexed expression and imply its
predicate, so all of them come from here."""

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


def index_predicate(dims: int, table: str = "") -> str:
    """The index's WHERE clause; a query that includes it can use the index."""
    prefix = f"{table}." if table else ""
    return f"{prefix}dims = {int(dims)} AND {prefix}in_vector_index"


def distance_operator_class(dims: int) -> str:
    return "vector_cosine_ops" if dims <= MAX_VECTOR_INDEX_DIMS else "halfvec_cosine_ops"


def ensure_vector_index(dims: int) -> None:
    """Create the HNSW index for this dimension if it does not exist yet (cheap when it does)."""
    dims = int(dims)
    name = f"kb_chunk_embedding_{dims}_hnsw"
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON kb_chunk USING hnsw "  # dims is an int
            f"({embedding_expression(dims)} {distance_operator_class(dims)}) WHERE {index_predicate(dims)}"
        )
