"""`make bench-chunking`: the knowledge bases' chunking default, chosen by measurement. The bench
corpus is ingested once per setting, each into a knowledge base of its own through the real
pipeline (Celery worker, MiniLM on Xinference), and the report gives time, chunks and retrieval
quality (recall@5 and MRR@10 of the known-item questions, per mode) for each.

Environment: BENCH_DOCS (corpus size, as `make bench`), BENCH_CHUNKINGS (comma-separated
splitter:size:overlap, default below). Writes bench/results/<date>-<machine>-chunking.md."""

from __future__ import annotations

import os
import platform
import time
from datetime import date

from run import (
    BASE_DIR,
    BENCH_DIR,
    corpus,
    document_ranks,
    ingest_and_wait,
    known_item_questions,
    launch_offline_models,
    log,
    mrr_at,
    recall_at,
    start_ingest_worker,
)

CHUNKINGS = os.environ.get("BENCH_CHUNKINGS", "recursive:800:100,recursive:1000:150,recursive:1000:200,tokens:256:32")


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from accounts.services import platform_bootstrap
    from kb.models import Chunk, Document
    from kb.retrieval import SearchRequest, kb_search
    from kb.services import kb_create
    from realservices.xinference import XinferenceServer

    files = corpus()
    questions = known_item_questions(files)
    call_command("migrate", verbosity=0)
    team = platform_bootstrap().team
    server = XinferenceServer(home=BENCH_DIR / "xinference-home")
    log("starting Xinference and the embedding model")
    server.start()
    worker = None
    rows = []
    try:
        run_name = f"chunking-{time.time():.0f}"
        _llm, model = launch_offline_models(team, server, run_name)
        worker = start_ingest_worker()
        for chunking in CHUNKINGS.split(","):
            splitter, size, overlap = chunking.split(":")
            kb = kb_create(
                team=team,
                name=f"{run_name}-{chunking}",
                embedding_model=model,
                splitter=splitter,
                chunk_size=int(size),
                chunk_overlap=int(overlap),
            )
            log(f"{chunking}: ingesting {len(files)} documents")
            seconds = ingest_and_wait(kb, files)
            documents = list(Document.objects.filter(knowledge_base=kb))
            names = {document.original_name: str(document.pk) for document in documents}
            answers = [names.get(path.name, "not ingested") for _, path in questions]
            quality = {}
            for mode in ("vector", "fulltext", "hybrid"):
                ranked = [
                    [
                        str(hit.document_id)
                        for hit in kb_search(
                            knowledge_bases=[kb], request=SearchRequest(query=question, top_k=10, mode=mode)
                        )
                    ]
                    for question, _ in questions
                ]
                ranks = document_ranks(ranked, answers)
                quality[mode] = (recall_at(ranks, 5), mrr_at(ranks, 10))
            chunks = Chunk.objects.filter(knowledge_base=kb).count()
            failed = sum(document.status != "ready" for document in documents)
            rows.append((chunking, chunks, seconds, failed, quality))
            log(f"{chunking}: {chunks} chunks in {seconds:.1f}s; {quality}")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()

    lines = [
        f"# Chunking settings {date.today().isoformat()}",
        "",
        f"{len(files)} bench documents (BENCH_DOCS), {len(questions)} known-item questions; each setting ingested "
        f"into its own knowledge base through the worker (2 ingest slots) and MiniLM on Xinference. {os.cpu_count()} "
        "cores, no GPU. Reproduce: `make bench-chunking`.",
        "",
        "| splitter:size:overlap | chunks | ingest s | failed | vector R@5 / MRR | full text R@5 / MRR "
        "| hybrid R@5 / MRR |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for chunking, chunks, seconds, failed, quality in rows:
        cells = " | ".join(f"{recall:.2f} / {mrr:.2f}" for recall, mrr in quality.values())
        lines.append(f"| {chunking} | {chunks} | {seconds:.1f} | {failed} | {cells} |")
    report = "\n".join(lines) + "\n"
    out = BASE_DIR / "bench" / "results" / f"{date.today().isoformat()}-{platform.node() or 'machine'}-chunking.md"
    out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
