"""`make bench-search`: where a search's time goes, and what the chunk table's row layout costs it
(issue 18).

A knowledge base of the English corpus's real chunks (parsed and split as a new knowledge base
does), written straight into the table with random unit vectors: an exact vector scan, full-text
ranking and their fusion cost the same whatever the vectors say. The queries are the English
question set's. Measured in this process, as the evaluation runs measure a search:

- MiniLM's own query embedding, Xinference called directly (the physical limit);
- kb_search per mode, the query embedding included;
- each mode's SQL alone, with the rows inline (migration kb/0011) and then with the layout before
  it (PostgreSQL's default: values moved out to TOAST past about 2 kB), the table rewritten for
  each, in the same run.

Appends its section to the report named by BENCH_REPORT (default <date>-<machine>-search)."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable

import numpy as np
from quality import LANGUAGES, question_sets
from run import BENCH_DIR, append_report, corpus, launch_offline_models, log, percentile, platform_setup

QUERIES = 60
REPEATS = 3


def timed(call: Callable[[str], object], queries: list[str]) -> list[float]:
    timings = []
    for _ in range(REPEATS):
        for query in queries:
            started = time.perf_counter()
            call(query)
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def cells(timings: list[float]) -> str:
    return f"{percentile(timings, 0.5):.1f} / {percentile(timings, 0.95):.1f}"


def fill(team, model):  # type: ignore[no-untyped-def]
    """The knowledge base, its documents and chunks, written straight into the tables."""
    from django.db import connection

    from kb import fulltext
    from kb.models import Document
    from kb.parsing import parse_html
    from kb.services import kb_create
    from kb.splitting import split_sections

    kb = kb_create(team=team, name=f"search-phases-{time.time():.0f}", embedding_model=model)
    rng = np.random.default_rng(7)
    rows = []
    for page in corpus(["en"])["en"]:
        document = Document.objects.create(
            knowledge_base=kb,
            team=team,
            original_name=page.name,
            file="bench/none",
            sha256=page.name,
            size_bytes=page.stat().st_size,
            content_type="text/html",
            status="ready",
        )
        drafts = split_sections(
            list(parse_html(page, page.name)),
            splitter=kb.splitter,
            chunk_size=kb.chunk_size,
            chunk_overlap=kb.chunk_overlap,
            headers=kb.chunk_headers,
        )
        for ordinal, draft in enumerate(drafts):
            vector = rng.normal(size=384).astype(np.float32)
            vector /= np.linalg.norm(vector)
            text, metadata = draft.text, json.dumps(draft.metadata)
            vector_text, terms = json.dumps(vector.tolist()), fulltext.index_text(draft.text)
            rows.append((kb.pk, document.pk, kb.generation, ordinal, text, metadata, 384, vector_text, terms))
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, "
            "embedding, search_vector) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s::vector, "
            "to_tsvector('simple', %s))",
            rows,
        )
        cursor.execute(
            "UPDATE kb_document d SET chunk_count = (SELECT count(*) FROM kb_chunk c WHERE c.document_id = d.id) "
            "WHERE d.knowledge_base_id = %s",
            [kb.pk],
        )
    log(f"{len(rows)} chunks written")
    return kb


# The migration's own statements: forward is the layout now, backward the one before it.
CHUNK_ROWS_INLINE = importlib.import_module("kb.migrations.0011_chunk_rows_inline")
LAYOUTS = {"inline (kb/0011)": CHUNK_ROWS_INLINE.FORWARD, "TOAST past 2 kB (before)": CHUNK_ROWS_INLINE.BACKWARD}


def use_layout(statements: list[str]) -> dict[str, int]:
    """The table rewritten under the layout (each value rebuilt, so it is stored anew); what the
    rows then keep out of line."""
    from django.db import connection

    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
        cursor.execute(
            "UPDATE kb_chunk SET embedding = (embedding::text)::vector, text = text || '', "
            "search_vector = search_vector || ''::tsvector"
        )
    connection.close()  # VACUUM cannot run inside the transaction block Django may hold
    with connection.cursor() as cursor:
        cursor.execute("VACUUM FULL ANALYZE kb_chunk")
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_column_toast_chunk_id(embedding) IS NOT NULL), "
            "count(*) FILTER (WHERE pg_column_toast_chunk_id(search_vector) IS NOT NULL), count(*) FROM kb_chunk"
        )
        vectors, terms, total = cursor.fetchone()
    return {"vectors out of line": vectors, "search terms out of line": terms, "rows": total}


def main() -> None:
    team, _admin = platform_setup()
    from kb.retrieval import SearchRequest, kb_search
    from models_registry.langchain_models import embeddings_for
    from realservices.xinference import XinferenceServer

    questions = [item["question"] for item in question_sets(LANGUAGES["en"])[0].items][:QUERIES]
    server = XinferenceServer(home=BENCH_DIR / "xinference-home")
    log("starting Xinference and the embedding model")
    server.start()
    try:
        _llm, model = launch_offline_models(team, server, f"search-{time.time():.0f}")
        kb = fill(team, model)
        embedder = embeddings_for(model)
        rows = []
        for name, statements in LAYOUTS.items():
            layout = use_layout(statements)
            log(f"{name}: {layout}")
            figures = {"embedding": timed(embedder.embed_query, questions)}
            for mode in ("vector", "fulltext", "hybrid"):

                def search(query: str, mode: str = mode) -> object:
                    return kb_search(knowledge_bases=[kb], request=SearchRequest(query=query, top_k=10, mode=mode))

                figures[mode] = timed(search, questions)
            rows.append((name, layout, figures))
        use_layout(LAYOUTS["inline (kb/0011)"])  # as the migrations leave it
    finally:
        server.stop()
    append_report(render(rows), "-search")


def render(rows: list[tuple[str, dict[str, int], dict[str, list[float]]]]) -> str:
    lines = [
        f"\n## Search phases ({QUERIES} English questions × {REPEATS}, ms p50 / p95, in process)\n",
        f"{rows[0][1]['rows']} chunks of the English corpus (random vectors), exact search (below "
        "KB_EXACT_SEARCH_MAX_CHUNKS). kb_search's figures include the query embedding. "
        "Reproduce: `make bench-search`.\n",
        "| row layout | vectors / search terms out of line | query embedding (Xinference, direct) | "
        "kb_search vector | kb_search fulltext | kb_search hybrid |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, layout, figures in rows:
        lines.append(
            f"| {name} | {layout['vectors out of line']} / {layout['search terms out of line']} | "
            f"{cells(figures['embedding'])} | {cells(figures['vector'])} | {cells(figures['fulltext'])} | "
            f"{cells(figures['hybrid'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
