"""The one place that turns a registration into LangChain objects: chat model, embeddings,
reranker. Built once per process and reused (constructing a ChatOpenAI costs about 0.16 s);
a registration or provider edited since is rebuilt, because their `updated_at` are part of the
cache key (a provider's new endpoint or dropped key must take effect in every process).

Every HTTP client in them is the SSRF guard's (core.outbound): the provider's host is
checked and pinned at each request, redirects are not followed (the openai package's own client
follows them), and error answers reach callers as a short reason, not the server's body."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import httpx
from django.conf import settings
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from core.outbound import outbound_async_client, outbound_client
from models_registry.credentials import credentials_decrypt
from models_registry.models import ModelKind, ModelRegistration
from models_registry.providers.base import ProviderUnreachable, ProviderUnsafe, raise_for_answer

REQUEST_TIMEOUT_S = 120.0
MAX_RETRIES = 2
# Servers without auth still need a non-empty key for the openai client.
NO_KEY = "not-needed"

T = TypeVar("T")
_cache: dict[tuple[str, int, datetime, datetime, int], Any] = {}
_cache_lock = threading.Lock()


def _event_loop_id() -> int:
    """The async HTTP clients inside these objects belong to the event loop they first ran on;
    a process with one loop (uvicorn) shares one object, a new loop gets its own."""
    try:
        return id(asyncio.get_running_loop())
    except RuntimeError:
        return 0


def _cached(registration: ModelRegistration, role: str, build: Callable[[], T]) -> T:
    key = (role, registration.pk, registration.updated_at, registration.provider.updated_at, _event_loop_id())
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def _require(registration: ModelRegistration, kind: str) -> None:
    if registration.kind != kind:
        raise ValueError(f"{registration.name} is a {registration.kind} model, not {kind}")


def _openai_base(registration: ModelRegistration) -> dict[str, Any]:
    provider = registration.provider
    # Both clients: given only one, langchain-openai builds the other itself (unguarded, and
    # following redirects). Their own per-process and per-loop reuse comes from _cached.
    check = not provider.is_embedded
    # A refused address raises ProviderUnsafe (a ProviderError) out of the openai client, as the
    # platform's own provider calls do, so every caller's ProviderError handling covers it.
    refused = partial(ProviderUnsafe, provider.endpoint)
    return {
        "base_url": f"{provider.endpoint}/v1",
        "api_key": credentials_decrypt(provider.credentials_encrypted) or NO_KEY,
        "model": registration.provider_model_uid,
        "timeout": REQUEST_TIMEOUT_S,
        "max_retries": MAX_RETRIES,
        "http_client": outbound_client(timeout=REQUEST_TIMEOUT_S, check=check, on_refused=refused),
        "http_async_client": outbound_async_client(timeout=REQUEST_TIMEOUT_S, check=check, on_refused=refused),
    }


def chat_model_for(registration: ModelRegistration) -> ChatOpenAI:
    _require(registration, ModelKind.LLM)
    # An async HTTP client of its own (_openai_base): langchain-openai otherwise shares one
    # process-wide, which breaks as soon as a second event loop (a test, a benchmark) uses it.
    return _cached(
        registration,
        "chat",
        lambda: ChatOpenAI(
            **_openai_base(registration),
            streaming=True,
            # A stream queued behind others at a busy CPU model may wait minutes for its first
            # token; the operator decides how long that may be (langchain-openai's default: 120 s).
            stream_chunk_timeout=settings.MODEL_STREAM_IDLE_TIMEOUT_S or None,
        ),
    )


def embeddings_for(registration: ModelRegistration) -> OpenAIEmbeddings:
    _require(registration, ModelKind.EMBEDDING)
    # check_embedding_ctx_length=False: otherwise the client tokenizes with tiktoken first, which
    # downloads OpenAI's encodings (no internet here) and means nothing for other models.
    return _cached(
        registration,
        "embeddings",
        lambda: OpenAIEmbeddings(**_openai_base(registration), check_embedding_ctx_length=False),
    )


class XinferenceReranker(BaseDocumentCompressor):
    """Reorders documents by Xinference's /v1/rerank relevance score (kept in metadata)."""

    endpoint: str
    model_uid: str
    api_key: str = ""
    top_n: int | None = None
    timeout_s: float = REQUEST_TIMEOUT_S
    check: bool = True  # the SSRF guard's check at each call; off only for the embedded Xinference

    def rerank(self, query: str, texts: Sequence[str]) -> list[tuple[int, float]]:
        """(index into texts, relevance score), best first."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body: dict[str, Any] = {"model": self.model_uid, "query": query, "documents": list(texts)}
        if self.top_n is not None:
            body["top_n"] = self.top_n
        refused = partial(ProviderUnsafe, self.endpoint)
        try:
            with outbound_client(timeout=self.timeout_s, check=self.check, on_refused=refused) as client:
                response = client.post(f"{self.endpoint}/v1/rerank", json=body, headers=headers)
        except httpx.TransportError as exc:
            raise ProviderUnreachable(self.endpoint, type(exc).__name__) from exc
        raise_for_answer(self.endpoint, response)
        results = response.json()["results"]
        return [(int(item["index"]), float(item["relevance_score"])) for item in results]

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        ranked = self.rerank(query, [document.page_content for document in documents])
        return [
            Document(
                page_content=documents[index].page_content,
                metadata={**documents[index].metadata, "relevance_score": score},
            )
            for index, score in ranked
        ]


def reranker_for(registration: ModelRegistration) -> XinferenceReranker:
    _require(registration, ModelKind.RERANK)
    provider = registration.provider
    return _cached(
        registration,
        "rerank",
        lambda: XinferenceReranker(
            endpoint=provider.endpoint,
            model_uid=registration.provider_model_uid,
            api_key=credentials_decrypt(provider.credentials_encrypted),
            check=not provider.is_embedded,
        ),
    )
