"""Writes: knowledge bases, documents, the ingestion pipeline (parse → split → embed → insert),
fair dispatch between teams, leases that recover from dead workers, and rebuilds beside the
live index."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import IO

import openai
from django.conf import settings
from django.core.files import File
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from accounts.models import Team
from chatplatform.domain_errors import DomainError
from chatplatform.unset import UNSET, Unset, given
from integrations.models import WebhookEvent
from integrations.services import webhook_emit
from kb import fulltext
from kb.embedding_batches import embedding_batches, embedding_lengths
from kb.models import (
    ACTIVE_STATUSES,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SPLITTER,
    Chunk,
    Document,
    DocumentStatus,
    KnowledgeBase,
    Splitter,
    VectorIndex,
)
from kb.parsing import ParseError, UnsupportedFile, parse
from kb.splitting import ChunkDraft, SplitterUnavailable, split_sections, tokenizer_path_for
from kb.storage import storage_reserved
from kb.uploads import IncomingFile, Rejection, receive, workdir
from kb.vector_indexes import indexable, vector_index_build, vector_index_ready, vector_type
from models_registry.credentials import CredentialsUnreadable
from models_registry.langchain_models import embeddings_for
from models_registry.models import ModelKind, ModelRegistration
from models_registry.providers.base import ProviderError, ProviderRefused, ProviderUnreachable, ProviderUnsafe
from models_registry.services import registration_probe_dimensions

logger = logging.getLogger(__name__)
DISPATCH_LOCK_ID = 4_242_001  # pg advisory lock: one dispatcher at a time
RETRY_BASE_S = 10
RETRY_MAX_S = 300


class KnowledgeBaseError(DomainError):
    pass


class TransientIngestError(Exception):
    """The model server failed in a way that can pass (down, restarting, overloaded)."""


# --- knowledge bases --------------------------------------------------------------------------


def _check_embedding_model(team: Team, model: ModelRegistration) -> None:
    if model.team_id != team.pk or model.kind != ModelKind.EMBEDDING:
        # The id, not the name: the caller may have sent another team's id.
        raise KnowledgeBaseError(f"embedding_model: no embedding model with id {model.pk} in this team")
    if not model.dimensions:
        raise KnowledgeBaseError(f"{model.name} has no dimensions: set them on its registration first")
    try:
        vector_type(model.dimensions)
    except ValueError as exc:
        raise KnowledgeBaseError(str(exc)) from exc


def _check_chunking(splitter: str, chunk_size: int, chunk_overlap: int, model: ModelRegistration) -> None:
    if splitter not in Splitter.values:
        raise KnowledgeBaseError(f"unknown splitter {splitter!r}: choose from {sorted(Splitter.values)}")
    if not 20 <= chunk_size <= 8000:
        raise KnowledgeBaseError("chunk_size must be between 20 and 8000")
    if not 0 <= chunk_overlap < chunk_size:
        raise KnowledgeBaseError("chunk_overlap must be at least 0 and smaller than chunk_size")
    if splitter == Splitter.TOKENS and tokenizer_path_for(model.custom_spec) is None:
        raise KnowledgeBaseError(
            f"the token splitter needs {model.name}'s tokenizer on this machine and its registration names none: "
            "choose the recursive or heading-aware splitter"
        )


@transaction.atomic
def kb_create(
    *,
    team: Team,
    name: str,
    embedding_model: ModelRegistration,
    description: str = "",
    splitter: str = DEFAULT_SPLITTER,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> KnowledgeBase:
    _check_embedding_model(team, embedding_model)
    _check_chunking(splitter, chunk_size, chunk_overlap, embedding_model)
    if KnowledgeBase.objects.filter(team=team, name=name).exists():
        raise KnowledgeBaseError(f"the team has a knowledge base named {name!r} already")
    kb = KnowledgeBase.objects.create(
        team=team,
        name=name,
        description=description,
        embedding_model=embedding_model,
        splitter=splitter,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
    )
    _vector_index_soon(embedding_model)
    return kb


def _vector_index_soon(model: ModelRegistration) -> None:
    """The worker makes sure the model's HNSW index exists, ready for when the knowledge base
    grows past KB_EXACT_SEARCH_MAX_CHUNKS: never DDL in a request (vector_index_ensure)."""
    from kb.tasks import vector_index_soon

    transaction.on_commit(partial(vector_index_soon, model.pk))


def kb_update(
    *,
    kb: KnowledgeBase,
    name: str | Unset = UNSET,
    description: str | Unset = UNSET,
    embedding_model: ModelRegistration | Unset = UNSET,
    splitter: str | Unset = UNSET,
    chunk_size: int | Unset = UNSET,
    chunk_overlap: int | Unset = UNSET,
) -> KnowledgeBase:
    """Name and description change in place; chunking and the embedding model through a rebuild.
    The team never changes."""
    changes = given(
        name=name,
        description=description,
        embedding_model=embedding_model,
        splitter=splitter,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
    )
    rebuild_fields = {"embedding_model", "splitter", "chunk_size", "chunk_overlap"}
    wants_rebuild = {key for key, value in changes.items() if key in rebuild_fields and getattr(kb, key) != value}
    if wants_rebuild and kb.documents.exists():
        raise KnowledgeBaseError(
            f"changing {', '.join(sorted(wants_rebuild))} re-embeds every document: use the rebuild action"
        )
    if wants_rebuild:
        model = changes.get("embedding_model", kb.embedding_model)
        _check_embedding_model(kb.team, model)
        _check_chunking(
            changes.get("splitter", kb.splitter),
            changes.get("chunk_size", kb.chunk_size),
            changes.get("chunk_overlap", kb.chunk_overlap),
            model,
        )
        _vector_index_soon(model)
    for key, value in changes.items():
        setattr(kb, key, value)
    # Only what changed: the worker may have moved vector_index since `kb` was read.
    kb.save(update_fields=[*changes, "updated_at"])
    return kb


def kb_rebuild(
    *,
    kb: KnowledgeBase,
    embedding_model: ModelRegistration | None = None,
    splitter: str | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
) -> KnowledgeBase:
    """Re-chunk and re-embed every document into the next generation while search keeps reading
    the current one; the swap happens when the last document is built."""
    model = embedding_model or kb.embedding_model
    new_splitter = splitter or kb.splitter
    new_size = chunk_size or kb.chunk_size
    new_overlap = kb.chunk_overlap if chunk_overlap is None else chunk_overlap
    _check_embedding_model(kb.team, model)
    _check_chunking(new_splitter, new_size, new_overlap, model)
    chosen = {
        "embedding_model_id": model.pk,
        "splitter": new_splitter,
        "chunk_size": new_size,
        "chunk_overlap": new_overlap,
    }
    with transaction.atomic():
        kb = KnowledgeBase.objects.select_for_update().get(pk=kb.pk)
        if kb.rebuilding:
            raise KnowledgeBaseError("a rebuild of this knowledge base is under way: wait for it to finish")
        kb.rebuild_settings = chosen
        kb.save(update_fields=["rebuild_settings", "updated_at"])
        kb.chunks.filter(generation=kb.generation + 1).delete()
        kb.documents.update(
            status=DocumentStatus.QUEUED, progress=0, error="", attempts=0, dispatched_at=None, lease_expires_at=None
        )
        transaction.on_commit(_dispatch_soon)
        _vector_index_soon(model)
    if not kb.documents.exists():
        kb_finish_rebuild_if_done(kb_id=kb.pk)
        kb.refresh_from_db()
    return kb


def kb_finish_rebuild_if_done(*, kb_id: int) -> bool:
    """Swap to the new generation once no document still needs building. True when it swapped."""
    with transaction.atomic():
        kb = KnowledgeBase.objects.select_for_update().get(pk=kb_id)
        if not kb.rebuilding:
            return False
        target = kb.generation + 1
        pending = kb.documents.exclude(status=DocumentStatus.FAILED).exclude(
            status=DocumentStatus.READY, built_generation=target
        )
        if pending.exists():
            return False
        assert kb.rebuild_settings is not None
        settings_ = kb.rebuild_settings
        kb.embedding_model_id = settings_["embedding_model_id"]
        kb.splitter = settings_["splitter"]
        kb.chunk_size = settings_["chunk_size"]
        kb.chunk_overlap = settings_["chunk_overlap"]
        kb.generation = target
        kb.rebuild_settings = None
        kb.save()
        kb.chunks.exclude(generation=target).delete()
    return True


VECTOR_INDEX_BATCH = 5000  # chunks put in the HNSW index per transaction


def vector_index_ensure(*, model: ModelRegistration) -> bool:
    """Make sure the HNSW index for this embedding model's size exists; True when it does. Runs in
    a worker, never in a request: the build is CREATE INDEX CONCURRENTLY on the chunk table every
    team shares. The size comes from a real embedding call: a registration's `dimensions` is what
    a person typed, and DDL on the shared table trusts no tenant's number. A model answering
    another size than registered gets nothing (its documents fail to store, saying so); one above
    what HNSW holds is searched exactly. Raises what the probe raises when the model does not answer."""
    if model.dimensions and vector_index_ready(model.dimensions):
        return True
    dims = registration_probe_dimensions(registration=model)
    if dims != model.dimensions:
        logger.warning("no vector index for %s: it returns %s dimensions, registered %s", model, dims, model.dimensions)
        return False
    if not indexable(dims):
        return False
    vector_index_build(dims)
    return True


def kb_index_vectors(*, kb_id: int) -> None:
    """Put a knowledge base's chunks in their dimension's HNSW index (kb.models.VectorIndex).
    Idempotent, and resumable: each batch commits, so a killed worker's redelivered task only
    does what is left. Builds the index first if it is not there yet (a model registered while
    the worker was away); when it cannot, the knowledge base stays NONE and is searched exactly,
    and the next search past the size asks again."""
    kb = KnowledgeBase.objects.select_related("embedding_model__provider").filter(pk=kb_id).first()
    if kb is None:
        return
    try:
        if not vector_index_ensure(model=kb.embedding_model):
            return
    except (openai.APIError, ProviderError) as exc:
        logger.warning("knowledge base %s stays searched exactly: its model did not answer (%s)", kb_id, exc)
        return
    # Waits for stores in flight (they hold the row shared); every store after this writes its
    # chunks indexed, so the batches below only catch the ones written before.
    KnowledgeBase.objects.filter(pk=kb_id, vector_index=VectorIndex.NONE).update(vector_index=VectorIndex.BUILDING)
    after_id = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM kb_chunk WHERE knowledge_base_id = %s AND id > %s AND NOT in_vector_index "
                "ORDER BY id LIMIT %s",
                [kb_id, after_id, VECTOR_INDEX_BATCH],
            )
            batch = [row[0] for row in cursor.fetchall()]
            if not batch:
                break
            # Re-checked after each row's lock: a second run side by side skips what this one
            # marked (and waits for it to commit) instead of indexing the rows again.
            cursor.execute(
                "UPDATE kb_chunk SET in_vector_index = true WHERE id = ANY(%s) AND NOT in_vector_index", [batch]
            )
        after_id = batch[-1]
    KnowledgeBase.objects.filter(pk=kb_id, vector_index=VectorIndex.BUILDING).update(vector_index=VectorIndex.READY)


def kb_request_vector_index(*, knowledge_bases: Sequence[KnowledgeBase]) -> None:
    """Ask the worker to index those not indexed yet; search stays exact until it is done."""
    from kb.tasks import index_vectors_soon

    for kb in knowledge_bases:
        if kb.vector_index == VectorIndex.NONE:
            index_vectors_soon(kb.pk)


def _index_vectors_once_large(kb_id: int) -> None:
    kb = KnowledgeBase.objects.filter(pk=kb_id).first()
    if kb is None or kb.vector_index != VectorIndex.NONE:
        return
    if Chunk.objects.filter(knowledge_base_id=kb_id)[: settings.KB_EXACT_SEARCH_MAX_CHUNKS + 1].count() > (
        settings.KB_EXACT_SEARCH_MAX_CHUNKS
    ):
        kb_request_vector_index(knowledge_bases=[kb])


def kb_delete(*, kb: KnowledgeBase) -> None:
    files = [document.file.name or "" for document in kb.documents.all()]
    kb.delete()
    transaction.on_commit(lambda: _delete_files(files))


# --- documents --------------------------------------------------------------------------------


@dataclass
class AddResult:
    created: list[Document] = field(default_factory=list)
    duplicates: list[Document] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def documents_add(*, kb: KnowledgeBase, files: Sequence[IncomingFile], rejected: Sequence[Rejection] = ()) -> AddResult:
    """Store and queue new files; a file whose SHA-256 the knowledge base holds already adds
    nothing (no row, no embedding call) and is reported as a duplicate."""
    result = AddResult(rejected=list(rejected))
    for incoming in files:
        with transaction.atomic():
            existing = Document.objects.filter(knowledge_base=kb, sha256=incoming.sha256).first()
            if existing is not None:
                result.duplicates.append(existing)
                continue
            document = Document(
                knowledge_base=kb,
                team_id=kb.team_id,
                original_name=incoming.name,
                sha256=incoming.sha256,
                size_bytes=incoming.size_bytes,
                content_type=incoming.kind,
            )
            with open(incoming.path, "rb") as handle:
                document.file.save(incoming.name, File(handle), save=False)
            document.save()
            result.created.append(document)
    if result.created:
        transaction.on_commit(_dispatch_soon)
    return result


def documents_upload(*, kb: KnowledgeBase, uploads: Iterable[tuple[IO[bytes], str]]) -> AddResult:
    """Files as they arrive (stream, name): checked, typed, archives expanded, then added."""
    accepted: list[IncomingFile] = []
    rejected: list[Rejection] = []
    with workdir() as scratch:
        for stream, name in uploads:
            files, refusals = receive(stream, name or "unnamed", scratch)
            accepted.extend(files)
            rejected.extend(refusals)
        with storage_reserved(kb=kb, files=accepted):  # the team's storage quota (413 past it)
            return documents_add(kb=kb, files=accepted, rejected=rejected)


def document_reindex(*, document: Document) -> Document:
    Document.objects.filter(pk=document.pk).update(
        status=DocumentStatus.QUEUED, progress=0, error="", attempts=0, dispatched_at=None, lease_expires_at=None
    )
    transaction.on_commit(_dispatch_soon)
    document.refresh_from_db()
    return document


def document_delete(*, document: Document) -> None:
    name = document.file.name or ""
    kb_id = document.knowledge_base_id
    document.delete()
    transaction.on_commit(lambda: _delete_files([name]))
    transaction.on_commit(lambda: kb_finish_rebuild_if_done(kb_id=kb_id))


def _delete_files(names: list[str]) -> None:
    from django.core.files.storage import default_storage

    for name in names:
        if name:
            default_storage.delete(name)


def _dispatch_soon() -> None:
    from kb.tasks import dispatch_soon

    dispatch_soon()


# --- dispatch ---------------------------------------------------------------------------------


def documents_dispatch() -> list[tuple[int, str]]:
    """Hand queued documents to workers: at most KB_INGEST_MAX_IN_FLIGHT at once, round-robin by
    team (every team's oldest first). Documents whose lease expired (their worker died, or a
    retry's wait is over) go back in line first, unless their attempts are used up. Returns
    (document id, dispatch token) pairs."""
    _documents_abandoned_fail()
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [DISPATCH_LOCK_ID])
        if not cursor.fetchone()[0]:
            return []
        Document.objects.filter(status__in=ACTIVE_STATUSES, lease_expires_at__lt=now).update(
            status=DocumentStatus.QUEUED, dispatched_at=None, dispatch_token=None, lease_expires_at=None
        )
        in_flight = Document.objects.filter(status__in=ACTIVE_STATUSES, dispatched_at__isnull=False).count()
        free = settings.KB_INGEST_MAX_IN_FLIGHT - in_flight
        if free <= 0:
            return []
        cursor.execute(
            """
            SELECT id FROM (
                SELECT id, row_number() OVER (PARTITION BY team_id ORDER BY id) AS turn
                FROM kb_document WHERE status = %s AND dispatched_at IS NULL
            ) AS queued
            ORDER BY turn, id LIMIT %s
            """,
            [DocumentStatus.QUEUED, free],
        )
        chosen = [row[0] for row in cursor.fetchall()]
        dispatched = []
        for document_id in chosen:
            token = uuid.uuid4()
            Document.objects.filter(pk=document_id).update(
                dispatched_at=now, dispatch_token=token, lease_expires_at=now + _lease()
            )
            dispatched.append((document_id, str(token)))
    return dispatched


def _lease(extra_s: float = 0) -> timedelta:
    return timedelta(seconds=settings.KB_INGEST_LEASE_S + extra_s)


def _documents_abandoned_fail() -> None:
    """Fail the documents whose worker died (or stalled past its lease) on their last allowed
    attempt. A file that kills every worker that opens it (a parser crash, memory exhaustion, a
    stall) would otherwise be handed out again forever, holding one of the
    KB_INGEST_MAX_IN_FLIGHT slots every team shares. Before the dispatch transaction, on their
    own: failing takes the knowledge base's row (a rebuild's end), which must not wait inside
    the dispatcher's lock."""
    now = timezone.now()
    abandoned = Document.objects.filter(
        status__in=(DocumentStatus.PARSING, DocumentStatus.EMBEDDING),
        lease_expires_at__lt=now,
        attempts__gte=settings.KB_INGEST_MAX_ATTEMPTS,
    )
    for document in abandoned:
        reason = (
            f"the worker died {document.attempts} times while ingesting this file (killed, out of memory, or "
            f"stuck for {settings.KB_INGEST_LEASE_S} s without progress), so it is not tried again: split it or "
            "save it in a simpler format, then reindex it"
        )
        logger.warning("document %s failed: %s", document.pk, reason)
        _fail(document, reason, {}, expired_before=now)


@contextlib.contextmanager
def _lease_heartbeat(document: Document) -> Iterator[None]:
    """Renew the document's lease from a thread while this worker is on it. Progress renews it
    too, but a long parse, split or embedding request reports none, and an expired lease hands
    the document to a second worker while the first still runs (and counts an attempt). The
    thread dies with its process: a killed worker's lease still runs out. A worker stuck
    holding the interpreter (a regex in C) stops renewing too."""
    stop = threading.Event()
    interval = settings.KB_INGEST_LEASE_S / 3

    def renew() -> None:
        try:
            while not stop.wait(interval):
                try:
                    held = Document.objects.filter(pk=document.pk, dispatch_token=document.dispatch_token).update(
                        lease_expires_at=timezone.now() + _lease()
                    )
                except DatabaseError:
                    logger.warning("could not renew the lease of document %s; trying again", document.pk)
                    continue
                if not held:
                    return  # finished, failed or handed out again: nothing of this worker's to keep
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=renew, name=f"lease-document-{document.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- ingestion --------------------------------------------------------------------------------


def document_claim(*, document_id: int, token: str) -> Document | None:
    """The document, marked as being parsed by this worker; None when this message is stale (the
    document was handed out again) or another live worker holds it."""
    with transaction.atomic():
        document = Document.objects.select_for_update().select_related("knowledge_base").filter(pk=document_id).first()
        if document is None or str(document.dispatch_token) != token:
            return None
        if document.status in (DocumentStatus.PARSING, DocumentStatus.EMBEDDING):
            return None  # a redelivered message while the first worker may still run: the lease decides
        document.status = DocumentStatus.PARSING
        document.progress = 0
        document.attempts += 1
        document.lease_expires_at = timezone.now() + _lease()
        document.save(update_fields=["status", "progress", "attempts", "lease_expires_at", "updated_at"])
    return document


def _progress(document: Document, *, status: str, progress: int) -> None:
    document.status = status
    document.progress = progress
    Document.objects.filter(pk=document.pk, dispatch_token=document.dispatch_token).update(
        status=status, progress=progress, lease_expires_at=timezone.now() + _lease(), updated_at=timezone.now()
    )


def _build_settings(kb: KnowledgeBase) -> tuple[int, ModelRegistration, str, int, int]:
    """(generation, embedding model, splitter, chunk size, overlap) this build writes with."""
    if kb.rebuild_settings is not None:
        chosen = kb.rebuild_settings
        model = ModelRegistration.objects.select_related("provider").get(pk=chosen["embedding_model_id"])
        return kb.generation + 1, model, chosen["splitter"], chosen["chunk_size"], chosen["chunk_overlap"]
    model = ModelRegistration.objects.select_related("provider").get(pk=kb.embedding_model_id)
    return kb.generation, model, kb.splitter, kb.chunk_size, kb.chunk_overlap


def document_ingest(*, document: Document) -> None:
    """Parse, split, embed in batches, then replace the document's chunks in one transaction.
    Raises TransientIngestError for model-server failures worth retrying; records anything else
    as a failure with its reason."""
    kb = document.knowledge_base
    generation, model, splitter, chunk_size, chunk_overlap = _build_settings(kb)
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        sections = parse(Path(document.file.path), document.content_type, document.original_name)
        timings["parse_s"] = round(time.perf_counter() - started, 3)
        _progress(document, status=DocumentStatus.PARSING, progress=10)

        started = time.perf_counter()
        drafts = split_sections(
            sections,
            splitter=splitter,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            tokenizer_path=tokenizer_path_for(model.custom_spec),
        )
        timings["split_s"] = round(time.perf_counter() - started, 3)
        _progress(document, status=DocumentStatus.EMBEDDING, progress=20)

        started = time.perf_counter()
        vectors = _embed(document, model, drafts)
        timings["embed_s"] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        _replace_chunks(document, generation, model.dimensions or 0, drafts, vectors)
        timings["store_s"] = round(time.perf_counter() - started, 3)
    except (ParseError, UnsupportedFile, SplitterUnavailable, CredentialsUnreadable) as exc:
        _fail(document, str(exc), timings)
        return
    except (ProviderError, openai.APIError) as exc:
        if _is_permanent(exc):
            _fail(document, f"the embedding model refused: {exc}", timings)
            return
        if isinstance(exc, openai.APIConnectionError | ProviderUnreachable):
            reason = f"the embedding model {model.name} at {model.provider.endpoint} is unreachable ({exc})"
        else:
            reason = f"the embedding model {model.name} is not answering: {exc}"
        raise TransientIngestError(reason) from exc
    document_mark_ready(document=document, generation=generation, chunk_count=len(drafts), timings=timings)


def document_mark_ready(*, document: Document, generation: int, chunk_count: int, timings: dict[str, float]) -> bool:
    """The end of a successful ingestion (for the worker that still holds the document): ready,
    and a `document.ready` webhook event. False when another worker took the document over."""
    marked = Document.objects.filter(pk=document.pk, dispatch_token=document.dispatch_token).update(
        status=DocumentStatus.READY,
        progress=100,
        error="",
        chunk_count=chunk_count,
        built_generation=generation,
        stage_timings=timings,
        dispatched_at=None,
        dispatch_token=None,
        lease_expires_at=None,
        updated_at=timezone.now(),
    )
    if marked:
        _document_event(document, WebhookEvent.DOCUMENT_READY, chunk_count=chunk_count, error="")
    kb_finish_rebuild_if_done(kb_id=document.knowledge_base_id)
    _index_vectors_once_large(document.knowledge_base_id)
    return bool(marked)


def _document_event(document: Document, event: str, *, chunk_count: int, error: str) -> None:
    webhook_emit(
        team_id=document.team_id,
        event=event,
        payload={
            "document_id": document.pk,
            "knowledge_base_id": document.knowledge_base_id,
            "name": document.original_name,
            "status": DocumentStatus.READY if event == WebhookEvent.DOCUMENT_READY else DocumentStatus.FAILED,
            "chunk_count": chunk_count,
            "error": error,
        },
    )


def _is_permanent(exc: Exception) -> bool:
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return True
    # A refused address stays refused until an admin changes the endpoint; the openai client
    # wraps what the guarded transport raised, so look down the chain.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ProviderUnsafe):
            return True
        cause = cause.__cause__ or cause.__context__
    return isinstance(exc, ProviderRefused) and exc.status_code in (401, 403)


def _embed(document: Document, model: ModelRegistration, drafts: list[ChunkDraft]) -> list[list[float]]:
    embeddings = embeddings_for(model)
    texts = [draft.text for draft in drafts]
    by_position: dict[int, list[float]] = {}
    for batch in embedding_batches(embedding_lengths(texts, model.custom_spec), settings.KB_EMBED_BATCH):
        answered = embeddings.embed_documents([texts[index] for index in batch])
        by_position.update(zip(batch, answered, strict=True))
        progress = 20 + int(75 * len(by_position) / max(len(drafts), 1))
        _progress(document, status=DocumentStatus.EMBEDDING, progress=progress)
    vectors = [by_position[index] for index in range(len(texts))]
    if vectors and len(vectors[0]) != model.dimensions:
        raise ParseError(
            f"{model.name} returned {len(vectors[0])}-dimensional embeddings but is registered with "
            f"{model.dimensions}: correct the registration"
        )
    return vectors


def _replace_chunks(
    document: Document, generation: int, dims: int, drafts: list[ChunkDraft], vectors: list[list[float]]
) -> None:
    """Delete and insert in one transaction, so a re-run never leaves duplicates or a gap."""
    rows = [
        (
            document.knowledge_base_id,
            document.pk,
            generation,
            ordinal,
            draft.text,
            json.dumps(draft.metadata, ensure_ascii=False),
            dims,
            json.dumps(vector),
            fulltext.index_text(draft.text),
        )
        for ordinal, (draft, vector) in enumerate(zip(drafts, vectors, strict=True))
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        # Shared, so stores run side by side, while kb_index_vectors' switch out of NONE waits
        # for them: no chunk is written unindexed after it (taken before the document's lock, in
        # the order kb_rebuild takes both).
        cursor.execute(
            "SELECT vector_index FROM kb_knowledgebase WHERE id = %s FOR SHARE", [document.knowledge_base_id]
        )
        state = cursor.fetchone()
        in_vector_index = state is not None and state[0] != VectorIndex.NONE
        # The row lock makes a stale worker (an expired lease, handed out again) wait, then find
        # its token gone and write nothing.
        locked = Document.objects.select_for_update().filter(pk=document.pk, dispatch_token=document.dispatch_token)
        if not locked.exists():
            raise _Superseded()
        cursor.execute("DELETE FROM kb_chunk WHERE document_id = %s AND generation = %s", [document.pk, generation])
        cursor.executemany(
            "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, "
            "embedding, search_vector, in_vector_index) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s::vector, "
            "to_tsvector('simple', %s), %s)",
            [(*row, in_vector_index) for row in rows],
        )


class _Superseded(Exception):
    """This worker's hold on the document ended (lease expired and handed out again)."""


def _fail(
    document: Document, reason: str, timings: dict[str, float], *, expired_before: datetime | None = None
) -> None:
    """Failed with the reason, if this holder still holds it (and, with expired_before, nobody
    renewed its lease since)."""
    held = Document.objects.filter(pk=document.pk, dispatch_token=document.dispatch_token)
    if expired_before is not None:
        held = held.filter(lease_expires_at__lt=expired_before)
    failed = held.update(
        status=DocumentStatus.FAILED,
        error=reason[:4000],
        stage_timings=timings,
        dispatched_at=None,
        dispatch_token=None,
        lease_expires_at=None,
        updated_at=timezone.now(),
    )
    if failed:
        _document_event(document, WebhookEvent.DOCUMENT_FAILED, chunk_count=0, error=reason[:4000])
    kb_finish_rebuild_if_done(kb_id=document.knowledge_base_id)


def document_retry_later(*, document: Document, reason: str) -> bool:
    """After a transient failure: wait with backoff (the lease holds the document until then),
    or give up after KB_INGEST_MAX_ATTEMPTS. True when it will be retried."""
    if document.attempts >= settings.KB_INGEST_MAX_ATTEMPTS:
        _fail(document, f"{reason} (gave up after {document.attempts} attempts; retry it when the model runs)", {})
        return False
    delay = min(RETRY_BASE_S * 2 ** (document.attempts - 1), RETRY_MAX_S)
    Document.objects.filter(pk=document.pk, dispatch_token=document.dispatch_token).update(
        status=DocumentStatus.QUEUED,
        progress=0,
        error=f"waiting to retry in {delay}s: {reason}",
        lease_expires_at=timezone.now() + timedelta(seconds=delay),
        updated_at=timezone.now(),
    )
    return True


def document_process(*, document_id: int, token: str) -> None:
    """The whole of one ingestion attempt, as the worker runs it."""
    document = document_claim(document_id=document_id, token=token)
    if document is None:
        return
    try:
        with _lease_heartbeat(document):
            document_ingest(document=document)
    except TransientIngestError as exc:
        document_retry_later(document=document, reason=str(exc))
    except _Superseded:
        logger.info("document %s was handed to another worker meanwhile; dropping this attempt", document_id)
