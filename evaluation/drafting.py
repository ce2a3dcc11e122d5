"""Candidate questions drafted by the team's LLM from chosen documents. They are drafts: nothing
counts until a person accepts (or edits and accepts) them, since a model writes questions that
echo the passage more than users do."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from django.db import transaction
from langchain_core.messages import HumanMessage, SystemMessage

from chat.services import invoke_metered
from evaluation.models import EvaluationItem, EvaluationSet, ItemSource, ItemStatus
from evaluation.services import MAX_QUESTION_CHARS, EvaluationError
from kb.models import Chunk, Document, DocumentStatus
from models_registry.models import ModelKind, ModelRegistration
from models_registry.selectors import team_default_model

logger = logging.getLogger(__name__)

MAX_DRAFT_DOCUMENTS = 20
MAX_PER_DOCUMENT = 5
PASSAGE_CHARS = 1500
DRAFT_MAX_TOKENS = 200

DRAFT_SYSTEM = (
    "You write one question that a user of this documentation would type into a chat assistant, "
    "answered by the passage below. Paraphrase: do not copy phrases from the passage. Reply with "
    'one JSON object and nothing else: {"question": "...", "answer": "<a short exact quote from the '
    'passage that answers it>"}. Write the question in the language of the passage.'
)


def drafting_start(
    *, evaluation_set: EvaluationSet, document_ids: list[int], per_document: int, user_id: int
) -> list[int]:
    """Check the request and queue it on the `llm` queue; the drafts appear as they are written."""
    if not document_ids or len(document_ids) > MAX_DRAFT_DOCUMENTS:
        raise EvaluationError(f"choose 1 to {MAX_DRAFT_DOCUMENTS} documents to draft questions from")
    if not 1 <= per_document <= MAX_PER_DOCUMENT:
        raise EvaluationError(f"per_document must be between 1 and {MAX_PER_DOCUMENT}")
    found = set(
        Document.objects.filter(
            pk__in=document_ids, knowledge_base_id=evaluation_set.knowledge_base_id, status=DocumentStatus.READY
        ).values_list("pk", flat=True)
    )
    missing = sorted(set(document_ids) - found)
    if missing:
        raise EvaluationError(f"documents {missing}: not ready documents of this knowledge base")
    if _llm(evaluation_set) is None:
        raise EvaluationError("the team has no default chat model to draft with: register one first")
    from evaluation.tasks import draft_soon

    chosen = sorted(found)
    transaction.on_commit(lambda: draft_soon(evaluation_set.pk, chosen, per_document, user_id))
    return chosen


def _llm(evaluation_set: EvaluationSet) -> ModelRegistration | None:
    return team_default_model(team=evaluation_set.team, kind=ModelKind.LLM)


def items_draft(*, evaluation_set_id: int, document_ids: list[int], per_document: int, user_id: int) -> int:
    """Draft items (status draft) from evenly spaced passages of each document. Returns how many."""
    evaluation_set = EvaluationSet.objects.select_related("team").filter(pk=evaluation_set_id).first()
    if evaluation_set is None:
        return 0
    llm = _llm(evaluation_set)
    if llm is None:
        return 0
    kb = evaluation_set.knowledge_base
    written = 0
    for document in Document.objects.filter(pk__in=document_ids, knowledge_base=kb):
        # Disabled chunks are never retrieved: a question about one could never be answered.
        chunks = list(
            Chunk.objects.filter(document=document, generation=kb.generation, disabled=False).order_by("ordinal")
        )
        step = max(len(chunks) // per_document, 1)
        for chunk in chunks[::step][:per_document]:
            draft = _draft_one(llm, chunk.text[:PASSAGE_CHARS], team_id=evaluation_set.team_id, user_id=user_id)
            if draft is None:
                continue
            question, answer = draft
            EvaluationItem.objects.create(
                team_id=evaluation_set.team_id,
                evaluation_set=evaluation_set,
                question=question,
                expected_documents=[document.original_name],
                expected_answer=answer,
                status=ItemStatus.DRAFT,
                source=ItemSource.DRAFTED,
            )
            written += 1
    return written


def _draft_one(llm: ModelRegistration, passage: str, *, team_id: int, user_id: int) -> tuple[str, str] | None:
    try:
        reply = invoke_metered(
            llm=llm,
            prompt=[SystemMessage(DRAFT_SYSTEM), HumanMessage(passage)],
            max_tokens=DRAFT_MAX_TOKENS,
            team_id=team_id,
            user_id=user_id,
        )
    except Exception:  # one passage the model fails on must not stop the others
        logger.warning("drafting a question failed for one passage", exc_info=True)
        return None
    return parse_draft(str(reply.content), passage)


def parse_draft(reply: str, passage: str) -> tuple[str, str] | None:
    """(question, answer) from the model's reply; the answer is kept only when it is really in the
    passage (a model paraphrasing its own "quote" would make answer_in_chunk meaningless)."""
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    data: Any = None
    if match:
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            data = None
    if isinstance(data, dict):
        question = str(data.get("question") or "").strip()
        answer = str(data.get("answer") or "").strip()
    else:
        lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
        question, answer = (lines[0] if lines else ""), ""
    if not question or len(question) > MAX_QUESTION_CHARS:
        return None
    collapsed = " ".join(passage.split())
    if not answer or " ".join(answer.split()) not in collapsed:
        answer = ""
    return question, answer[:200]
