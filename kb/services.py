"""Writes: knowledge bases (create, change, rebuild beside the live index, vector indexes) and
documents (upload, reindex, delete). Ingesting a document is kb.ingestion's; handing documents
to workers, with leases, is kb.dispatch's; every task is queued through kb.tasks."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import IO

import openai
from django.conf import settings
from django.core.files import File
from django.db import connection, transaction

from accounts.models import Team
from core.domain_errors import DomainError
from core.unset import UNSET, Unset, given
from evaluation.models import EvaluationItem, ItemStatus
from kb import dispatch
from kb.models import (
    DEFAULT_CHUNK_HEADERS,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SPLITTER,
    Chunk,
    Document,
    DocumentStatus,
    KnowledgeBase,
    RebuildGate,
    Splitter,
    VectorIndex,
)
from kb.splitting import tokenizer_path_for
from kb.storage import storage_reserved
from kb.uploads import IncomingFile, Rejection, receive, workdir
from kb.vector_indexes import indexable, vector_index_build, vector_index_ready, vector_type
from models_registry.models import ModelKind, ModelRegistration
from models_registry.providers.base import ProviderError
from models_registry.services import registration_probe_dimensions

logger = logging.getLogger(__name__)


class KnowledgeBaseError(DomainError):
    pass


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
    chunk_headers: bool = DEFAULT_CHUNK_HEADERS,
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
        chunk_headers=chunk_headers,
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
    chunk_headers: bool | Unset = UNSET,
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
        chunk_headers=chunk_headers,
    )
    rebuild_fields = {"embedding_model", "splitter", "chunk_size", "chunk_overlap", "chunk_headers"}
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
    chunk_headers: bool | None = None,
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
        "chunk_headers": kb.chunk_headers if chunk_headers is None else chunk_headers,
    }
    with transaction.atomic():
        kb = KnowledgeBase.objects.select_for_update().get(pk=kb.pk)
        if kb.rebuilding and kb.rebuild_gate != RebuildGate.HELD:
            raise KnowledgeBaseError("a rebuild of this knowledge base is under way: wait for it to finish")
        # A held rebuild is replaced by the new one.
        kb.rebuild_settings = chosen
        kb.rebuild_gate = RebuildGate.NONE
        kb.rebuild_gate_reason = ""
        kb.save(update_fields=["rebuild_settings", "rebuild_gate", "rebuild_gate_reason", "updated_at"])
        kb.chunks.filter(generation=kb.generation + 1).delete()
        dispatch.requeue(kb.documents.all())
        transaction.on_commit(_dispatch_soon)
        _vector_index_soon(model)
    if not kb.documents.exists():
        kb_finish_rebuild_if_done(kb_id=kb.pk)
        kb.refresh_from_db()
    return kb


def kb_finish_rebuild_if_done(*, kb_id: int) -> bool:
    """Swap to the new generation once no document still needs building. True when it swapped.
    A knowledge base with evaluation questions is scored first (evaluation.gate): the swap waits
    for the gate to pass, and a rebuild that ranks worse is held."""
    with transaction.atomic():
        kb = KnowledgeBase.objects.select_for_update().get(pk=kb_id)
        if not kb.rebuilding or kb.rebuild_gate in (RebuildGate.EVALUATING, RebuildGate.HELD):
            return False
        target = kb.generation + 1
        pending = kb.documents.exclude(status=DocumentStatus.FAILED).exclude(
            status=DocumentStatus.READY, built_generation=target
        )
        if pending.exists():
            return False
        if kb.rebuild_gate != RebuildGate.PASSED and _has_evaluation_questions(kb):
            kb.rebuild_gate = RebuildGate.EVALUATING
            kb.save(update_fields=["rebuild_gate", "updated_at"])
            transaction.on_commit(partial(_gate_soon, kb.pk))
            return False
        assert kb.rebuild_settings is not None
        settings_ = kb.rebuild_settings
        kb.embedding_model_id = settings_["embedding_model_id"]
        kb.splitter = settings_["splitter"]
        kb.chunk_size = settings_["chunk_size"]
        kb.chunk_overlap = settings_["chunk_overlap"]
        kb.chunk_headers = settings_.get("chunk_headers", kb.chunk_headers)
        kb.generation = target
        kb.rebuild_settings = None
        kb.rebuild_gate = RebuildGate.NONE
        kb.rebuild_gate_reason = ""
        kb.save()
        kb.chunks.exclude(generation=target).delete()
    return True


def kb_rebuild_decide(*, kb: KnowledgeBase, swap: bool) -> KnowledgeBase:
    """An admin's decision on a held rebuild: swap to it anyway, or keep the live generation and
    drop what the rebuild built (documents built only for it are built again for the live one)."""
    with transaction.atomic():
        kb = KnowledgeBase.objects.select_for_update().get(pk=kb.pk)
        if kb.rebuild_gate != RebuildGate.HELD:
            raise KnowledgeBaseError("no rebuild of this knowledge base is held: there is nothing to decide")
        if swap:
            kb.rebuild_gate = RebuildGate.PASSED
            kb.save(update_fields=["rebuild_gate", "updated_at"])
        else:
            kb.chunks.filter(generation=kb.generation + 1).delete()
            kb.rebuild_settings = None
            kb.rebuild_gate = RebuildGate.NONE
            kb.rebuild_gate_reason = ""
            kb.save(update_fields=["rebuild_settings", "rebuild_gate", "rebuild_gate_reason", "updated_at"])
            built_for_rebuild = kb.documents.exclude(status=DocumentStatus.FAILED).filter(
                built_generation__gt=kb.generation
            )
            if dispatch.requeue(built_for_rebuild):
                transaction.on_commit(_dispatch_soon)
    if swap:
        kb_finish_rebuild_if_done(kb_id=kb.pk)
    kb.refresh_from_db()
    return kb


def _has_evaluation_questions(kb: KnowledgeBase) -> bool:
    return EvaluationItem.objects.filter(evaluation_set__knowledge_base=kb, status=ItemStatus.ACCEPTED).exists()


def _gate_soon(kb_id: int) -> None:
    from evaluation.tasks import gate_soon

    gate_soon(kb_id)


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


def kb_index_vectors_if_large(*, kb_id: int) -> None:
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
                document.file.save(incoming.stored_as or incoming.name, File(handle), save=False)
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
    dispatch.requeue(Document.objects.filter(pk=document.pk))
    transaction.on_commit(_dispatch_soon)
    document.refresh_from_db()
    return document


def document_replace_file(*, document: Document, incoming: IncomingFile) -> Document:
    """A new version of a document's file (a web page that changed): stored in place of the old
    one, and the document queued to be built again through the usual ingestion, which replaces
    its chunks when it is done (search keeps the old ones until then). The team's storage quota
    counts the new file whole. KnowledgeBaseError when the knowledge base holds this content
    already as another document."""
    with storage_reserved(kb=document.knowledge_base, files=[incoming]), transaction.atomic():
        document = Document.objects.select_for_update().get(pk=document.pk)
        twin = (
            Document.objects.filter(knowledge_base_id=document.knowledge_base_id, sha256=incoming.sha256)
            .exclude(pk=document.pk)
            .first()
        )
        if twin is not None:
            raise KnowledgeBaseError(f"the knowledge base holds this content already, as {twin.original_name}")
        old_name = document.file.name or ""
        with open(incoming.path, "rb") as handle:
            document.file.save(incoming.stored_as or incoming.name, File(handle), save=False)
        document.sha256 = incoming.sha256
        document.size_bytes = incoming.size_bytes
        document.content_type = incoming.kind
        document.save(update_fields=["file", "sha256", "size_bytes", "content_type", "updated_at"])
        dispatch.requeue_replaced(Document.objects.filter(pk=document.pk))
        transaction.on_commit(lambda: _delete_files([old_name]))
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
