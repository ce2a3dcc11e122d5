"""`make bench-serving`: the web tier under many API clients at once (issue 18).

Three ways of serving the same platform, measured one after the other in one run:
- "one process": one uvicorn process and a database connection opened for every request (how the
  platform served before: Django's ASGI handler runs each request's synchronous part in a thread
  of its own, and a persistent connection is kept per thread, so it was never reused);
- "served" with a query embedding call per search (KB_QUERY_EMBEDDING_BATCH_MAX=1, as before
  kb.query_embeddings): WEB_CONCURRENCY uvicorn processes (one per core) that borrow database
  connections from a pool (DATABASE_POOL_MAX_SIZE);
- "served" as `make run` starts it now: the same, with searches' query embeddings batched while a
  call is in flight.

For each: a plain GET (`/api/v1/knowledge-bases/{id}/`) by one client, then by 50 clients at once;
hybrid search through the API by one client, then by 50 at once. Then, on the served
configuration, a load run: 200 clients, each with its own API key, for a minute, mixing reads,
searches, uploads, new conversations and streamed chat turns; every answer is checked (an error is
any status other than the one the endpoint promises, or a stream without its end event).

Real parts: uvicorn, the embedded PostgreSQL and Redis, a Celery worker, Xinference serving MiniLM
for the query embeddings. The chat model is FakeGpuModelServer (bench/streams.py), an
OpenAI-compatible server that answers every request at once, as a GPU server would: this machine
has no GPU. The clients run in this process (httpx, asyncio), on the same cores as the servers.

The physical limits beside the figures: MiniLM's own time for one query embedding (Xinference
called directly) and the fake model's own time to first token.

Environment: BENCH_LOAD_CLIENTS (200), BENCH_LOAD_SECONDS (60). Appends its section to the report
named by BENCH_REPORT (default <date>-<machine>-serving)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from run import (
    BASE_DIR,
    append_report,
    launch_offline_models,
    log,
    percentile,
    platform_setup,
    services_env,
    start_served_web,
    start_web,
)
from streams import FAKE_TOKENS, FakeGpuModelHandler, FakeGpuModelServer

CONCURRENT = 50
SINGLE_GETS = 200
GETS_PER_CLIENT = 10
SINGLE_SEARCHES = 40
# Rounds of 50 searches at once, pooled: one round's p95 moved by 30% from run to run on 2 cores.
CONCURRENT_SEARCH_ROUNDS = 3
LOAD_CLIENTS = int(os.environ.get("BENCH_LOAD_CLIENTS", "200"))
LOAD_SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))
CORES = os.cpu_count() or 1
QUERIES = [
    "how do I make the platform use more web processes",
    "what happens when a worker is killed during ingestion",
    "which file formats can a knowledge base read",
    "how are API keys limited",
    "where does the evaluation gate hold a rebuild",
    "how do I run the tests",
    "what does hybrid search fuse",
    "how is a team's usage metered",
]
# The load run's mix: (operation, weight).
LOAD_MIX = [("read", 5), ("search", 3), ("upload", 1), ("conversation", 1), ("chat", 1)]


def seeded(seed: int) -> random.Random:
    """The bench's draws (which question, which operation), the same in every run; not secrets."""
    return random.Random(seed)  # noqa: S311


@dataclass
class Figures:
    get_single: list[float] = field(default_factory=list)
    get_concurrent: list[float] = field(default_factory=list)
    search_single: list[float] = field(default_factory=list)
    search_concurrent: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # answers other than 200, in any phase


@dataclass
class Load:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    seconds: float = 0.0


def main() -> None:
    team, user = platform_setup()
    from accounts.services import api_key_create
    from chat.services import assistant_create
    from kb.models import KnowledgeBase
    from kb.services import kb_create
    from models_registry.langchain_models import embeddings_for
    from models_registry.services import provider_create, registration_create
    from realservices.workers import WorkerProcess
    from realservices.xinference import XinferenceServer

    name = f"serving-{time.time():.0f}"
    server = XinferenceServer(home=BASE_DIR / "var" / "bench" / "xinference-home")
    log("starting Xinference and the embedding model")
    server.start()
    fake = FakeGpuModelServer(("127.0.0.1", 0), FakeGpuModelHandler)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    fake_url = f"http://127.0.0.1:{fake.server_address[1]}"
    worker = None
    try:
        _llm, embedding = launch_offline_models(team, server, name)
        provider = provider_create(team=team, name=f"{name}-gpu", kind="openai_compatible", endpoint=fake_url)
        fake_llm = registration_create(provider=provider, kind="llm", name=f"{name}-gpu", provider_model_uid="fake-gpu")
        kb = kb_create(team=team, name=name, embedding_model=embedding)
        assistant = assistant_create(
            team=team, name=name, llm=fake_llm, knowledge_bases=[kb], max_answer_tokens=FAKE_TOKENS
        )
        secrets = [api_key_create(user=user, team=team, name=f"{name}-{n}")[1] for n in range(LOAD_CLIENTS)]
        env = services_env()
        worker = WorkerProcess(env)
        worker.start()
        corpus_chunks = fill_knowledge_base(env, secrets[0], kb.pk)
        log(f"knowledge base {kb.pk}: {corpus_chunks} chunks")
        embedder = embeddings_for(KnowledgeBase.objects.get(pk=kb.pk).embedding_model)
        draw = seeded(1)
        embedding_ms = timed_calls(lambda: embedder.embed_query(draw.choice(QUERIES)), 30)
        # While the machine is quiet: after the load run the worker is still ingesting its uploads.
        own_cost = api_own_cost(secrets[0], kb.pk)
        # (label, how the web tier is started); the load run goes to the last one.
        servings: list[tuple[str, Callable[[], tuple[Any, str]]]] = [
            (
                "one process, a database connection per request (before)",
                lambda: start_web({**env, "DATABASE_POOL_MAX_SIZE": "0"}),
            ),
            (
                f"{CORES} processes, pooled database connections, a query embedding call per search (before)",
                lambda: start_served_web({**env, "KB_QUERY_EMBEDDING_BATCH_MAX": "1"}),
            ),
            (
                f"{CORES} processes, pooled, query embeddings batched while a call is in flight (make run)",
                lambda: start_served_web(env),
            ),
        ]
        figures = {}
        load = Load()
        for label, start in servings:
            web, base = start()
            try:
                log(f"{label}: plain GETs and searches, one client then {CONCURRENT} at once")
                figures[label] = asyncio.run(measure(base, secrets[0], kb.pk))
                if label == servings[-1][0]:
                    log(f"load run: {LOAD_CLIENTS} clients for {LOAD_SECONDS:.0f} s")
                    load = asyncio.run(load_run(base, secrets, kb.pk, assistant.pk))
            finally:
                web.terminate()
                web.wait(timeout=30)
        model_ttft_ms = asyncio.run(direct_first_tokens(fake_url))
    finally:
        if worker is not None:
            worker.stop()
        fake.shutdown()
        server.stop()
    append_report(render(figures, own_cost, load, corpus_chunks, embedding_ms, model_ttft_ms), "-serving")


def fill_knowledge_base(env: dict[str, str], secret: str, kb_id: int) -> int:
    """The repository's own Markdown (README, notes, reports) uploaded through the API and ingested."""
    from quality import PlatformApi

    from kb.models import ACTIVE_STATUSES, Chunk, Document

    files = sorted(path for path in BASE_DIR.glob("**/*.md") if ".venv" not in path.parts and "var" not in path.parts)
    web, base = start_web(env)
    try:
        api = PlatformApi(base, secret)
        for path in files:
            with path.open("rb") as handle:
                api.call(
                    "POST",
                    f"/knowledge-bases/{kb_id}/documents/",
                    201,
                    files=[("file", (f"{path.parent.name}-{path.name}", handle, "text/markdown"))],
                )
    finally:
        web.terminate()
        web.wait(timeout=30)
    deadline = time.monotonic() + 900
    while Document.objects.filter(knowledge_base_id=kb_id, status__in=ACTIVE_STATUSES).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the knowledge base's documents were not ingested in 15 minutes")
        time.sleep(1)
    return Chunk.objects.filter(knowledge_base_id=kb_id).count()


def api_own_cost(secret: str, kb_id: int) -> dict[str, list[float]]:
    """The parts of a plain GET (`/api/v1/knowledge-bases/{id}/`) that are the API's own, each
    timed on its own in this process against the same PostgreSQL and Redis: what the view
    does besides looking up the object. The object's lookup is timed too, to be shown apart."""
    from django.test import RequestFactory, override_settings
    from rest_framework.renderers import JSONRenderer
    from rest_framework.request import Request

    from accounts.audit import api_key_use_record
    from accounts.authentication import ApiKeyAuthentication
    from accounts.selectors import api_key_get_active
    from kb.api import KnowledgeBaseSerializer, KnowledgeBaseViewSet

    path = f"/api/v1/knowledge-bases/{kb_id}/"

    def request() -> Request:
        return Request(RequestFactory().get(path, HTTP_AUTHORIZATION=f"Bearer {secret}"))

    key = api_key_get_active(secret=secret)
    assert key is not None
    signed_in = request()
    signed_in.user, signed_in.auth = key.user, key
    view = KnowledgeBaseViewSet(request=signed_in, action="retrieve", kwargs={"pk": str(kb_id)}, format_kwarg=None)
    kb = view.get_object()

    def serialise() -> None:
        JSONRenderer().render(KnowledgeBaseSerializer(kb, context={"request": signed_in}).data)

    parts: dict[str, Callable[[], object]] = {
        "authentication (key lookup and rate limit)": lambda: ApiKeyAuthentication().authenticate(request()),
        "audit row": lambda: api_key_use_record(key=key, request=signed_in, status_code=200),
        "serialisation": serialise,
        "the object's lookup (the view's query)": view.get_object,
    }
    with override_settings(API_RATE_LIMIT_KEY_PER_MINUTE=10**9, API_RATE_LIMIT_TEAM_PER_MINUTE=10**9):
        return {label: timed_calls(call, 300)[30:] for label, call in parts.items()}


def timed_calls(call: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def timed(request: Awaitable[Any], expect: int, errors: list[str]) -> list[float]:
    """The request's time in a list of one, or an empty list and the error added to `errors`."""
    started = time.perf_counter()
    response = await request
    if response.status_code != expect:
        errors.append(f"{response.request.url.path} answered {response.status_code}: {response.text[:200]!r}")
        return []
    return [(time.perf_counter() - started) * 1000]


async def measure(base: str, secret: str, kb_id: int) -> Figures:
    import httpx

    figures = Figures()
    headers = {"Authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=CONCURRENT * 2, max_keepalive_connections=CONCURRENT * 2)
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=headers, timeout=120, limits=limits) as client:
        detail = f"/knowledge-bases/{kb_id}/"
        search = f"/knowledge-bases/{kb_id}/search/"

        draw = seeded(2)

        def search_body() -> dict[str, Any]:
            return {"query": draw.choice(QUERIES), "mode": "hybrid", "top_k": 5}

        for _ in range(20):  # warm-up: every process's imports, connections and caches
            await client.get(detail)
            await client.post(search, json=search_body())
        for _ in range(SINGLE_GETS):
            figures.get_single += await timed(client.get(detail), 200, figures.errors)

        async def many_gets() -> list[float]:
            times = []
            for _ in range(GETS_PER_CLIENT):
                times += await timed(client.get(detail), 200, figures.errors)
            return times

        for times in await asyncio.gather(*(many_gets() for _ in range(CONCURRENT))):
            figures.get_concurrent += times
        for _ in range(SINGLE_SEARCHES):
            figures.search_single += await timed(client.post(search, json=search_body()), 200, figures.errors)
        for _ in range(CONCURRENT_SEARCH_ROUNDS):
            searches = (timed(client.post(search, json=search_body()), 200, figures.errors) for _ in range(CONCURRENT))
            for times in await asyncio.gather(*searches):
                figures.search_concurrent += times
    return figures


async def load_run(base: str, secrets: list[str], kb_id: int, assistant_id: int) -> Load:
    import httpx

    load = Load()
    operations = [operation for operation, weight in LOAD_MIX for _ in range(weight)]
    limits = httpx.Limits(max_connections=LOAD_CLIENTS * 2, max_keepalive_connections=LOAD_CLIENTS * 2)
    stop_at = time.monotonic() + LOAD_SECONDS
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", timeout=120, limits=limits) as client:

        async def one_client(number: int) -> None:
            headers = {"Authorization": f"Bearer {secrets[number]}"}
            conversation_id: int | None = None
            rng = seeded(number)
            await asyncio.sleep(rng.random())  # the clients arrive over a second, not in one instant
            while time.monotonic() < stop_at:
                operation = rng.choice(operations)
                if operation == "chat" and conversation_id is None:
                    operation = "conversation"
                started = time.perf_counter()
                try:
                    if operation == "read":
                        await expect(client.get(f"/knowledge-bases/{kb_id}/", headers=headers), 200)
                    elif operation == "search":
                        body = {"query": rng.choice(QUERIES), "mode": "hybrid", "top_k": 5}
                        await expect(client.post(f"/knowledge-bases/{kb_id}/search/", json=body, headers=headers), 200)
                    elif operation == "upload":
                        text = f"Load note {number}-{time.time_ns()}: {rng.choice(QUERIES)}.\n".encode()
                        files = [("file", (f"note-{number}-{time.time_ns()}.txt", text, "text/plain"))]
                        upload = client.post(f"/knowledge-bases/{kb_id}/documents/", files=files, headers=headers)
                        await expect(upload, 201)
                    elif operation == "conversation":
                        body = {"assistant": assistant_id}
                        created = await expect(client.post("/conversations/", json=body, headers=headers), 201)
                        conversation_id = int(created.json()["id"])
                    else:
                        await chat_turn(client, conversation_id, headers, rng.choice(QUERIES))
                except Exception as exc:  # every failure is counted and shown in the report
                    load.errors[operation].append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    continue
                load.latencies[operation].append((time.perf_counter() - started) * 1000)

        started = time.monotonic()
        await asyncio.gather(*(one_client(number) for number in range(LOAD_CLIENTS)))
        load.seconds = time.monotonic() - started
    return load


async def expect(request: Awaitable[Any], status: int) -> Any:
    response = await request
    if response.status_code != status:
        raise RuntimeError(f"{response.request.method} {response.request.url.path} answered {response.status_code}")
    return response


async def chat_turn(client: Any, conversation_id: int | None, headers: dict[str, str], question: str) -> None:
    """A streamed turn, read to its end event; the time is the whole answer's."""
    body = {"content": question, "stream": True}
    async with client.stream(
        "POST", f"/conversations/{conversation_id}/messages/", json=body, headers=headers
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"a chat turn answered {response.status_code}: {(await response.aread())[:200]!r}")
        events = [line async for line in response.aiter_lines() if line.startswith("event: ")]
    if "event: done" not in events:
        raise RuntimeError(f"a chat stream ended without its done event (last events {events[-3:]})")


async def direct_first_tokens(fake_url: str) -> list[float]:
    import httpx
    from streams import first_token_ms

    body = {"model": "fake-gpu", "stream": True, "messages": [{"role": "user", "content": "Say something."}]}
    async with httpx.AsyncClient(timeout=60) as client:
        times = [await first_token_ms(client, f"{fake_url}/v1/chat/completions", body, {}) for _ in range(20)]
    return [value for value in times if value is not None]


def p50_p95(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return percentile(values, 0.5), percentile(values, 0.95)


def pair(values: list[float]) -> str:
    p50, p95 = p50_p95(values)
    return f"{p50:.0f} / {p95:.0f}"


def ratio_of_p95(many: list[float], one: list[float]) -> str:
    return f"**{p50_p95(many)[1] / p50_p95(one)[1]:.1f}x**"


def render(
    figures: dict[str, Figures],
    own_cost: dict[str, list[float]],
    load: Load,
    chunks: int,
    embedding_ms: list[float],
    model_ttft_ms: list[float],
) -> str:
    lines = [
        f"\n## Serving: many API clients at once ({date.today().isoformat()})\n",
        f"{CORES} cores; the clients run on the same cores as the servers. A knowledge base of {chunks} chunks "
        "(the repository's Markdown). Milliseconds, p50 / p95, measured by the client over loopback HTTP with an "
        "API key (authentication, rate limit, audit row, serialisation). 50 at once: "
        f"{CONCURRENT} clients started together, each sending {GETS_PER_CLIENT} GETs one after another, or one "
        f"search each ({CONCURRENT_SEARCH_ROUNDS} such rounds, pooled). Errors: answers other than 200.\n",
        "| serving | plain GET, one client | plain GET, 50 at once | 50 ÷ 1 (p95) | hybrid search, one client "
        "| hybrid search, 50 at once | 50 ÷ 1 (p95) | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, figure in figures.items():
        lines.append(
            f"| {label} | {pair(figure.get_single)} | {pair(figure.get_concurrent)} "
            f"| {ratio_of_p95(figure.get_concurrent, figure.get_single)} | {pair(figure.search_single)} "
            f"| {pair(figure.search_concurrent)} | {ratio_of_p95(figure.search_concurrent, figure.search_single)} "
            f"| {len(figure.errors)} |"
        )
    lines.append("")
    for label, figure in figures.items():
        if figure.errors:
            lines.append(f"- {label}, first error: `{figure.errors[0]}`")
    own_parts = [label for label in own_cost if not label.startswith("the object")]
    own_total = sum(p50_p95(own_cost[label])[0] for label in own_parts)
    lines += [
        "",
        "### The API's own cost in a plain GET (in process, one at a time, ms)\n",
        "| part | p50 | p95 |",
        "| --- | ---: | ---: |",
        *(f"| {label} | {p50_p95(times)[0]:.2f} | {p50_p95(times)[1]:.2f} |" for label, times in own_cost.items()),
        "",
        f"The API's own cost (the sum of the p50s of {', '.join(own_parts)}): **{own_total:.1f} ms**.",
    ]
    embedding, model = pair(embedding_ms), pair(model_ttft_ms)
    lines += [
        "",
        f"Physical limits: MiniLM's own query embedding (Xinference called directly) {embedding} ms; the fake "
        f"model's own time to first token {model} ms.\n",
        f"### Load run: {LOAD_CLIENTS} API-key clients for {load.seconds:.0f} s (the last serving above)\n",
        "Each client has its own key and loops: read a knowledge base (5), hybrid search (3), upload a small "
        "text file (1), start a conversation (1), a streamed chat turn read to its end event (1); weights in "
        "brackets.\n",
        "| operation | answered | errors | p50 ms | p95 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for operation, _weight in LOAD_MIX:
        times, errors = load.latencies.get(operation, []), load.errors.get(operation, [])
        lines.append(f"| {operation} | {len(times)} | {len(errors)} | {pair(times).replace(' / ', ' | ')} |")
    answered = sum(len(times) for times in load.latencies.values())
    failed = sum(len(errors) for errors in load.errors.values())
    lines += ["", f"{answered} requests answered ({answered / max(load.seconds, 1):.0f} per second), {failed} errors."]
    for operation, errors in load.errors.items():
        if errors:
            lines.append(f"- {operation}: {len(errors)}, the first: `{errors[0]}`")
    lines += ["", "Reproduce: `make bench-serving`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
