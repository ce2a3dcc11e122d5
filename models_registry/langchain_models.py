"""The one place that turns a registration into LangChain objects: chat model, embeddings,
reranker. Built once per process and reused (constructing a ChatOpenAI costs about 0.16 s);
a registration edited since is rebuilt, because its `updated_at` is part of the cache key."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import httpx
from django.conf import settings
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from models_registry.credentials import credentials_decrypt
from models_registry.models import ModelKind, ModelRegistration
from models_registry.providers.base import ProviderRefused, ProviderUnreachable, error_message

REQUEST_TIMEOUT_S = 120.0
MAX_RETRIES = 2
# Servers without auth still need a non-empty key for the openai client.
NO_KEY = "not-needed"

T = TypeVar("T")
_cache: dict[tuple[str, int, datetime, int], Any] = {}
_cache_lock = threading.Lock()


def _event_loop_id() -> int:
    """The async HTTP clients inside these objects belong to the event loop they first ran on;
    a process with one loop (uvicorn) shares one object, a new loop gets its own."""
    try:
        return id(asyncio.get_running_loop())
    except RuntimeError:
        return 0


def _cached(registration: ModelRegistration, role: str, build: Callable[[], T]) -> T:
    key = (role, registration.pk, registration.updated_at, _event_loop_id())
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def _require(registration: ModelRegistration, kind: str) -> None:
    if registration.kind != kind:
        raise ValueError(f"{registration.name} is a {registration.kind} model, not {kind}")


def _openai_base(registration: ModelRegistration) -> dict[str, Any]:
    provider = registration.provider
    return {
        "base_url": f"{provider.endpoint}/v1",
        "api_key": credentials_decrypt(provider.credentials_encrypted) or NO_KEY,
        "model": registration.provider_model_uid,
        "timeout": REQUEST_TIMEOUT_S,
        "max_retries": MAX_RETRIES,
    }


def chat_model_for(registration: ModelRegistration) -> ChatOpenAI:
    _require(registration, ModelKind.LLM)
    # An async HTTP client of its own: langchain-openai otherwise shares one process-wide, which
    # breaks as soon as a second event loop (a test, a benchmark) uses it.
    return _cached(
        registration,
        "chat",
        lambda: ChatOpenAI(
            **_openai_base(registration),
            streaming=True,
            # A stream queued behind others at a busy CPU model may wait minutes for its first
            # token; the operator decides how long that may be (langchain-openai's default: 120 s).
            stream_chunk_timeout=settings.MODEL_STREAM_IDLE_TIMEOUT_S or None,
            http_async_client=httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S),
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

    def rerank(self, query: str, texts: Sequence[str]) -> list[tuple[int, float]]:
        """(index into texts, relevance score), best first."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body: dict[str, Any] = {"model": self.model_uid, "query": query, "documents": list(texts)}
        if self.top_n is not None:
            body["top_n"] = self.top_n
        try:
            response = httpx.post(f"{self.endpoint}/v1/rerank", json=body, headers=headers, timeout=self.timeout_s)
        except httpx.TransportError as exc:
            raise ProviderUnreachable(self.endpoint, type(exc).__name__) from exc
        if response.is_error:
            raise ProviderRefused(self.endpoint, response.status_code, error_message(response))
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
        ),
    )
