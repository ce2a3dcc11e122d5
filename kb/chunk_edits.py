"""A member's corrections to a document's chunks (kb.models.ChunkEdit): disable a chunk (kept and
shown, never retrieved) or correct its text (re-embedded, and its full-text terms recomputed).

An edit is keyed by the SHA-256 of the chunk's original text: exactly what the splitter produced,
chunk header included (kb.splitting). Every build of the document (reindex, rebuild) looks its
drafts up by that hash before embedding, so a corrected chunk is embedded once, with the corrected
text, and stays disabled; an edit whose original no longer comes out of the splitter (other chunk
settings) matches nothing and is listed as not applied until someone deletes it. Chunks of one
document with the same original text share one edit.

A chunk does not record its edit: a chunk is the edit's when its text hashes to the edit's
original (not corrected, or disabled only) or equals the edit's corrected text. A correction
that repeats another chunk's text is refused, so the two never mix up.

Writes lock the document's row, as a build's store does (kb.ingestion._replace_chunks): an edit
and a build of the same document take turns, and neither misses the other."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import openai
from django.db import connection, transaction
from django.db.models import CharField, Exists, Func, OuterRef, QuerySet
from django.utils import timezone

from accounts.models import User
from core.domain_errors import DomainError, ModelUnavailable, model_call_error
from kb import fulltext
from kb.models import Chunk, ChunkEdit, Document, KnowledgeBase
from kb.splitting import ChunkDraft
from models_registry.langchain_models import embeddings_for
from models_registry.models import ModelRegistration
from models_registry.providers.base import ProviderError

# A corrected chunk is still one passage: longer than this, it belongs in the document.
CHUNK_TEXT_MAX_CHARS = 20_000


class ChunkEditError(DomainError):
    code = "invalid_chunk_edit"


class ChunkChanged(DomainError):
    """The chunk went away between reading and writing (a rebuild swapped, a reindex replaced it)."""

    status_code = 409
    code = "chunk_changed"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextSha256(Func):
    """The SHA-256 of a text column, in hex, as text_sha256 computes it (PostgreSQL's own sha256:
    Django's SHA256 needs the pgcrypto extension)."""

    template = "encode(sha256(convert_to(%(expressions)s, 'UTF8')), 'hex')"
    output_field = CharField()


# --- reads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkView:
    """A chunk as a person sees it: with its edit, when it has one."""

    chunk: Chunk
    edit: ChunkEdit | None

    @property
    def edited(self) -> bool:
        """The text is a member's correction (not the splitter's)."""
        return self.edit is not None and bool(self.edit.text) and self.chunk.text == self.edit.text

    @property
    def original_text(self) -> str | None:
        return self.edit.original_text if self.edited and self.edit is not None else None


def edit_of(chunk: Chunk, edits: Iterable[ChunkEdit]) -> ChunkEdit | None:
    """The edit a chunk carries, among its document's edits."""
    edits = list(edits)
    for edit in edits:
        if edit.text and edit.text == chunk.text:
            return edit
    sha = text_sha256(chunk.text)
    return next((edit for edit in edits if edit.original_sha256 == sha), None)


def chunk_views(*, document: Document, chunks: Sequence[Chunk]) -> list[ChunkView]:
    edits = list(ChunkEdit.objects.filter(document=document))
    by_text = {edit.text: edit for edit in edits if edit.text}
    by_sha = {edit.original_sha256: edit for edit in edits}
    return [ChunkView(chunk, by_text.get(chunk.text) or by_sha.get(text_sha256(chunk.text))) for chunk in chunks]


def chunk_view(chunk: Chunk) -> ChunkView:
    return chunk_views(document=chunk.document, chunks=[chunk])[0]


def document_chunks(*, document: Document) -> QuerySet[Chunk]:
    """The chunks search reads of this document: its knowledge base's live generation."""
    return Chunk.objects.filter(document=document, generation=document.knowledge_base.generation).order_by("ordinal")


def chunk_edits_with_state(*, document: Document, applied: bool | None = None) -> QuerySet[ChunkEdit]:
    """The document's edits, each annotated `applied`: whether a chunk of the live generation
    carries it (false when the splitter no longer produces its original); only those applied or
    not when `applied` says which."""
    live = Chunk.objects.filter(document_id=OuterRef("document_id"), generation=document.knowledge_base.generation)
    original_there = Exists(live.annotate(sha=TextSha256("text")).filter(sha=OuterRef("original_sha256")))
    corrected_there = Exists(live.filter(text=OuterRef("text")))  # a chunk's text is never empty
    edits = (
        ChunkEdit.objects.filter(document=document)
        .select_related("edited_by")
        .annotate(applied=original_there | corrected_there)
    )
    return edits if applied is None else edits.filter(applied=applied)


# --- builds -----------------------------------------------------------------------------------


def edits_by_original(document_id: int) -> dict[str, tuple[str, bool]]:
    """original_sha256 -> (corrected text or "", disabled), for a build of the document."""
    rows = ChunkEdit.objects.filter(document_id=document_id).values_list("original_sha256", "text", "disabled")
    return {sha: (text, disabled) for sha, text, disabled in rows}


def drafts_with_edits(
    drafts: Sequence[ChunkDraft], edits: dict[str, tuple[str, bool]]
) -> tuple[list[ChunkDraft], list[bool]]:
    """The splitter's drafts as they are stored: corrected texts in place of the originals, and
    whether each is disabled."""
    stored: list[ChunkDraft] = []
    disabled: list[bool] = []
    for draft in drafts:
        text, off = edits.get(text_sha256(draft.text), ("", False)) if edits else ("", False)
        stored.append(ChunkDraft(text, draft.metadata) if text else draft)
        disabled.append(off)
    return stored, disabled


# --- writes -----------------------------------------------------------------------------------


def chunk_edit(
    *,
    chunk: Chunk,
    user: User | None,
    text: str | None = None,
    disabled: bool | None = None,
    revert: bool = False,
) -> Chunk:
    """Correct a chunk's text (`text`), restore the splitter's (`revert`, or a text equal to the
    original) and/or turn it off or on (`disabled`). The chunk and every chunk of its document
    with the same original text, in the live generation and in a rebuild's under way, take the
    change; the edit is recorded (or deleted when nothing is left of it) for the next builds.
    The new text is embedded with the knowledge base's model first: when it does not answer,
    a 503 and nothing changed."""
    if text is None and disabled is None and not revert:
        raise ChunkEditError("nothing to change: send the corrected `text`, `disabled`, or `revert`")
    if revert and text is not None:
        raise ChunkEditError("send either a corrected `text` or `revert` (back to the original text), not both")
    document = Document.objects.select_related("knowledge_base__embedding_model__provider").get(pk=chunk.document_id)
    edit = edit_of(chunk, document.chunk_edits.all())
    original = edit.original_text if edit is not None else chunk.text
    if revert:
        corrected = ""
    elif text is not None:
        corrected = _checked_text(text, original, document=document)
    else:
        corrected = edit.text if edit is not None else ""
    if disabled is None:
        disabled = edit.disabled if edit is not None else chunk.disabled
    _apply(document=document, original=original, corrected=corrected, disabled=disabled, user=user, chunk_id=chunk.pk)
    return Chunk.objects.select_related("document", "knowledge_base").get(pk=chunk.pk)


def chunk_edit_delete(*, edit: ChunkEdit) -> None:
    """Forget an edit; the chunks that carry it get their original text (re-embedded) and are
    enabled again. 503 and nothing changed when the embedding model does not answer."""
    document = Document.objects.select_related("knowledge_base__embedding_model__provider").get(pk=edit.document_id)
    _apply(document=document, original=edit.original_text, corrected="", disabled=False, user=None, chunk_id=None)


def _checked_text(text: str, original: str, *, document: Document) -> str:
    """The corrected text as stored ("" when it is the original again), or a 400 saying why not."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise ChunkEditError(
            "the corrected text is empty: write the passage as it should read, or disable the chunk to hide it"
        )
    if len(text) > CHUNK_TEXT_MAX_CHARS:
        raise ChunkEditError(
            f"the corrected text has {len(text):,} characters, more than a chunk may hold "
            f"({CHUNK_TEXT_MAX_CHARS:,}): shorten it, or correct the document itself and upload it again"
        )
    if text == original:
        return ""
    sha = text_sha256(original)
    current = ChunkEdit.objects.filter(document=document, original_sha256=sha).values_list("text", flat=True).first()
    own = [chunk_id for chunk_id, _, _ in _targets(document.pk, sha, current or "")]
    if document_chunks(document=document).filter(text=text).exclude(pk__in=own).exists():
        raise ChunkEditError(
            "another chunk of this document reads exactly like this already: "
            "disable this chunk instead of repeating that one"
        )
    return text


def _apply(
    *, document: Document, original: str, corrected: str, disabled: bool, user: User | None, chunk_id: int | None
) -> None:
    kb = document.knowledge_base
    sha = text_sha256(original)
    final = corrected or original
    # Embedded before the lock, for the generations whose chunks change text.
    current = ChunkEdit.objects.filter(document=document, original_sha256=sha).first()
    vectors = _vectors_for(kb, _targets(document.pk, sha, current.text if current else ""), final, {})
    with transaction.atomic():
        if not Document.objects.select_for_update().filter(pk=document.pk).exists():
            raise ChunkChanged("the document was deleted meanwhile")
        # Which generation is live, and which model a rebuild under way embeds with, as of now.
        kb = KnowledgeBase.objects.select_related("embedding_model__provider").get(pk=kb.pk)
        current = ChunkEdit.objects.filter(document=document, original_sha256=sha).first()
        targets = _targets(document.pk, sha, current.text if current else "")
        if chunk_id is not None and chunk_id not in {chunk_id_ for chunk_id_, _, _ in targets}:
            raise ChunkChanged(
                "this chunk was replaced meanwhile (the document was rebuilt or changed): reload the page and edit "
                "the new chunk"
            )
        # A build stored its chunks meanwhile (rare): embed for it too, under the lock.
        vectors = _vectors_for(kb, targets, final, vectors)
        if not corrected and not disabled:
            ChunkEdit.objects.filter(document=document, original_sha256=sha).delete()
        elif current is None:
            ChunkEdit.objects.create(
                document=document,
                team_id=document.team_id,
                original_sha256=sha,
                original_text=original,
                text=corrected,
                disabled=disabled,
                edited_by=user,
            )
        else:
            current.text, current.disabled = corrected, disabled
            if user is not None:
                current.edited_by = user
            current.save(update_fields=["text", "disabled", "edited_by", "updated_at"])
        _write_chunks(kb, targets, final, disabled, vectors)
        # The document changed: search's kept term counts are versioned by its updated_at.
        Document.objects.filter(pk=document.pk).update(updated_at=timezone.now())


def _targets(document_id: int, sha: str, corrected: str) -> list[tuple[int, int, str]]:
    """(id, generation, text) of the document's chunks whose original is `sha`: those still
    holding it, and those holding its correction."""
    chunks = Chunk.objects.filter(document_id=document_id).annotate(sha=TextSha256("text"))
    matching = chunks.filter(sha=sha)
    if corrected:
        matching = matching | chunks.filter(text=corrected)
    return list(matching.order_by("pk").values_list("pk", "generation", "text"))


def _model_id_for(kb: KnowledgeBase, generation: int) -> int:
    """The model a generation's chunks are embedded with: a rebuild's own, or the live one."""
    if generation == kb.generation + 1 and kb.rebuild_settings is not None:
        return int(kb.rebuild_settings["embedding_model_id"])
    return kb.embedding_model_id


def _vectors_for(
    kb: KnowledgeBase, targets: list[tuple[int, int, str]], final: str, known: dict[int, list[float]]
) -> dict[int, list[float]]:
    """`final`'s embedding by each model whose chunks among `targets` change text, by model id."""
    vectors = dict(known)
    for generation in sorted({generation for _, generation, text in targets if text != final}):
        model_id = _model_id_for(kb, generation)
        if model_id not in vectors:
            model = (
                kb.embedding_model
                if model_id == kb.embedding_model_id
                else ModelRegistration.objects.select_related("provider").get(pk=model_id)
            )
            vectors[model_id] = _embed(model, final)
    return vectors


def _embed(model: ModelRegistration, text: str) -> list[float]:
    try:
        (vector,) = embeddings_for(model).embed_documents([text])
    except (openai.APIError, ProviderError) as exc:
        error = model_call_error(exc, model.name)
        if isinstance(error, ModelUnavailable):
            error = ModelUnavailable(
                f"the embedding model {model.name} did not answer ({type(exc).__name__}: {exc}), so nothing was "
                "changed: try again when it runs"
            )
        raise error from exc
    if len(vector) != model.dimensions:
        raise ChunkEditError(
            f"{model.name} returned {len(vector)}-dimensional embeddings but is registered with {model.dimensions}: "
            "correct the registration"
        )
    return vector


def _write_chunks(
    kb: KnowledgeBase, targets: list[tuple[int, int, str]], final: str, disabled: bool, vectors: dict[int, list[float]]
) -> None:
    terms = fulltext.index_text(final)
    with connection.cursor() as cursor:
        for chunk_id, generation, text in targets:
            if text == final:
                cursor.execute("UPDATE kb_chunk SET disabled = %s WHERE id = %s", [disabled, chunk_id])
                continue
            vector = vectors[_model_id_for(kb, generation)]
            cursor.execute(
                "UPDATE kb_chunk SET text = %s, embedding = %s::vector, search_vector = to_tsvector('simple', %s), "
                "disabled = %s WHERE id = %s",
                [final, json.dumps(vector), terms, disabled, chunk_id],
            )
