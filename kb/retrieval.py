"""The one retrieval service (search API, chat, OpenAI-compatible API): vector, full-text and
hybrid (reciprocal rank fusion) search over one or more knowledge bases, with top_k, a score
threshold, document filters, MMR and an optional rerank."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openai
from django.conf import settings
from django.db import connection, transaction
from redis import RedisError

from core.domain_errors import DomainError, ModelUnavailable
from kb import fulltext
from kb.models import KnowledgeBase, RetrievalMode, VectorIndex
from kb.query_embeddings import QUERY_EMBEDDINGS
from kb.vector_indexes import embedding_expression, index_predicate, vector_type
from models_registry.langchain_models import embeddings_for, reranker_for
from models_registry.models import ModelRegistration
from runtime.redis_cache import shared_redis_client

# The constant of reciprocal rank fusion. Cormack et al. used 60 over many long lists; over our
# two lists of natural questions' candidates a smaller one lets a list's clear first place count:
# hybrid recall@1 English 0.629 -> 0.636, Chinese 0.618 -> 0.627, Chinese recall@5 0.946 -> 0.973
# (the prototype on bench/questions, all-MiniLM-L6-v2).
RRF_K = 10
HYBRID_MIN_POOL = 30
# Full text's weight in hybrid fusion for a question in Chinese when the embedding model was
# trained without it (its spec's `language`: all-MiniLM-L6-v2 is ["en"]). Such a model ranks
# Chinese passages poorly and jieba's terms rank them well; at equal weights the vector list pulled
# the full-text list's right first answers down (make bench, debian-zh: vector recall@1 0.44, full
# text 0.76, equal-weight fusion 0.64, this weight 0.74 with recall@5 0.95 -> 0.98; 2 to 4 all gave
# 0.73 to 0.76). English questions keep equal weights.
UNCOVERED_LANGUAGE_FULLTEXT_WEIGHT = 3.0
logger = logging.getLogger(__name__)


class SearchError(DomainError):
    code = "invalid_search"


@dataclass
class Hit:
    chunk_id: int
    document_id: int
    document_name: str
    knowledge_base_id: int
    text: str
    metadata: dict[str, Any]
    score: float
    embedding: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class SearchRequest:
    query: str
    top_k: int = 5
    mode: str = "hybrid"
    score_threshold: float | None = None
    document_ids: Sequence[int] | None = None
    mmr: bool = False
    mmr_lambda: float = 0.5
    rerank_model: ModelRegistration | None = None


def kb_search(*, knowledge_bases: Sequence[KnowledgeBase], request: SearchRequest) -> list[Hit]:
    if request.mode not in RetrievalMode.values:
        raise SearchError(f"unknown mode {request.mode!r}: choose from {', '.join(RetrievalMode.values)}")
    if not request.query.strip():
        raise SearchError("the query is empty: type what to look for")
    if not 1 <= request.top_k <= 100:
        raise SearchError("top_k must be between 1 and 100")
    if not knowledge_bases:
        return []
    # MMR and rerank choose among more candidates than they return; fusion needs each list deeper
    # than top_k, or a chunk ranked 12th by one list and 2nd by the other gets one vote.
    if request.mmr or request.rerank_model:
        pool = request.top_k * 4
    elif request.mode == RetrievalMode.HYBRID:
        pool = max(request.top_k * 3, HYBRID_MIN_POOL)
    else:
        pool = request.top_k
    needs_vectors = request.mode in (RetrievalMode.VECTOR, RetrievalMode.HYBRID) or request.mmr
    # The query's embedding is an HTTP call to the model server: the full-text list is searched
    # while it is under way.
    query_vectors = _start_query_vectors(knowledge_bases, request.query) if needs_vectors else {}
    fulltext_hits: list[Hit] = []
    if request.mode in (RetrievalMode.FULLTEXT, RetrievalMode.HYBRID):
        fulltext_hits = _fulltext_search(knowledge_bases, request, pool)
    vector_hits: list[Hit] = []
    if needs_vectors:
        vector_hits = _vector_search(knowledge_bases, request, pool, query_vectors)
    if request.mode == "vector":
        hits = vector_hits
    elif request.mode == "fulltext":
        hits = fulltext_hits
    else:
        weights = [1.0, fulltext_weight(knowledge_bases, request.query)]
        hits = reciprocal_rank_fusion([vector_hits, fulltext_hits], weights)[:pool]
    if request.mmr:
        hits = _mmr(hits, knowledge_bases, request)
    if request.rerank_model is not None and hits:
        hits = _rerank(hits, request)
    if request.score_threshold is not None:
        hits = [hit for hit in hits if hit.score >= request.score_threshold]
    return hits[: request.top_k]


def _filters(knowledge_bases: Sequence[KnowledgeBase], request: SearchRequest) -> tuple[str, list[Any]]:
    """Every search's WHERE: the knowledge bases' live generations, less the chunks a member
    disabled (kb.chunk_edits). A filter, not part of the HNSW indexes' predicate: an iterative
    scan skips disabled rows as it skips other knowledge bases' rows."""
    clauses = [
        "(c.knowledge_base_id, c.generation) IN (SELECT * FROM unnest(%s::bigint[], %s::int[]))",
        "NOT c.disabled",
    ]
    params: list[Any] = [[kb.pk for kb in knowledge_bases], [kb.generation for kb in knowledge_bases]]
    if request.document_ids:
        clauses.append("c.document_id = ANY(%s)")
        params.append(list(request.document_ids))
    return " AND ".join(clauses), params


SELECT_HIT = (
    "SELECT c.id, c.document_id, d.original_name, c.knowledge_base_id, c.text, c.metadata, {score} AS score, "
    "{embedding} FROM kb_chunk c JOIN kb_document d ON d.id = c.document_id{extra_from}"
)


def _start_query_vectors(knowledge_bases: Sequence[KnowledgeBase], query: str) -> dict[int, Future[list[float]]]:
    """The query's embedding from each embedding model the knowledge bases use, by model id, in
    flight while the caller's thread searches full text. The clients are built here, in the
    caller's thread, which reads the provider from the database; only HTTP calls run elsewhere."""
    calls: dict[int, Future[list[float]]] = {}
    for kb in knowledge_bases:
        model = kb.embedding_model
        if model.pk not in calls:
            calls[model.pk] = QUERY_EMBEDDINGS.submit(embeddings_for(model), query)
    return calls


def _query_vector(model: ModelRegistration, call: Future[list[float]]) -> list[float]:
    """The query's embedding; the embedding model down or refusing is a 503 that says so (the
    search API and chat alike), not a 500."""
    try:
        return call.result()
    except openai.APIError as exc:
        raise ModelUnavailable(
            f"the embedding model {model.name} did not answer ({type(exc).__name__}: {exc}); try again shortly"
        ) from exc


def _vector_search(
    knowledge_bases: Sequence[KnowledgeBase],
    request: SearchRequest,
    limit: int,
    query_vectors: dict[int, Future[list[float]]],
) -> list[Hit]:
    """Per embedding model (knowledge bases may differ): exact when the knowledge bases hold at
    most KB_EXACT_SEARCH_MAX_CHUNKS chunks, else an HNSW search on its dimension's index (once
    they are in it: kb.models.VectorIndex).

    The HNSW index holds every large knowledge base's chunks of that dimension, whatever the
    team, so a search filtered to a few knowledge bases walks a graph mostly made of other rows:
    when it held every chunk, on the bench corpus (100 documents in a table of 100k+ chunks) it
    found the right document in the top 5 for 0.78 of the questions, exact search for 0.90
    (`make bench`, quality section). Below the threshold the exact scan,
    through the (knowledge base, generation) index, is both right and fast. Above it, iterative
    scans (pgvector 0.8) keep filtered queries returning `limit` rows."""
    by_model: dict[int, list[KnowledgeBase]] = {}
    for kb in knowledge_bases:
        by_model.setdefault(kb.embedding_model_id, []).append(kb)
    lists = []
    for group in by_model.values():
        model = group[0].embedding_model
        dims = int(model.dimensions or 0)
        where, params = _filters(group, request)
        # Decided while the query's embedding is still on its way.
        exact = _at_most_chunks(group, request, settings.KB_EXACT_SEARCH_MAX_CHUNKS)
        if not exact and any(kb.vector_index != VectorIndex.READY for kb in group):
            # Right but slower until the worker has put them in the index.
            from kb.services import kb_request_vector_index

            kb_request_vector_index(knowledge_bases=group)
            exact = True
        query_vector = json.dumps(_query_vector(model, query_vectors[model.pk]))
        # The uncast column matches no HNSW index, so the planner scans the filtered rows exactly.
        expression = "c.embedding" if exact else embedding_expression(dims, column="c.embedding")
        distance = f"{expression} <=> %s::{'vector' if exact else vector_type(dims)}"
        rows_of_dims = f"c.dims = {dims}" if exact else index_predicate(dims, table="c")
        # Only MMR compares the hits' vectors; sent as text, 30 of them were about 140 kB a search.
        embedding = "c.embedding" if request.mmr else "NULL"
        sql = (
            SELECT_HIT.format(score=f"1 - ({distance})", embedding=embedding, extra_from="")
            + f" WHERE {rows_of_dims} AND {where} ORDER BY {distance}{', c.id' if exact else ''} LIMIT %s"
        )
        with transaction.atomic(), connection.cursor() as cursor:
            if not exact:
                cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                cursor.execute("SET LOCAL hnsw.ef_search = %s", [max(40, limit * 2)])
            cursor.execute(sql, [query_vector, *params, query_vector, limit])
            rows = cursor.fetchall()
        hits = [_hit(row) for row in rows]
        # relaxed_order may return rows slightly out of order: restore it.
        lists.append(sorted(hits, key=by_score))
    return merge_by_score(lists)


def _at_most_chunks(knowledge_bases: Sequence[KnowledgeBase], request: SearchRequest, most: int) -> bool:
    """Whether the chunks searched number at most `most`, by their documents' chunk counts (no
    scan: counting up to 20,001 chunks of the (knowledge base, generation) index cost 8.5 ms at
    7,808 chunks, a quarter of the search). During a rebuild a document's count is its newest
    build's: either way the choice only trades speed, and both searches are right."""
    return _chunk_census(knowledge_bases, document_ids=request.document_ids).total <= most


# From this many chunks in the knowledge bases searched, a question's common terms (each in more
# than COMMON_TERM_SHARE of the chunks) stop picking candidates; they still count in every
# candidate's score. Otherwise full text ranks every chunk holding a common term, tens of
# thousands at 100k chunks. make bench-vector-index's 100k sentences, 60 questions, a list of 30,
# term counts kept: every term picking 62 / 132 ms p50 / p95; above 5% 61 / 105 ms, the same top 10
# for all 60; above 2% 30 / 57 ms, the same top 10 for 58 (98.3% of the top-10 chunks); above 1%
# 17 / 29 ms but 96%. Below it every term picks candidates, as the quality bench at the corpus size
# (7,808 chunks) measured.
RARE_TERMS_MIN_CHUNKS = 20_000
COMMON_TERM_SHARE = 0.02


@dataclass(frozen=True)
class TermStatistics:
    weights: dict[str, float]  # each term's BM25 IDF; terms no chunk holds are left out
    candidate_terms: list[str]  # the terms whose chunks are ranked


def _fulltext_search(knowledge_bases: Sequence[KnowledgeBase], request: SearchRequest, limit: int) -> list[Hit]:
    """BM25-grade ranking in PostgreSQL: each query term weighs by its inverse document frequency
    in the knowledge bases searched (a rare term like `lru_cache` counts far more than `python`),
    times ts_rank of that term alone (frequency, saturating, over 1 + log of the chunk's length).
    Without the IDF, on natural questions, the common words of a question ranked pages that merely
    repeat them (make bench: English recall@5 0.52 against 0.80 with it)."""
    statistics = _term_statistics(knowledge_bases, fulltext.query_terms(request.query))
    if not statistics.weights:
        return []
    where, params = _filters(knowledge_bases, request)
    queries = [_lexeme(term) for term in statistics.weights]
    # One weighted term per query term, written out: a correlated subquery over the terms cost an
    # aggregate per matching row (bench/search_phases.py: 33-60 ms against 10-22 ms, same ranking).
    score = "(" + " + ".join(["%s * ts_rank(c.search_vector, to_tsquery('simple', %s), 1)"] * len(queries)) + ")"
    score_params = [
        value for query, weight in zip(queries, statistics.weights.values(), strict=True) for value in (weight, query)
    ]
    sql = (
        SELECT_HIT.format(score=score, embedding="NULL", extra_from=", to_tsquery('simple', %s) AS q")
        + f" WHERE c.search_vector @@ q AND {where} ORDER BY score DESC, c.id LIMIT %s"
    )
    candidates = " | ".join(_lexeme(term) for term in statistics.candidate_terms)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*score_params, candidates, *params, limit])
        return [_hit(row) for row in cursor.fetchall()]


def _term_statistics(knowledge_bases: Sequence[KnowledgeBase], terms: list[str]) -> TermStatistics:
    """BM25's IDF, ln(1 + (N - df + 0.5) / (df + 0.5)), of each term over the chunks of the
    knowledge bases' live generations, and the terms that pick candidates. N is the documents'
    chunk counts (no scan); df is a GIN-index count per term, remembered (_remembered_frequencies)."""
    if not terms:
        return TermStatistics({}, [])
    census = _chunk_census(knowledge_bases)
    counts = _remembered_frequencies(census, terms)
    uncounted = [term for term in terms if term not in counts]
    if uncounted:
        counted = _count_frequencies(knowledge_bases, uncounted)
        _remember_frequencies(census, counted)
        counts.update(counted)
    frequencies = {term: counts[term] for term in terms if counts[term] > 0}
    total = max(census.total, max(frequencies.values(), default=0))
    weights = {term: math.log(1 + (total - df + 0.5) / (df + 0.5)) for term, df in frequencies.items()}
    candidate_terms = list(frequencies)
    if total >= RARE_TERMS_MIN_CHUNKS and frequencies:
        rare = [term for term, df in frequencies.items() if df <= COMMON_TERM_SHARE * total]
        # A question of common words only: its rarest word's chunks are the candidates.
        candidate_terms = rare or [min(frequencies, key=frequencies.__getitem__)]
    return TermStatistics(weights, candidate_terms)


@dataclass(frozen=True)
class ChunkCensus:
    total: int  # the documents' chunk counts, summed
    version: str  # changes whenever a document of the knowledge bases is added, changed or deleted


def _chunk_census(
    knowledge_bases: Sequence[KnowledgeBase], *, document_ids: Sequence[int] | None = None
) -> ChunkCensus:
    """The chunks searched, read from their documents' rows: one index lookup, no chunk read."""
    sql = (
        "SELECT coalesce(sum(chunk_count), 0), count(*), max(updated_at) FROM kb_document "
        "WHERE knowledge_base_id = ANY(%s)"
    )
    params: list[Any] = [[kb.pk for kb in knowledge_bases]]
    if document_ids:
        sql += " AND id = ANY(%s)"
        params.append(list(document_ids))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        total, documents, last_change = cursor.fetchone() or (0, 0, None)
    generations = ",".join(f"{kb.pk}:{kb.generation}" for kb in sorted(knowledge_bases, key=lambda kb: kb.pk))
    version = f"{generations}|{total}|{documents}|{last_change.isoformat() if last_change else ''}"
    return ChunkCensus(total=int(total), version=version)


def _count_frequencies(knowledge_bases: Sequence[KnowledgeBase], terms: list[str]) -> dict[str, int]:
    """Each term's number of chunks in the knowledge bases' live generations: one GIN-index count
    per term, in one round trip."""
    sql = (
        "SELECT u.term, (SELECT count(*) FROM kb_chunk c WHERE c.search_vector @@ to_tsquery('simple', u.q) "
        "AND (c.knowledge_base_id, c.generation) IN (SELECT * FROM unnest(%s::bigint[], %s::int[])) "
        "AND NOT c.disabled) "
        "FROM unnest(%s::text[], %s::text[]) AS u(term, q)"
    )
    kb_ids, generations = [kb.pk for kb in knowledge_bases], [kb.generation for kb in knowledge_bases]
    with connection.cursor() as cursor:
        cursor.execute(sql, [kb_ids, generations, terms, [_lexeme(term) for term in terms]])
        return {term: int(df) for term, df in cursor.fetchall()}


# Each term's count is kept in Redis for TERM_FREQUENCY_TTL_S under the knowledge bases' census
# version, which a document added, rebuilt, deleted or edited (kb.chunk_edits touches it) changes.
# Counting a common term reads every chunk that holds it: at 7,808 chunks the counts were a third
# of a full-text search (11 / 22 ms p50 / p95), at 100k 86 / 149 ms, and the few common terms are
# in most questions. A zero is not kept: the term may be written into a chunk by an edit, and a
# kept zero would leave it out of the query. A chunk disabled leaves a count off by one until it
# expires, which moves no ranking. Plain integers, read without Django's cache serialiser (which
# unpickles what is not an integer).
TERM_FREQUENCY_TTL_S = 600


def _frequency_keys(census: ChunkCensus, terms: list[str]) -> list[str]:
    scope = hashlib.sha256(census.version.encode()).hexdigest()[:32]
    return [f"kb:term-chunks:{scope}:{term}" for term in terms]


def _remembered_frequencies(census: ChunkCensus, terms: list[str]) -> dict[str, int]:
    try:
        values = shared_redis_client().mget(_frequency_keys(census, terms))
    except RedisError as exc:
        logger.warning("term counts not remembered: Redis is unavailable (%s)", exc)
        return {}
    return {term: int(value) for term, value in zip(terms, values, strict=True) if value is not None}


def _remember_frequencies(census: ChunkCensus, counts: dict[str, int]) -> None:
    kept = {term: count for term, count in counts.items() if count > 0}
    if not kept:
        return
    try:
        pipeline = shared_redis_client().pipeline(transaction=False)
        for key, count in zip(_frequency_keys(census, list(kept)), kept.values(), strict=True):
            pipeline.set(key, count, ex=TERM_FREQUENCY_TTL_S)
        pipeline.execute()
    except RedisError as exc:
        logger.warning("term counts not remembered: Redis is unavailable (%s)", exc)


def _lexeme(term: str) -> str:
    """A term as to_tsquery takes it as it is: quoted (terms are letters and digits, kb.fulltext)."""
    return f"'{term}'"


def _hit(row: Sequence[Any]) -> Hit:
    chunk_id, document_id, name, kb_id, text, metadata, score, embedding = row
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    if isinstance(embedding, str):  # pgvector's text form, '[0.1,0.2,...]'
        embedding = json.loads(embedding)
    return Hit(chunk_id, document_id, name, kb_id, text, metadata or {}, float(score), embedding)


def by_score(hit: Hit) -> tuple[float, int]:
    """Best first; equal scores (the same text in two documents embeds identically) in chunk
    order, so a search answers the same order every time, exact or through the index."""
    return (-hit.score, hit.chunk_id)


def merge_by_score(lists: list[list[Hit]]) -> list[Hit]:
    return sorted((hit for hits in lists for hit in hits), key=by_score)


def fulltext_weight(knowledge_bases: Sequence[KnowledgeBase], query: str) -> float:
    """1 unless the question is (partly) Chinese and an embedding model searched is known not to
    cover Chinese; then up to UNCOVERED_LANGUAGE_FULLTEXT_WEIGHT, by the question's CJK share."""
    share = fulltext.cjk_share(query)
    if not share or all(_covers_chinese(kb.embedding_model) for kb in knowledge_bases):
        return 1.0
    return 1.0 + (UNCOVERED_LANGUAGE_FULLTEXT_WEIGHT - 1.0) * share


def _covers_chinese(model: ModelRegistration) -> bool:
    """From the registration's spec (Xinference's `language` list); a model whose languages are
    not recorded is taken to cover Chinese, so its fusion stays as it was."""
    languages = (model.custom_spec or {}).get("language")
    return not isinstance(languages, list) or "zh" in languages


def reciprocal_rank_fusion(lists: list[list[Hit]], weights: Sequence[float] | None = None) -> list[Hit]:
    """score = Σ weight / (RRF_K + rank) over the lists a chunk appears in (weights 1 by default)."""
    fused: dict[int, Hit] = {}
    scores: dict[int, float] = {}
    for hits, weight in zip(lists, weights or [1.0] * len(lists), strict=True):
        for rank, hit in enumerate(hits, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight / (RRF_K + rank)
            if hit.chunk_id not in fused or fused[hit.chunk_id].embedding is None:
                fused[hit.chunk_id] = hit
    for chunk_id, hit in fused.items():
        hit.score = round(scores[chunk_id], 6)
    return sorted(fused.values(), key=by_score)


def _mmr(hits: list[Hit], knowledge_bases: Sequence[KnowledgeBase], request: SearchRequest) -> list[Hit]:
    """Maximal marginal relevance: each pick trades relevance to the query against similarity to
    what was picked already (lambda 1 = relevance only). Needs the chunks' embeddings."""
    candidates = [hit for hit in hits if hit.embedding is not None]
    if len({kb.embedding_model_id for kb in knowledge_bases}) > 1 or len(candidates) <= 1:
        return hits
    model = knowledge_bases[0].embedding_model
    query = np.asarray(embeddings_for(model).embed_query(request.query), dtype=np.float32)
    matrix = np.asarray([np.asarray(hit.embedding, dtype=np.float32) for hit in candidates])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-12
    query /= np.linalg.norm(query) + 1e-12
    relevance = matrix @ query
    chosen: list[int] = []
    remaining = list(range(len(candidates)))
    while remaining and len(chosen) < request.top_k:
        redundancy = (matrix[remaining] @ matrix[chosen].T).max(axis=1) if chosen else np.zeros(len(remaining))
        scores = request.mmr_lambda * relevance[remaining] - (1 - request.mmr_lambda) * redundancy
        best = remaining[int(np.argmax(scores))]
        chosen.append(best)
        remaining.remove(best)
    return [candidates[index] for index in chosen]


def _rerank(hits: list[Hit], request: SearchRequest) -> list[Hit]:
    assert request.rerank_model is not None
    ranked = reranker_for(request.rerank_model).rerank(request.query, [hit.text for hit in hits])
    reordered = []
    for index, score in ranked:
        hits[index].score = score
        reordered.append(hits[index])
    return reordered
