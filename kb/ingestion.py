"""Ingestion: one attempt at one document, as a worker runs it: claim → parse → split → embed →
store the chunks → ready (or failed with the reason, or queued again to retry a model outage).
Which document, when and with which lease is kb.dispatch's; this module does the work."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import openai
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from evaluation.services import after_import as evaluation_after_import
from integrations.models import WebhookEvent
from integrations.services import webhook_emit
from kb import chunk_edits, dispatch, fulltext
from kb.embedding_batches import embedding_batches, embedding_lengths
from kb.models import Document, DocumentStatus, KnowledgeBase, VectorIndex
from kb.parsing import ParseError, ParseReport, UnsupportedFile, parse
from kb.services import kb_finish_rebuild_if_done, kb_index_vectors_if_large
from kb.splitting import ChunkDraft, SplitterUnavailable, split_sections, tokenizer_path_for
from models_registry.credentials import CredentialsUnreadable
from models_registry.langchain_models import embeddings_for
from models_registry.models import ModelRegistration
from models_registry.providers.base import ProviderError, ProviderRefused, ProviderUnreachable, ProviderUnsafe

logger = logging.getLogger(__name__)

RETRY_BASE_S = 10
RETRY_MAX_S = 300
# Progress: parsing ends at 10% and splitting at 20%, embedding takes the rest up to 95%; a
# document read by OCR spends most of its time there, so its pages move the bar up to 60% first.
PARSED_PERCENT = 10
OCR_PARSED_PERCENT = 60


class TransientIngestError(Exception):
    """The model server failed in a way that can pass (down, restarting, overloaded)."""


def documents_dispatch() -> list[tuple[int, str]]:
    """What the dispatcher runs: first fail the documents whose worker died on their last allowed
    attempt, then hand the next ones out (kb.dispatch.documents_hand_out)."""
    documents_abandoned_fail()
    return dispatch.documents_hand_out()


def documents_abandoned_fail() -> None:
    """Fail the documents whose worker died (or stalled past its lease) on their last allowed
    attempt. A file that kills every worker that opens it (a parser crash, memory exhaustion, a
    stall) would otherwise be handed out again forever, holding one of the
    KB_INGEST_MAX_IN_FLIGHT slots every team shares. Before the dispatch transaction, on their
    own: failing takes the knowledge base's row (a rebuild's end), which must not wait inside
    the dispatcher's lock."""
    now = timezone.now()
    for document in dispatch.abandoned():
        reason = (
            f"the worker died {document.attempts} times while ingesting this file (killed, out of memory, or "
            f"stuck for {settings.KB_INGEST_LEASE_S} s without progress), so it is not tried again: split it or "
            "save it in a simpler format, then reindex it"
        )
        logger.warning("document %s failed: %s", document.pk, reason)
        _fail(document, reason, {}, expired_before=now)


@dataclass(frozen=True)
class BuildSettings:
    """What a build writes with: the live settings, or a rebuild's."""

    generation: int
    model: ModelRegistration
    splitter: str
    chunk_size: int
    chunk_overlap: int
    chunk_headers: bool


def _build_settings(kb: KnowledgeBase) -> BuildSettings:
    if kb.rebuild_settings is not None:
        chosen = kb.rebuild_settings
        return BuildSettings(
            generation=kb.generation + 1,
            model=ModelRegistration.objects.select_related("provider").get(pk=chosen["embedding_model_id"]),
            splitter=chosen["splitter"],
            chunk_size=chosen["chunk_size"],
            chunk_overlap=chosen["chunk_overlap"],
            # A rebuild asked for before chunk headers existed keeps the knowledge base's setting.
            chunk_headers=chosen.get("chunk_headers", kb.chunk_headers),
        )
    return BuildSettings(
        generation=kb.generation,
        model=ModelRegistration.objects.select_related("provider").get(pk=kb.embedding_model_id),
        splitter=kb.splitter,
        chunk_size=kb.chunk_size,
        chunk_overlap=kb.chunk_overlap,
        chunk_headers=kb.chunk_headers,
    )


def document_ingest(*, document: Document) -> None:
    """Parse, split, embed in batches, then replace the document's chunks in one transaction.
    Raises TransientIngestError for model-server failures worth retrying; records anything else
    as a failure with its reason."""
    kb = document.knowledge_base
    build = _build_settings(kb)
    generation, model = build.generation, build.model
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        report = ParseReport(progress=lambda done, total: _parse_progress(document, done, total))
        sections = parse(Path(document.file.path), document.content_type, document.original_name, report)
        timings["parse_s"] = round(time.perf_counter() - started, 3)
        parsed = max(PARSED_PERCENT, document.progress)  # OCR'd pages took it to OCR_PARSED_PERCENT
        dispatch.progress(document, status=DocumentStatus.PARSING, percent=parsed)

        started = time.perf_counter()
        drafts = split_sections(
            sections,
            splitter=build.splitter,
            chunk_size=build.chunk_size,
            chunk_overlap=build.chunk_overlap,
            tokenizer_path=tokenizer_path_for(model.custom_spec),
            headers=build.chunk_headers,
        )
        timings["split_s"] = round(time.perf_counter() - started, 3)
        dispatch.progress(document, status=DocumentStatus.EMBEDDING, percent=parsed + 10)

        # Members' corrections (kb.chunk_edits) replace their originals before embedding: a
        # corrected chunk is embedded once, with the corrected text.
        stored, _disabled = chunk_edits.drafts_with_edits(drafts, chunk_edits.edits_by_original(document.pk))
        started = time.perf_counter()
        vectors = _embed(document, model, stored, start_percent=parsed + 10)
        timings["embed_s"] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        _replace_chunks(document, generation, model, drafts, stored, vectors)
        timings["store_s"] = round(time.perf_counter() - started, 3)
    except (ParseError, UnsupportedFile, SplitterUnavailable, CredentialsUnreadable) as exc:
        _fail(document, str(exc), timings)
        return
    except FileNotFoundError:
        # The stored upload is gone (deleted from storage, a lost volume): retrying cannot help.
        _fail(document, "the stored file is missing: upload the document again", timings)
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
    document_mark_ready(
        document=document,
        generation=generation,
        chunk_count=len(drafts),
        timings=timings,
        notice="; ".join(report.notices),
    )


def _parse_progress(document: Document, done: int, total: int) -> None:
    """Pages read by OCR move the bar from 0 to OCR_PARSED_PERCENT, page by page."""
    dispatch.progress(document, status=DocumentStatus.PARSING, percent=OCR_PARSED_PERCENT * done // max(total, 1))


def document_mark_ready(
    *, document: Document, generation: int, chunk_count: int, timings: dict[str, float], notice: str = ""
) -> bool:
    """The end of a successful ingestion (for the worker that still holds the document): ready,
    and a `document.ready` webhook event. False when another worker took the document over.
    `notice`: what was left out (pages past KB_OCR_MAX_PAGES), kept in the document's `notice`."""
    marked = dispatch.release_ready(
        document, generation=generation, chunk_count=chunk_count, timings=timings, notice=notice[:4000]
    )
    if marked:
        _document_event(document, WebhookEvent.DOCUMENT_READY, chunk_count=chunk_count, error="")
    kb_finish_rebuild_if_done(kb_id=document.knowledge_base_id)
    kb_index_vectors_if_large(kb_id=document.knowledge_base_id)
    if marked:
        evaluation_after_import(kb_id=document.knowledge_base_id)
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


def _embed(
    document: Document, model: ModelRegistration, drafts: list[ChunkDraft], *, start_percent: int
) -> list[list[float]]:
    embeddings = embeddings_for(model)
    texts = [draft.text for draft in drafts]
    by_position: dict[int, list[float]] = {}
    for batch in embedding_batches(embedding_lengths(texts, model.custom_spec), settings.KB_EMBED_BATCH):
        answered = embeddings.embed_documents([texts[index] for index in batch])
        by_position.update(zip(batch, answered, strict=True))
        progress = start_percent + int((95 - start_percent) * len(by_position) / max(len(drafts), 1))
        dispatch.progress(document, status=DocumentStatus.EMBEDDING, percent=progress)
    vectors = [by_position[index] for index in range(len(texts))]
    if vectors and len(vectors[0]) != model.dimensions:
        raise ParseError(
            f"{model.name} returned {len(vectors[0])}-dimensional embeddings but is registered with "
            f"{model.dimensions}: correct the registration"
        )
    return vectors


def _replace_chunks(
    document: Document,
    generation: int,
    model: ModelRegistration,
    drafts: list[ChunkDraft],
    embedded: list[ChunkDraft],
    vectors: list[list[float]],
) -> None:
    """Delete and insert in one transaction, so a re-run never leaves duplicates or a gap.
    `drafts` are the splitter's, `embedded` what `vectors` were computed from (members' edits
    applied); the edits are read again under the document's lock, which kb.chunk_edits takes
    too, and a chunk whose edit changed meanwhile is embedded again."""
    vectors = list(vectors)
    terms = [fulltext.index_text(draft.text) for draft in embedded]  # jieba's work, before any lock
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
        locked = dispatch.held(document).select_for_update()
        if not locked.exists():
            raise _Superseded()
        stored, disabled = chunk_edits.drafts_with_edits(drafts, chunk_edits.edits_by_original(document.pk))
        changed = [index for index, draft in enumerate(stored) if draft.text != embedded[index].text]
        if changed:
            again = embeddings_for(model).embed_documents([stored[index].text for index in changed])
            for index, vector in zip(changed, again, strict=True):
                vectors[index] = vector
                terms[index] = fulltext.index_text(stored[index].text)
        rows = [
            (
                document.knowledge_base_id,
                document.pk,
                generation,
                ordinal,
                draft.text,
                json.dumps(draft.metadata, ensure_ascii=False),
                model.dimensions or 0,
                json.dumps(vector),
                words,
                off,
            )
            for ordinal, (draft, vector, words, off) in enumerate(zip(stored, vectors, terms, disabled, strict=True))
        ]
        cursor.execute("DELETE FROM kb_chunk WHERE document_id = %s AND generation = %s", [document.pk, generation])
        cursor.executemany(
            "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, "
            "embedding, search_vector, disabled, in_vector_index) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, "
            "%s::vector, to_tsvector('simple', %s), %s, %s)",
            [(*row, in_vector_index) for row in rows],
        )


class _Superseded(Exception):
    """This worker's hold on the document ended (lease expired and handed out again)."""


def _fail(
    document: Document, reason: str, timings: dict[str, float], *, expired_before: datetime | None = None
) -> None:
    """Failed with the reason, if this holder still holds it (and, with expired_before, nobody
    renewed its lease since)."""
    failed = dispatch.release_failed(document, reason=reason[:4000], timings=timings, expired_before=expired_before)
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
    dispatch.wait_to_retry(document, delay_s=delay, reason=reason)
    return True


def document_process(*, document_id: int, token: str) -> None:
    """The whole of one ingestion attempt, as the worker runs it."""
    document = dispatch.claim(document_id=document_id, token=token)
    if document is None:
        return
    try:
        with dispatch.lease_heartbeat(document):
            document_ingest(document=document)
    except TransientIngestError as exc:
        document_retry_later(document=document, reason=str(exc))
    except _Superseded:
        logger.info("document %s was handed to another worker meanwhile; dropping this attempt", document_id)
