"""`make bench-vector-index`: search at 100,000 chunks on the HNSW index, over a corpus that is not
near-duplicates (issue 18).

Every chunk is a distinct sentence of the bench corpus (Python's and Debian's documentation,
English), embedded by MiniLM through Xinference as ingestion embeds chunks, so the neighbourhoods
are those of real text. (`make bench` used to pad with noisy copies of its real chunks: a copy
lies next to its original, and a question's nearest chunks were near ties.) `make bench` pads
with these sentences too (bench/run.py, pad_chunks).

At each size (BENCH_VECTOR_SIZES, default 10000,100000; past KB_EXACT_SEARCH_MAX_CHUNKS the
worker's indexing step puts the chunks in the HNSW index) it measures, with the English questions
(written the way people ask) as queries:
- kb_search in vector and hybrid mode, p50 / p95 ms, query embedding included, in process;
- the query embedding alone (Xinference called directly): the physical floor under both;
- recall@10 of the index's answer against exact search for the same query vectors.

The sentences' vectors are kept under var/bench/vector-index/, keyed by the sentences and the
model, so a second run does not embed them again. Appends its section to the report named by
BENCH_REPORT (default <date>-<machine>-vector-index)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator

from quality import LANGUAGES, question_sets
from run import (
    BASE_DIR,
    append_report,
    distinct_sentences,
    launch_offline_models,
    log,
    percentile,
    platform_setup,
    sentence_vectors,
    store_chunks,
    vector_recall,
)

SIZES = [int(size) for size in os.environ.get("BENCH_VECTOR_SIZES", "10000,100000").split(",") if size]
QUERY_COUNT = 60


def main() -> None:
    import numpy as np

    team, _admin = platform_setup()
    from django.conf import settings
    from django.db import connection

    from kb.models import Document, DocumentStatus, KnowledgeBase
    from kb.services import kb_create, kb_index_vectors
    from models_registry.langchain_models import embeddings_for
    from realservices.xinference import XinferenceServer

    sentences = distinct_sentences(max(SIZES))
    if len(sentences) < max(SIZES):
        raise SystemExit(f"the corpus has {len(sentences)} distinct sentences, fewer than {max(SIZES)}")
    asked = [item["question"] for item in question_sets(LANGUAGES["en"])[0].items]
    questions, warm_up = asked[:QUERY_COUNT], asked[QUERY_COUNT : QUERY_COUNT + 10]
    name = f"vector-index-{time.time():.0f}"
    server = XinferenceServer(home=BASE_DIR / "var" / "bench" / "xinference-home")
    log("starting Xinference and the embedding model")
    server.start()
    rows: dict[int, dict[str, object]] = {}
    try:
        _llm, model = launch_offline_models(team, server, name)
        embedder = embeddings_for(model)
        vectors = sentence_vectors(sentences, embedder, model.provider_model_uid)
        kb = kb_create(team=team, name=name, embedding_model=model)
        document = Document.objects.create(
            knowledge_base=kb,
            team=team,
            original_name="sentences.txt",
            file=f"bench/{name}.txt",
            sha256=hashlib.sha256(name.encode()).hexdigest(),
            size_bytes=0,
            content_type="text",
            status=DocumentStatus.READY,
        )
        query_ms = []
        for question in questions:
            started = time.perf_counter()
            embedder.embed_query(question)
            query_ms.append((time.perf_counter() - started) * 1000)
        stored = 0
        for size in SIZES:
            log(f"{size} chunks: storing sentences {stored}..{size}")
            store_chunks(kb, document.pk, sentences[stored:size], vectors[stored:size], first_ordinal=stored)
            stored = size
            if size > settings.KB_EXACT_SEARCH_MAX_CHUNKS:
                log(f"{size} chunks: putting them in the HNSW index (the worker's step past the exact-search size)")
                kb_index_vectors(kb_id=kb.pk)
            with connection.cursor() as cursor:
                # The earlier run's deleted rows are vacuumed now, not by autovacuum while this one
                # measures (it was 100 ms against 65 ms p50 for hybrid at 100k).
                cursor.execute("VACUUM (ANALYZE) kb_chunk")
            kb = KnowledgeBase.objects.get(pk=kb.pk)
            row: dict[str, object] = {"index": kb.vector_index}
            with counting_every_term():
                row["hybrid counting"] = search_timings(kb, "hybrid", questions, warm_up)
            for mode in ("vector", "hybrid"):
                row[mode] = search_timings(kb, mode, questions, warm_up)
            row["recall"] = vector_recall(kb, embedder, questions) if kb.vector_index == "ready" else None
            rows[size] = row
    finally:
        server.stop()
    append_report(render(rows, query_ms, float(np.mean([len(text) for text in sentences]))), "-vector-index")


def search_timings(kb, mode: str, questions: list[str], warm_up: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    """kb_search's ms for each question, after other questions have warmed plans, caches and the
    index's pages (not the measured ones: full text keeps term counts past RARE_TERMS_MIN_CHUNKS)."""
    from kb.retrieval import SearchRequest, kb_search

    for question in warm_up:
        kb_search(knowledge_bases=[kb], request=SearchRequest(query=question, top_k=10, mode=mode))
    timings = []
    for question in questions:
        started = time.perf_counter()
        kb_search(knowledge_bases=[kb], request=SearchRequest(query=question, top_k=10, mode=mode))
        timings.append((time.perf_counter() - started) * 1000)
    return timings


@contextlib.contextmanager
def counting_every_term() -> Iterator[None]:
    """Full text as before its term counts were kept: every term of every question counted."""
    from kb import retrieval

    remembered, remember = retrieval._remembered_frequencies, retrieval._remember_frequencies
    retrieval._remembered_frequencies = lambda *_args: {}
    retrieval._remember_frequencies = lambda *_args: None
    try:
        yield
    finally:
        retrieval._remembered_frequencies, retrieval._remember_frequencies = remembered, remember


def p50_p95(values: list[float]) -> str:
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.95):.1f}"


def render(rows: dict[int, dict[str, object]], query_ms: list[float], mean_chars: float) -> str:
    from django.conf import settings

    lines = [
        f"\n## Search at {max(rows):,} chunks of distinct sentences ({time.strftime('%Y-%m-%d')})\n",
        f"{os.cpu_count()} cores. Every chunk a distinct sentence of the bench corpus ({mean_chars:.0f} characters "
        "on average), embedded by MiniLM through Xinference: no chunk is a copy of another. "
        f"{QUERY_COUNT} English questions as people ask them; ms p50 / p95, in process, query embedding included. "
        f"Exact search up to KB_EXACT_SEARCH_MAX_CHUNKS ({settings.KB_EXACT_SEARCH_MAX_CHUNKS:,}), the HNSW "
        "index past it. Recall@10: the index's ten nearest against exact search's ten, same query vectors. "
        "Hybrid, every term counted: full text counting each term's chunks at every search, as before "
        "its counts were kept (kb.retrieval TERM_FREQUENCY_TTL_S).\n",
        "| chunks | search | kb_search vector | kb_search hybrid | hybrid, every term counted | "
        "vector less the query embedding (p50) | recall@10 |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    embedding_p50 = percentile(query_ms, 0.5)
    for size, row in rows.items():
        vector, hybrid, counting = row["vector"], row["hybrid"], row["hybrid counting"]
        assert isinstance(vector, list)
        assert isinstance(hybrid, list)
        assert isinstance(counting, list)
        recall = row["recall"]
        lines.append(
            f"| {size:,} | {'HNSW' if row['index'] == 'ready' else 'exact'} | {p50_p95(vector)} | {p50_p95(hybrid)} "
            f"| {p50_p95(counting)} | {percentile(vector, 0.5) - embedding_p50:.1f} "
            f"| {'' if recall is None else f'{recall:.3f}'} |"
        )
    lines += [
        "",
        f"Physical floor: MiniLM's own query embedding (Xinference called directly) {p50_p95(query_ms)} ms.",
        "",
        "Reproduce: `make bench-vector-index`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
