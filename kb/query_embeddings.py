"""Searches' query embeddings, batched per embedding client while its call is in flight.

A search's query embedding is one HTTP call to the model server, which answers one call at a
time per model: 50 searches at once queued 50 calls behind each other, each paying the server's
own overhead (about 30 ms for MiniLM on Xinference on 2 cores, most of it not the model). Here a
lone query is sent at once, as before; queries arriving while a call is under way wait for it to
return and then go together in one call (at most settings.KB_QUERY_EMBEDDING_BATCH_MAX texts),
so a crowd costs a few calls instead of one each. Nothing waits on a timer."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from django.conf import settings


class TextEmbedder(Protocol):
    def embed_documents(self, texts: list[str]) -> list[list[float]]: ...


class QueryEmbeddingBatcher:
    """One queue per embedding client (the object models_registry caches per registration), and
    at most one call in flight for each."""

    def __init__(self, *, threads: int = 8) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, list[tuple[str, Future[list[float]]]]] = {}
        self._in_flight: set[int] = set()
        self._calls = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="query-embedding")

    def submit(self, embedder: TextEmbedder, query: str) -> Future[list[float]]:
        """The query's embedding, as a future: its exception is the client's (openai.APIError...)."""
        future: Future[list[float]] = Future()
        key = id(embedder)
        with self._lock:
            self._waiting.setdefault(key, []).append((query, future))
            if key in self._in_flight:
                return future
            self._in_flight.add(key)
        self._calls.submit(self._send_until_empty, key, embedder)
        return future

    def _send_until_empty(self, key: int, embedder: TextEmbedder) -> None:
        while True:
            with self._lock:
                waiting = self._waiting.get(key, [])
                most = max(1, settings.KB_QUERY_EMBEDDING_BATCH_MAX)
                batch, rest = waiting[:most], waiting[most:]
                if rest:
                    self._waiting[key] = rest
                else:
                    self._waiting.pop(key, None)
                if not batch:
                    self._in_flight.discard(key)
                    return
            try:
                vectors = embedder.embed_documents([query for query, _ in batch])
                if len(vectors) != len(batch):
                    raise ValueError(f"the model server returned {len(vectors)} embeddings for {len(batch)} queries")
            except Exception as exc:  # every waiting search gets the call's error, and the loop goes on
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, future), vector in zip(batch, vectors, strict=True):
                    future.set_result(vector)


QUERY_EMBEDDINGS = QueryEmbeddingBatcher()
