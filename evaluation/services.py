"""Writes: evaluation sets and their items (by hand, imported, drafted), runs and what they found,
and the rebuild gate. Scoring is retrieval through kb.retrieval.kb_search, the same search chat
uses, so a run measures what users get."""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import openai
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from chat.models import Message
from core.domain_errors import DomainError
from core.unset import UNSET, Unset, given
from evaluation import metrics
from evaluation.answers import ANSWER_METRICS_KEY, AnswerScore, score_answer, summarize_answers
from evaluation.models import (
    EvaluationItem,
    EvaluationResult,
    EvaluationRun,
    EvaluationSet,
    ItemSource,
    ItemStatus,
    RunStatus,
    RunTrigger,
)
from integrations.models import WebhookEvent
from integrations.services import webhook_emit
from kb.models import ACTIVE_STATUSES, DocumentStatus, KnowledgeBase, RebuildGate, RetrievalMode
from kb.retrieval import SearchRequest, kb_search
from kb.services import kb_finish_rebuild_if_done
from models_registry.models import ModelKind, ModelRegistration
from models_registry.selectors import team_default_model

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
MAX_ANSWER_CHARS = 500
MAX_IMPORT_LINE_CHARS = 8000  # one item is a question and a few names: a longer line is not one
MAX_IMPORT_ITEMS = 5000
GATE_MODE = RetrievalMode.HYBRID  # the mode chat retrieves with by default
GATE_METRIC = "recall@5"
RERANK_SUFFIX = "+rerank"
SNIPPET_CHARS = 240
KEPT_CHUNKS = 5  # per mode and question, for the per-question diff


class EvaluationError(DomainError):
    code = "invalid_evaluation"


# --- sets -------------------------------------------------------------------------------------


def _check_threshold(value: float) -> float:
    if not 0 <= value <= 1:
        raise EvaluationError("gate_threshold must be between 0 and 1 (a drop in recall@5, e.g. 0.02)")
    return value


def evaluation_set_create(
    *, kb: KnowledgeBase, name: str, description: str = "", gate_threshold: float | None = None
) -> EvaluationSet:
    name = name.strip()
    if not name:
        raise EvaluationError("name the evaluation set")
    if EvaluationSet.objects.filter(knowledge_base=kb, name=name).exists():
        raise EvaluationError(f"this knowledge base already has a set named {name!r}: choose another name")
    evaluation_set = EvaluationSet(team_id=kb.team_id, knowledge_base=kb, name=name, description=description)
    if gate_threshold is not None:
        evaluation_set.gate_threshold = _check_threshold(gate_threshold)
    evaluation_set.save()
    return evaluation_set


def evaluation_set_update(
    *,
    evaluation_set: EvaluationSet,
    name: str | Unset = UNSET,
    description: str | Unset = UNSET,
    gate_threshold: float | Unset = UNSET,
) -> EvaluationSet:
    changes = given(name=name, description=description, gate_threshold=gate_threshold)
    if "name" in changes:
        changes["name"] = changes["name"].strip()
        taken = EvaluationSet.objects.filter(knowledge_base_id=evaluation_set.knowledge_base_id, name=changes["name"])
        if not changes["name"] or taken.exclude(pk=evaluation_set.pk).exists():
            raise EvaluationError(f"choose another name: {changes['name']!r} is empty or taken in this knowledge base")
    if "gate_threshold" in changes:
        _check_threshold(changes["gate_threshold"])
    for key, value in changes.items():
        setattr(evaluation_set, key, value)
    evaluation_set.save()
    return evaluation_set


# --- items ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemDraft:
    question: str
    expected_documents: list[str]
    expected_answer: str = ""


def _document_names(kb: KnowledgeBase) -> set[str]:
    return set(kb.documents.values_list("original_name", flat=True))


def item_draft(data: Any, *, known_documents: set[str]) -> ItemDraft:
    """An item's fields checked: a question, one or more expected documents that the knowledge
    base has, an optional short answer. Raises EvaluationError saying what to change."""
    if not isinstance(data, dict):
        raise EvaluationError('an item is an object: {"question", "expected_document", "expected_answer"}')
    unknown = sorted(set(data) - {"question", "expected_document", "expected_answer"})
    if unknown:
        raise EvaluationError(f"unknown fields {', '.join(unknown)}: use question, expected_document, expected_answer")
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        raise EvaluationError("question is missing: write the question as a user would ask it")
    if len(question) > MAX_QUESTION_CHARS:
        raise EvaluationError(f"question is longer than {MAX_QUESTION_CHARS} characters: shorten it")
    expected = data.get("expected_document")
    names = [expected] if isinstance(expected, str) else expected
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise EvaluationError("expected_document is missing: name the document's file (or a list of file names)")
    names = list(dict.fromkeys(name.strip() for name in names))
    missing = [name for name in names if name not in known_documents]
    if missing:
        raise EvaluationError(
            f"unknown document {', '.join(repr(name) for name in missing)}: "
            "use the file name of a document in this knowledge base"
        )
    answer = data.get("expected_answer") or ""
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        raise EvaluationError(f"expected_answer must be a short string (at most {MAX_ANSWER_CHARS} characters)")
    return ItemDraft(question=question.strip(), expected_documents=names, expected_answer=answer.strip())


def item_create(
    *,
    evaluation_set: EvaluationSet,
    data: dict[str, Any],
    source: str = ItemSource.MANUAL,
    status: str = ItemStatus.ACCEPTED,
) -> EvaluationItem:
    draft = item_draft(data, known_documents=_document_names(evaluation_set.knowledge_base))
    return EvaluationItem.objects.create(
        team_id=evaluation_set.team_id,
        evaluation_set=evaluation_set,
        question=draft.question,
        expected_documents=draft.expected_documents,
        expected_answer=draft.expected_answer,
        source=source,
        status=status,
    )


def item_update(*, item: EvaluationItem, data: dict[str, Any], status: str | Unset = UNSET) -> EvaluationItem:
    """Edit an item (the fields given replace the old) and, for a draft, accept it."""
    current = {
        "question": item.question,
        "expected_document": item.expected_documents,
        "expected_answer": item.expected_answer,
    }
    draft = item_draft({**current, **data}, known_documents=_document_names(item.evaluation_set.knowledge_base))
    item.question = draft.question
    item.expected_documents = draft.expected_documents
    item.expected_answer = draft.expected_answer
    if not isinstance(status, Unset):
        if status not in ItemStatus.values:
            raise EvaluationError(f"status must be one of {', '.join(ItemStatus.values)}")
        item.status = status
    item.save()
    return item


def item_delete(*, item: EvaluationItem) -> None:
    """Remove a question (a draft nobody wants, or one that no longer fits). Results of past runs
    keep their copy of it."""
    item.delete()


def item_from_message(*, evaluation_set: EvaluationSet, message: Message) -> EvaluationItem:
    """The question behind an answer someone marked good, expecting the documents of the set's
    knowledge base that the answer cites (a good answer from the right pages is a known good
    retrieval)."""
    if message.role != Message.Role.ASSISTANT or message.feedback != 1:
        raise EvaluationError("only an answer marked good (thumbs up) can become a question: mark it first")
    question = (
        Message.objects.filter(conversation_id=message.conversation_id, pk__lt=message.pk, role=Message.Role.USER)
        .order_by("-pk")
        .values_list("content", flat=True)
        .first()
    )
    cited = [
        citation["document_name"]
        for citation in message.citations
        if citation.get("knowledge_base_id") == evaluation_set.knowledge_base_id and citation.get("document_name")
    ]
    if not question or not cited:
        raise EvaluationError("this answer cites no document of the set's knowledge base: choose another answer")
    return item_create(
        evaluation_set=evaluation_set,
        data={"question": question, "expected_document": list(dict.fromkeys(cited))},
        source=ItemSource.CHAT,
    )


def _import_rows(data: bytes, name: str) -> Iterable[tuple[int, Any]]:
    """(line number, parsed row) of a JSONL or CSV file; a line that does not parse raises,
    naming the line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EvaluationError(f"{name} is not UTF-8 text: save it as UTF-8 JSONL or CSV") from exc
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_IMPORT_LINE_CHARS:
            raise EvaluationError(f"line {number}: longer than {MAX_IMPORT_LINE_CHARS} characters; one item per line")
    if name.lower().endswith(".csv") or (lines and not lines[0].lstrip().startswith("{")):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "question" not in reader.fieldnames:
            raise EvaluationError("line 1: a CSV needs a header with question, expected_document, expected_answer")
        for row in reader:
            row = {key: value for key, value in row.items() if key is not None}
            documents = row.get("expected_document") or ""
            # Several documents in one CSV cell: separated by "|".
            row["expected_document"] = [part for part in documents.split("|") if part.strip()] or documents
            yield reader.line_num, row
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"line {number}: not JSON ({exc.msg}); one JSON object per line") from exc


def items_import(*, evaluation_set: EvaluationSet, data: bytes, name: str) -> list[EvaluationItem]:
    """All or nothing: the first bad line is reported (400, with its number) and nothing is added."""
    known = _document_names(evaluation_set.knowledge_base)
    drafts: list[ItemDraft] = []
    for number, row in _import_rows(data, name):
        try:
            drafts.append(item_draft(row, known_documents=known))
        except EvaluationError as exc:
            raise EvaluationError(f"line {number}: {exc}") from exc
        if len(drafts) > MAX_IMPORT_ITEMS:
            raise EvaluationError(f"more than {MAX_IMPORT_ITEMS} items: split the file")
    if not drafts:
        raise EvaluationError(f"{name} has no items: one JSON object (or CSV row) per question")
    return EvaluationItem.objects.bulk_create(
        [
            EvaluationItem(
                team_id=evaluation_set.team_id,
                evaluation_set=evaluation_set,
                question=draft.question,
                expected_documents=draft.expected_documents,
                expected_answer=draft.expected_answer,
                source=ItemSource.IMPORT,
            )
            for draft in drafts
        ]
    )


# --- runs -------------------------------------------------------------------------------------


def _check_modes(modes: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(modes))
    unknown = [mode for mode in chosen if mode not in RetrievalMode.values]
    if not chosen or unknown:
        raise EvaluationError(f"modes: choose one or more of {', '.join(RetrievalMode.values)}")
    return chosen


def accepted_items(evaluation_set: EvaluationSet) -> QuerySet[EvaluationItem]:
    return evaluation_set.items.filter(status=ItemStatus.ACCEPTED).order_by("pk")


def run_start(
    *,
    evaluation_set: EvaluationSet,
    modes: Sequence[str] = (RetrievalMode.HYBRID, RetrievalMode.VECTOR, RetrievalMode.FULLTEXT),
    top_k: int = 10,
    rerank_model: ModelRegistration | None = None,
    trigger: str = RunTrigger.MANUAL,
    created_by: User | None = None,
    answer_scoring: bool = False,
    answer_model: ModelRegistration | None = None,
) -> EvaluationRun:
    """A run queued for a worker: on the `default` queue, or on `llm` beside chat when a model
    answers too (answer scoring: `answer_model`, else the team's default chat model)."""
    if answer_scoring and (created_by is None or (answer_model or _team_chat_model(evaluation_set)) is None):
        raise EvaluationError("answer scoring needs the team's default chat model and a person who asks for it")
    run = run_create(
        evaluation_set=evaluation_set,
        modes=modes,
        top_k=top_k,
        rerank_model=rerank_model,
        trigger=trigger,
        created_by=created_by,
        answer_scoring=answer_scoring,
        answer_model=answer_model,
    )
    transaction.on_commit(partial(_execute_soon, run.pk, answer_scoring))
    return run


def _team_chat_model(evaluation_set: EvaluationSet) -> ModelRegistration | None:
    return team_default_model(team=evaluation_set.team, kind=ModelKind.LLM)


def _answer_model(run: EvaluationRun) -> ModelRegistration | None:
    return run.answer_model or _team_chat_model(run.evaluation_set)


def run_create(
    *,
    evaluation_set: EvaluationSet,
    modes: Sequence[str],
    top_k: int,
    rerank_model: ModelRegistration | None = None,
    trigger: str = RunTrigger.MANUAL,
    created_by: User | None = None,
    candidate_generation: int | None = None,
    answer_scoring: bool = False,
    answer_model: ModelRegistration | None = None,
) -> EvaluationRun:
    if not 1 <= top_k <= 100:
        raise EvaluationError("top_k must be between 1 and 100")
    if rerank_model is not None and (
        rerank_model.team_id != evaluation_set.team_id or rerank_model.kind != ModelKind.RERANK
    ):
        raise EvaluationError(f"rerank_model: no rerank model with id {rerank_model.pk} in this team")
    if answer_model is not None and (
        answer_model.team_id != evaluation_set.team_id or answer_model.kind != ModelKind.LLM
    ):
        raise EvaluationError(f"answer_model: no chat model with id {answer_model.pk} in this team")
    if not accepted_items(evaluation_set).exists():
        raise EvaluationError("the set has no accepted questions: add or accept some first")
    kb = evaluation_set.knowledge_base
    return EvaluationRun.objects.create(
        team_id=evaluation_set.team_id,
        evaluation_set=evaluation_set,
        knowledge_base=kb,
        modes=_check_modes(modes),
        top_k=top_k,
        rerank_model=rerank_model,
        trigger=trigger,
        generation=kb.generation,
        candidate_generation=candidate_generation,
        created_by=created_by,
        answer_scoring=answer_scoring,
        answer_model=answer_model,
    )


def _execute_soon(run_id: int, on_llm_queue: bool = False) -> None:
    from evaluation.tasks import execute_soon

    execute_soon(run_id, on_llm_queue=on_llm_queue)


def knowledge_base_at(kb: KnowledgeBase, generation: int) -> KnowledgeBase:
    """An unsaved copy of `kb` that search reads at `generation`, with the embedding model that
    generation was built with (a rebuild's may differ from the live one's)."""
    view = copy.copy(kb)
    view.generation = generation
    if generation != kb.generation and kb.rebuild_settings is not None:
        view.embedding_model = ModelRegistration.objects.select_related("provider").get(
            pk=kb.rebuild_settings["embedding_model_id"]
        )
    return view


def _claim(run_id: int) -> EvaluationRun | None:
    """The run, marked running; None when it is done, failed or gone. A run found running was
    left by a worker that died: it starts over (its partial results are dropped)."""
    with transaction.atomic():
        run = (
            EvaluationRun.objects.select_for_update(of=("self",))
            .select_related(
                "evaluation_set",
                "knowledge_base__embedding_model__provider",
                "rerank_model__provider",
                "answer_model__provider",
            )
            .filter(pk=run_id, status__in=(RunStatus.QUEUED, RunStatus.RUNNING))
            .first()
        )
        if run is None:
            return None
        run.results.all().delete()
        run.status = RunStatus.RUNNING
        run.progress = 0
        run.started_at = timezone.now()
        run.save(update_fields=["status", "progress", "started_at"])
    return run


def _search(view: KnowledgeBase, question: str, mode: str, run: EvaluationRun) -> tuple[list[Any], float]:
    rerank = run.rerank_model if mode.endswith(RERANK_SUFFIX) else None
    started = time.perf_counter()
    hits = kb_search(
        knowledge_bases=[view],
        request=SearchRequest(
            query=question, top_k=run.top_k, mode=mode.removesuffix(RERANK_SUFFIX), rerank_model=rerank
        ),
    )
    return hits, (time.perf_counter() - started) * 1000


def scored_modes(run: EvaluationRun) -> list[str]:
    """The run's modes, each also with rerank when the run names a rerank model."""
    if run.rerank_model is None:
        return list(run.modes)
    return [variant for mode in run.modes for variant in (mode, mode + RERANK_SUFFIX)]


def run_execute(*, run_id: int, on_progress: Callable[[int, int], None] | None = None) -> EvaluationRun | None:
    """Score every accepted question of the set in each mode, store each question's result and
    the metrics, then say so (webhooks). A model that does not answer fails the run, saying so.
    `on_progress(done, total)` follows each question (kb_eval's progress bar)."""
    run = _claim(run_id)
    if run is None:
        return None
    kb = run.knowledge_base
    scored = knowledge_base_at(kb, run.candidate_generation or run.generation)
    baseline = knowledge_base_at(kb, run.generation) if run.candidate_generation else None
    modes = scored_modes(run)
    items = list(accepted_items(run.evaluation_set))
    outcomes: dict[str, list[metrics.QuestionOutcome]] = {mode: [] for mode in modes}
    baseline_outcomes: list[metrics.QuestionOutcome] = []
    results: list[EvaluationResult] = []
    answer_scores: list[AnswerScore] = []
    llm = _answer_model(run) if run.answer_scoring and run.created_by_id else None
    try:
        for index, item in enumerate(items, start=1):
            result = EvaluationResult(
                run=run,
                item=item,
                question=item.question,
                expected_documents=item.expected_documents,
                expected_answer=item.expected_answer,
            )
            first_hits: list[Any] = []
            for mode in modes:
                hits, latency = _search(scored, item.question, mode, run)
                first_hits = first_hits or hits
                outcome = _outcome(hits, item, latency)
                outcomes[mode].append(outcome)
                result.ranks[mode] = outcome.rank
                result.answer_found[mode] = outcome.answer_found
                result.latencies_ms[mode] = round(latency, 1)
                result.retrieved[mode] = [
                    {"document": hit.document_name, "chunk_id": hit.chunk_id, "text": hit.text[:SNIPPET_CHARS]}
                    for hit in hits[:KEPT_CHUNKS]
                ]
            if llm is not None:
                scored_answer = score_answer(
                    llm=llm,
                    question=item.question,
                    sources=[(hit.document_name, hit.text) for hit in first_hits],
                    expected_documents=item.expected_documents,
                    expected_answer=item.expected_answer,
                    team_id=run.team_id,
                    user_id=int(run.created_by_id or 0),
                )
                answer_scores.append(scored_answer)
                result.answer = scored_answer.as_json()
            if baseline is not None:
                hits, latency = _search(baseline, item.question, modes[0], run)
                baseline_outcomes.append(_outcome(hits, item, latency))
            results.append(result)
            _report_progress(run, index, len(items))
            if on_progress is not None:
                on_progress(index, len(items))
    except DomainError as exc:
        return _fail(run, f"the search failed: {exc}")
    except openai.APIError as exc:
        return _fail(run, f"the chat model did not answer ({type(exc).__name__}: {exc}); run it again when it does")
    EvaluationResult.objects.bulk_create(results)
    run.metrics = {mode: metrics.summarize(found) for mode, found in outcomes.items()}
    if llm is not None:
        run.metrics[ANSWER_METRICS_KEY] = summarize_answers(answer_scores)
    if baseline is not None:
        run.baseline_metrics = {modes[0]: metrics.summarize(baseline_outcomes)}
    run.document_count = kb.documents.filter(status=DocumentStatus.READY).count()
    run.regression = _regression(run)
    run.regressed = bool(run.regression)
    run.status = RunStatus.DONE
    run.progress = 100
    run.finished_at = timezone.now()
    run.save()
    _announce(run)
    return run


def _outcome(hits: Sequence[Any], item: EvaluationItem, latency_ms: float) -> metrics.QuestionOutcome:
    documents = [hit.document_name for hit in hits]
    return metrics.QuestionOutcome(
        rank=metrics.first_rank(documents, item.expected_documents),
        ndcg=metrics.ndcg(documents, item.expected_documents),
        answer_found=metrics.answer_found([hit.text for hit in hits], item.expected_answer),
        latency_ms=latency_ms,
    )


def _report_progress(run: EvaluationRun, done: int, total: int) -> None:
    percent = done * 100 // total
    if percent > run.progress and (percent - run.progress >= 5 or done == total):
        run.progress = min(percent, 99)
        EvaluationRun.objects.filter(pk=run.pk).update(progress=run.progress)


def _fail(run: EvaluationRun, reason: str) -> EvaluationRun:
    run.status = RunStatus.FAILED
    run.error = reason[:4000]
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "error", "finished_at"])
    return run


def previous_run(run: EvaluationRun) -> EvaluationRun | None:
    """The set's last finished run before this one that scored at least one mode in common."""
    earlier = EvaluationRun.objects.filter(
        evaluation_set_id=run.evaluation_set_id, status=RunStatus.DONE, pk__lt=run.pk
    ).order_by("-pk")
    for candidate in earlier[:20]:
        if set(candidate.metrics) & set(run.metrics):
            return candidate
    return None


def _drops(before: dict[str, Any], after: dict[str, Any], threshold: float) -> list[str]:
    falls = []
    for mode in sorted(set(before) & set(after)):
        old, new = before[mode].get(GATE_METRIC), after[mode].get(GATE_METRIC)
        if old is not None and new is not None and old - new > threshold + 1e-9:
            falls.append(f"{GATE_METRIC} ({mode}) fell from {old:.3f} to {new:.3f}")
    return falls


def _regression(run: EvaluationRun) -> str:
    """What fell beyond the set's threshold: against the live generation for a rebuild's gate
    run, else against the set's previous run. Empty when nothing did."""
    threshold = run.evaluation_set.gate_threshold
    if run.baseline_metrics is not None:
        before, against = run.baseline_metrics, "the live generation"
    else:
        previous = previous_run(run)
        if previous is None:
            return ""
        before, against = previous.metrics, f"run {previous.pk}"
    falls = _drops(before, run.metrics, threshold)
    if not falls:
        return ""
    return f"set {run.evaluation_set.name!r}: {'; '.join(falls)} against {against} (threshold {threshold:g})"


def _announce(run: EvaluationRun) -> None:
    payload = {
        "run_id": run.pk,
        "evaluation_set_id": run.evaluation_set_id,
        "knowledge_base_id": run.knowledge_base_id,
        "trigger": run.trigger,
        "metrics": run.metrics,
        "regression": run.regression,
    }
    webhook_emit(team_id=run.team_id, event=WebhookEvent.EVALUATION_COMPLETED, payload=payload)
    if run.regressed:
        webhook_emit(team_id=run.team_id, event=WebhookEvent.EVALUATION_REGRESSED, payload=payload)


# --- automatic runs ---------------------------------------------------------------------------


def rebuild_trigger(kb: KnowledgeBase) -> str:
    """What a rebuild changes: the embedding model, the chunking, or nothing (a plain rebuild)."""
    chosen = kb.rebuild_settings or {}
    if chosen.get("embedding_model_id") != kb.embedding_model_id:
        return RunTrigger.MODEL
    chunking = ("splitter", "chunk_size", "chunk_overlap", "chunk_headers")
    if any(key in chosen and chosen[key] != getattr(kb, key) for key in chunking):
        return RunTrigger.SETTINGS
    return RunTrigger.REBUILD


def gate_execute(*, kb_id: int) -> None:
    """Score a built rebuild against the live generation on every set with questions, then swap
    (kb.services.kb_finish_rebuild_if_done) or hold it, saying why on the knowledge base."""
    kb = KnowledgeBase.objects.filter(pk=kb_id, rebuild_gate=RebuildGate.EVALUATING).first()
    if kb is None:
        return
    candidate = kb.generation + 1
    runs = [
        run_create(
            evaluation_set=evaluation_set,
            modes=[GATE_MODE],
            top_k=10,
            trigger=rebuild_trigger(kb),
            candidate_generation=candidate,
        )
        for evaluation_set in kb.evaluation_sets.all()
        if accepted_items(evaluation_set).exists()
    ]
    finished = [run_execute(run_id=run.pk) for run in runs]
    reasons = [
        run.regression if run.status == RunStatus.DONE else f"the evaluation could not run: {run.error}"
        for run in finished
        if run is not None and (run.regressed or run.status == RunStatus.FAILED)
    ]
    with transaction.atomic():
        kb = KnowledgeBase.objects.select_for_update().get(pk=kb_id)
        if kb.rebuild_gate != RebuildGate.EVALUATING or kb.generation + 1 != candidate:
            return  # replaced or decided meanwhile
        if reasons:
            kb.rebuild_gate = RebuildGate.HELD
            kb.rebuild_gate_reason = (
                "The rebuild is held and search still reads the live generation: "
                + " | ".join(reasons)
                + ". An admin may swap to it anyway or keep the live one."
            )
        else:
            kb.rebuild_gate = RebuildGate.PASSED
        kb.save(update_fields=["rebuild_gate", "rebuild_gate_reason", "updated_at"])
    if not reasons:
        kb_finish_rebuild_if_done(kb_id=kb_id)


def after_import(*, kb_id: int) -> list[EvaluationRun]:
    """Once an import is fully ingested: a run for each set whose knowledge base has grown by more
    than EVALUATION_IMPORT_SHARE since the set's last run (documents added can crowd out the
    right ones)."""
    kb = KnowledgeBase.objects.filter(pk=kb_id).first()
    if kb is None or kb.rebuilding or kb.documents.filter(status__in=ACTIVE_STATUSES).exists():
        return []
    ready = kb.documents.filter(status=DocumentStatus.READY).count()
    started = []
    for evaluation_set in kb.evaluation_sets.all():
        with transaction.atomic():
            locked = EvaluationSet.objects.select_for_update().get(pk=evaluation_set.pk)
            runs = locked.runs.all()
            if runs.filter(status__in=(RunStatus.QUEUED, RunStatus.RUNNING)).exists():
                continue
            last = runs.filter(status=RunStatus.DONE, candidate_generation__isnull=True).first()
            if last is None or ready <= last.document_count * (1 + settings.EVALUATION_IMPORT_SHARE):
                continue
            started.append(
                run_start(evaluation_set=locked, modes=last.modes, top_k=last.top_k, trigger=RunTrigger.IMPORT)
            )
    return started


# --- history ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionChange:
    question: str
    expected_documents: list[str]
    rank_before: int | None
    rank_after: int | None
    retrieved_before: list[dict[str, Any]]
    retrieved_after: list[dict[str, Any]]

    @property
    def worse(self) -> bool:
        return _rank_value(self.rank_after) > _rank_value(self.rank_before)


def _rank_value(rank: int | None) -> float:
    return float("inf") if rank is None else rank


def runs_diff(*, before: EvaluationRun, after: EvaluationRun, mode: str) -> list[QuestionChange]:
    """Per question asked in both runs (matched by text), the ranks that changed in `mode`,
    worst first, with the chunks each run returned."""
    earlier = {result.question: result for result in before.results.all()}
    changes = []
    for result in after.results.all():
        old = earlier.get(result.question)
        if old is None or mode not in result.ranks or mode not in old.ranks:
            continue
        if old.ranks[mode] == result.ranks[mode]:
            continue
        changes.append(
            QuestionChange(
                question=result.question,
                expected_documents=result.expected_documents,
                rank_before=old.ranks[mode],
                rank_after=result.ranks[mode],
                retrieved_before=old.retrieved.get(mode, []),
                retrieved_after=result.retrieved.get(mode, []),
            )
        )
    return sorted(changes, key=lambda change: (not change.worse, change.question))
