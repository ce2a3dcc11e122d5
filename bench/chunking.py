"""`make bench-chunking`: the knowledge bases' chunking default, chosen by measurement. Each
language's pages (as `make bench`: every page the question sets need) are ingested once per
setting, each into a knowledge base of its own through the real pipeline (Celery worker, MiniLM
on Xinference), and the report gives time, chunks and retrieval quality on the language's main
natural-question set (bench/questions: python-en, debian-zh), scored by an evaluation run in each
mode, in the foreground (as `kb_eval` does).

Environment: BENCH_LANGS (en,zh), BENCH_CHUNKINGS (comma-separated splitter:size:overlap, default
below). Writes bench/results/<date>-<machine>-chunking.md."""

from __future__ import annotations

import os
import platform
import time
from datetime import date
from pathlib import Path

from quality import LANGUAGES, MODES, TOP_K, question_sets
from run import BASE_DIR, BENCH_DIR, LANGS, corpus, launch_offline_models, log, services_env

CHUNKINGS = os.environ.get("BENCH_CHUNKINGS", "recursive:800:100,recursive:1000:150,recursive:1000:200,tokens:256:32")


def ingest_and_wait(kb, files: list[Path]) -> float:  # type: ignore[no-untyped-def]
    """Upload `files` into `kb` and wait until none is queued, parsing or embedding; seconds taken."""
    from kb.models import ACTIVE_STATUSES, Document
    from kb.services import documents_upload

    started = time.perf_counter()
    handles = [open(path, "rb") for path in files]  # noqa: SIM115  # closed right below
    try:
        documents_upload(kb=kb, uploads=[(handle, path.name) for handle, path in zip(handles, files, strict=True)])
    finally:
        for handle in handles:
            handle.close()
    while Document.objects.filter(knowledge_base=kb, status__in=ACTIVE_STATUSES).exists():
        time.sleep(0.5)
    return time.perf_counter() - started


def main() -> None:
    import django

    from runtime.embedded import use_embedded_services

    use_embedded_services()
    django.setup()
    from django.core.management import call_command

    from accounts.services import platform_bootstrap
    from evaluation.services import evaluation_set_create, items_import, run_create, run_execute
    from kb.models import Chunk, Document
    from kb.services import kb_create
    from realservices.workers import WorkerProcess
    from realservices.xinference import XinferenceServer

    files = corpus()
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
        worker = WorkerProcess(services_env())
        worker.start()
        for chunking in CHUNKINGS.split(","):
            splitter, size, overlap = chunking.split(":")
            for code in LANGS:
                kb = kb_create(
                    team=team,
                    name=f"{run_name}-{chunking}-{code}",
                    embedding_model=model,
                    splitter=splitter,
                    chunk_size=int(size),
                    chunk_overlap=int(overlap),
                )
                log(f"{chunking} {code}: ingesting {len(files[code])} pages")
                seconds = ingest_and_wait(kb, files[code])
                question_set = question_sets(LANGUAGES[code])[0]
                evaluation_set = evaluation_set_create(kb=kb, name=question_set.name)
                items_import(evaluation_set=evaluation_set, data=question_set.jsonl, name=f"{question_set.name}.jsonl")
                run = run_execute(run_id=run_create(evaluation_set=evaluation_set, modes=MODES, top_k=TOP_K).pk)
                if run is None or run.status != "done":
                    raise RuntimeError(f"{chunking} {code}: the evaluation run failed: {run.error if run else 'gone'}")
                chunks = Chunk.objects.filter(knowledge_base=kb).count()
                failed = Document.objects.filter(knowledge_base=kb).exclude(status="ready").count()
                rows.append((chunking, code, question_set.name, chunks, seconds, failed, run.metrics))
                log(f"{chunking} {code}: {chunks} chunks in {seconds:.1f}s; {run.metrics}")
    finally:
        if worker is not None:
            worker.stop()
        server.stop()

    lines = [
        f"# Chunking settings {date.today().isoformat()}",
        "",
        f"Languages {', '.join(LANGS)}, every page of each; each setting ingested into its own knowledge base "
        f"through the worker (2 ingest slots) and MiniLM on Xinference, then scored on the language's main "
        f"natural-question set by an evaluation run (top {TOP_K}; document level). {os.cpu_count()} cores, no GPU. "
        "Reproduce: `make bench-chunking`.",
        "",
        "| splitter:size:overlap | set | chunks | ingest s | failed | "
        + " | ".join(f"{mode} R@5 / MRR / answer@5" for mode in MODES)
        + " |",
        "| --- | --- | ---: | ---: | ---: |" + " --- |" * len(MODES),
    ]
    for chunking, _code, set_name, chunks, seconds, failed, metrics in rows:
        cells = " | ".join(
            f"{metrics[mode]['recall@5']:.2f} / {metrics[mode]['mrr@10']:.2f} / "
            + ("—" if metrics[mode]["answer_in_chunk@5"] is None else f"{metrics[mode]['answer_in_chunk@5']:.2f}")
            for mode in MODES
        )
        lines.append(f"| {chunking} | {set_name} | {chunks} | {seconds:.1f} | {failed} | {cells} |")
    report = "\n".join(lines) + "\n"
    out = BASE_DIR / "bench" / "results" / f"{date.today().isoformat()}-{platform.node() or 'machine'}-chunking.md"
    out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
