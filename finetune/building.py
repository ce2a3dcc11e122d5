"""Building a dataset (a Celery task runs `dataset_build`): read the team's messages in
conversation order, pair each answer with its question, leave out what the filters and the
cleaning drop (counting why), scrub personal data, write rows to a file as they come, and store
one zip with the data file, LLaMA-Factory's `dataset_info.json` where it applies, and
`report.json` with the counts.

Memory stays flat however many messages the team has: messages are read through a server-side
cursor in chunks (`.iterator(chunk_size=...)`), a conversation's history holds its last
MAX_HISTORY_TURNS turns, rows go straight to a temporary file, duplicates are found through a
SQLite file and a fixed-size MinHash index (finetune.dedup), and preference pairs are grouped by
question in SQLite, not in a dict.

Where the rows come from:
- supervised formats: every answer (with a question before it) whose status is complete and
  that is not 👎, or only 👍 ones with `feedback: positive`; a gold answer, where a reviewer
  wrote one, replaces the text and counts as 👍. Earlier turns of the conversation go into the
  row's history when their own answer would be usable (complete, not 👎);
- dpo: regenerating an answer deletes the one it replaces (chat.services.turn_prepare), so one
  conversation never holds two answers to a question. Pairs come from (1) a gold answer (chosen)
  written over a 👎 answer (rejected), and (2) a 👍 and a 👎 answer to the same question, asked
  in any of the dataset's conversations (the same words once normalized). At most
  MAX_PAIRS_PER_QUESTION pairs a question. The `feedback` filter does not apply (a pair needs both);
  the prompt is the question alone;
- retrieval_triples: answers with cited sources; the query is the retrieval query the assistant
  searched with (a follow-up rewritten to stand alone), else the question; each cited chunk still
  stored is a positive; hard negatives are the chunks of the same knowledge base that full-text
  search ranks highest for the query, less the cited ones (a database query each, no model call)."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import uuid
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from celery.exceptions import SoftTimeLimitExceeded
from django.core.files import File
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Role, User
from chat.models import Assistant, Message, MessageStatus
from core.domain_errors import DomainError
from finetune import formats
from finetune.dedup import ExactDuplicates, NearDuplicates, fingerprint, normalize
from finetune.models import Dataset, DatasetFormat, DatasetStatus
from finetune.scrub import ScrubCounts, scrub
from finetune.selectors import conversations_in_scope
from finetune.services import DatasetError, Selection, builder_role, dataset_archive_name, selection_parse
from kb.models import Chunk, KnowledgeBase, RetrievalMode
from kb.retrieval import SearchRequest, kb_search

logger = logging.getLogger(__name__)

CHUNK_SIZE = 2_000  # messages fetched per round trip of the server-side cursor
PROGRESS_EVERY = 1_000  # messages between progress reports
PREVIEW_ROWS = 5
MAX_PAIRS_PER_QUESTION = 4
HARD_NEGATIVES = 3
HELD_BACK_FILE = "heldout.jsonl"
UNFINISHED = (MessageStatus.FAILED, MessageStatus.STOPPED, MessageStatus.STREAMING)


class BuildSuperseded(Exception):
    """The dataset was deleted while it was being built, or another worker took the build over."""


@dataclass
class Tally:
    messages_read: int = 0
    kept: int = 0
    held_back: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    scrubbed: ScrubCounts = field(default_factory=ScrubCounts)

    def as_json(self) -> dict[str, Any]:
        return {
            "messages_read": self.messages_read,
            "kept": self.kept,
            "held_back": self.held_back,
            "dropped": dict(sorted(self.dropped.items())),
            "scrubbed": self.scrubbed.as_dict(),
        }


@dataclass
class Answer:
    """An assistant message with the question before it (the conversation's last user message)."""

    message_id: int
    conversation_id: int
    assistant_id: int
    question: str | None
    content: str
    gold: str | None
    status: str
    feedback: int
    created_at: Any
    citations: list[dict[str, Any]]
    retrieval_query: str

    @property
    def text(self) -> str:
        return self.gold if self.gold is not None else self.content


# --- the task's entry point -------------------------------------------------------------------


def dataset_build(*, dataset_id: int) -> Dataset | None:
    """Build the dataset; a failure is recorded on it (status failed, the reason in `error`)."""
    dataset = _claim(dataset_id)
    if dataset is None:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="dataset-") as folder:
            builder = Builder(dataset, Path(folder))
            builder.run()
            return _finish(dataset, builder)
    except BuildSuperseded:
        logger.info("dataset %s was deleted or taken over by another worker while it was being built", dataset_id)
        return None
    except SoftTimeLimitExceeded:
        return _fail(dataset, "the build took longer than the worker's time limit: narrow the filters")
    except DomainError as exc:
        return _fail(dataset, str(exc))
    except Exception as exc:
        logger.exception("dataset %s failed to build", dataset_id)
        return _fail(dataset, f"the build failed ({type(exc).__name__}: {exc}); build it again")


def _claim(dataset_id: int) -> Dataset | None:
    """The dataset, marked building; None when it is ready, failed or gone. One found building
    was left by a worker that died: it starts over."""
    with transaction.atomic():
        dataset = (
            Dataset.objects.select_for_update(of=("self",))
            .select_related("team", "created_by")
            .filter(pk=dataset_id, status__in=(DatasetStatus.QUEUED, DatasetStatus.BUILDING))
            .first()
        )
        if dataset is None:
            return None
        dataset.status = DatasetStatus.BUILDING
        dataset.progress = 0
        dataset.started_at = timezone.now()
        dataset.build_token = uuid.uuid4()
        dataset.save(update_fields=["status", "progress", "started_at", "build_token"])
    return dataset


def _mine(dataset: Dataset) -> QuerySet[Dataset]:
    """The dataset's row while this worker's claim holds."""
    return Dataset.objects.filter(pk=dataset.pk, build_token=dataset.build_token)


def _finish(dataset: Dataset, builder: Builder) -> Dataset:
    archive = builder.archive()
    name = dataset.file.field.generate_filename(dataset, dataset_archive_name(dataset))
    storage = dataset.file.storage
    with archive.open("rb") as handle:
        stored = storage.save(name, File(handle))
    size = archive.stat().st_size
    counts = builder.tally.as_json()
    finished = timezone.now()
    updated = (
        _mine(dataset)
        .filter(status=DatasetStatus.BUILDING)
        .update(
            status=DatasetStatus.READY,
            progress=100,
            file=stored,
            size_bytes=size,
            counts=counts,
            preview=builder.preview,
            builder_role=builder.role,
            finished_at=finished,
            error="",
        )
    )
    if not updated:  # deleted or taken over meanwhile: this file goes
        storage.delete(stored)
        raise BuildSuperseded
    dataset.refresh_from_db()
    return dataset


def _fail(dataset: Dataset, reason: str) -> Dataset | None:
    updated = _mine(dataset).update(status=DatasetStatus.FAILED, error=reason[:4000], finished_at=timezone.now())
    if not updated:
        return None
    dataset.refresh_from_db()
    return dataset


# --- the builder ------------------------------------------------------------------------------


class Builder:
    def __init__(self, dataset: Dataset, folder: Path) -> None:
        if dataset.created_by is None:
            raise DatasetError("the person who asked for this dataset is no longer a user: build it again")
        self.dataset = dataset
        self.folder = folder
        self.user: User = dataset.created_by
        # The role now, not when it was asked for: a demoted admin builds as what they are.
        self.role: Role = builder_role(team=dataset.team, user=self.user)
        self.selection: Selection = selection_parse(
            team=dataset.team, user=self.user, role=self.role, filters=dataset.filters
        )
        self.format = DatasetFormat(dataset.format)
        self.tally = Tally()
        self.preview: list[dict[str, Any]] = []
        self.data_path = folder / formats.FILE_NAMES[self.format]
        self.held_back_path = folder / HELD_BACK_FILE
        self.exact = ExactDuplicates(folder / "seen.sqlite3")
        self.near = NearDuplicates()
        self.total = 0
        self.reported = 0
        self.systems: dict[int, str] = {}
        self.knowledge_bases: dict[int, KnowledgeBase] = {}

    # reading

    def messages(self) -> QuerySet[Message]:
        conversations = conversations_in_scope(team=self.dataset.team, user=self.user, role=self.role)
        selection = self.selection
        if selection.assistant_id is not None:
            conversations = conversations.filter(assistant_id=selection.assistant_id)
        answers = Message.objects.filter(conversation__in=conversations, role=Message.Role.ASSISTANT)
        narrowed = False
        if selection.since is not None:
            answers, narrowed = answers.filter(created_at__gte=selection.since), True
        if selection.until is not None:
            answers, narrowed = answers.filter(created_at__lt=selection.until), True
        if selection.knowledge_base_id is not None:
            answers = answers.filter(citations__contains=[{"knowledge_base_id": selection.knowledge_base_id}])
            narrowed = True
        if narrowed:  # only conversations with an answer the filters select
            conversations = conversations.filter(pk__in=answers.values("conversation_id"))
        return Message.objects.filter(conversation__in=conversations)

    def answers(self) -> Iterator[tuple[Answer, deque[tuple[str, str]]]]:
        """Each answer with its question and the conversation's usable earlier turns (scrubbed),
        which the caller extends (`remember`)."""
        messages = self.messages()
        self.total = messages.count()
        # Citations are read only where they matter: triples, and the knowledge-base filter.
        wants_citations = self.format == DatasetFormat.RETRIEVAL_TRIPLES or self.selection.knowledge_base_id is not None
        columns = [
            "id",
            "conversation_id",
            "conversation__assistant_id",
            "role",
            "content",
            "status",
            "feedback",
            "created_at",
            "gold_answer__text",
        ]
        if wants_citations:
            columns += ["citations", "retrieval_query"]
        rows = messages.order_by("conversation_id", "id").values_list(*columns)
        conversation_id: int | None = None
        question: str | None = None
        history: deque[tuple[str, str]] = deque(maxlen=formats.MAX_HISTORY_TURNS)
        for row in rows.iterator(chunk_size=CHUNK_SIZE):
            pk, conversation, assistant_id, role, content, status, feedback, created_at, gold = row[:9]
            citations, query = row[9:] if wants_citations else ([], "")
            self.tally.messages_read += 1
            if self.tally.messages_read - self.reported >= PROGRESS_EVERY:
                self.report_progress()
            if conversation != conversation_id:
                conversation_id, question = conversation, None
                history = deque(maxlen=formats.MAX_HISTORY_TURNS)
            if role == Message.Role.USER:
                question = content
                continue
            answer = Answer(
                message_id=pk,
                conversation_id=conversation,
                assistant_id=assistant_id,
                question=question,
                content=content,
                gold=gold,
                status=status,
                feedback=feedback,
                created_at=created_at,
                citations=citations or [],
                retrieval_query=query or "",
            )
            question = None
            yield answer, history

    def report_progress(self) -> None:
        self.reported = self.tally.messages_read
        percent = min(99, self.reported * 100 // max(self.total, 1))
        if not _mine(self.dataset).update(progress=percent):
            raise BuildSuperseded

    def selected(self, answer: Answer) -> bool:
        """Whether the date range and the knowledge base select the answer (answers outside them
        are not counted as dropped: they were never asked for)."""
        selection = self.selection
        if selection.since is not None and answer.created_at < selection.since:
            return False
        if selection.until is not None and answer.created_at >= selection.until:
            return False
        if selection.knowledge_base_id is not None:
            return any(source.get("knowledge_base_id") == selection.knowledge_base_id for source in answer.citations)
        return True

    def drop_reason(self, answer: Answer, *, needs_feedback: bool = True) -> str | None:
        if answer.status in UNFINISHED:
            return "failed_or_stopped"
        if answer.question is None or not answer.question.strip():
            return "no_question"
        if self.selection.reviewed == "only" and answer.gold is None:
            return "not_reviewed"
        if answer.gold is None and needs_feedback:
            if answer.feedback < 0:
                return "negative_feedback"
            if self.selection.feedback == "positive" and answer.feedback <= 0:
                return "no_feedback"
        if not answer.text.strip():
            return "empty"
        return None

    def usable_in_history(self, answer: Answer) -> bool:
        return (
            answer.status == MessageStatus.COMPLETE
            and bool(answer.question and answer.question.strip())
            and bool(answer.text.strip())
            and (answer.gold is not None or answer.feedback >= 0)
        )

    def scrub(self, text: str) -> str:
        return scrub(text, self.tally.scrubbed)

    def duplicate(self, text: str) -> str | None:
        normalized = normalize(text)
        if self.exact.seen_before(normalized):
            return "duplicate"
        if self.near.seen_before(normalized):
            return "near_duplicate"
        return None

    def system_prompt(self, assistant_id: int) -> str:
        if assistant_id not in self.systems:
            prompt = Assistant.objects.filter(pk=assistant_id).values_list("system_prompt", flat=True).first()
            self.systems[assistant_id] = self.scrub(prompt or "")
        return self.systems[assistant_id]

    # writing

    def run(self) -> None:
        with self.data_path.open("w", encoding="utf-8") as out:
            write = self._writer(out)
            if self.format in formats.MULTI_TURN:
                with self.held_back_path.open("w", encoding="utf-8") as held_back_out:
                    self._supervised(write, self._held_back_writer(held_back_out))
            elif self.format == DatasetFormat.DPO:
                self._preference(write)
            else:
                self._triples(write)
        self.exact.close()
        self.report_progress()

    def _writer(self, out: IO[str]) -> Callable[[dict[str, Any]], None]:
        def write(row: dict[str, Any]) -> None:
            out.write(json.dumps(row, ensure_ascii=False))
            out.write("\n")
            self.tally.kept += 1
            if len(self.preview) < PREVIEW_ROWS:
                self.preview.append(row)

        return write

    def _held_back_writer(self, out: IO[str]) -> Callable[[formats.Example], None]:
        def hold_back(example: formats.Example) -> None:
            out.write(json.dumps(held_back_row(example), ensure_ascii=False))
            out.write("\n")
            self.tally.held_back += 1

        return hold_back

    def _supervised(
        self, write: Callable[[dict[str, Any]], None], hold_back: Callable[[formats.Example], None]
    ) -> None:
        for answer, history in self.answers():
            selected = self.selected(answer)
            reason = self.drop_reason(answer) if selected else None
            if selected and reason:
                self.tally.dropped[reason] += 1
            remember = self.usable_in_history(answer)
            if not remember and (not selected or reason):
                continue
            question, text = self.scrub(answer.question or ""), self.scrub(answer.text)
            if selected and not reason:
                duplicate = self.duplicate(f"{question}\n{text}")
                if duplicate:
                    self.tally.dropped[duplicate] += 1
                else:
                    example = formats.Example(
                        system=self.system_prompt(answer.assistant_id),
                        history=list(history),
                        question=question,
                        answer=text,
                    )
                    if is_held_back(answer.conversation_id, self.dataset.holdout_percent):
                        hold_back(example)
                    else:
                        write(formats.sft_row(self.format, example))
            if remember:
                history.append((question, text))

    def _preference(self, write: Callable[[dict[str, Any]], None]) -> None:
        """Candidates (question key, chosen or rejected, texts) into SQLite, then read back by
        question: the grouping never holds more than one question's candidates."""
        candidates = self.exact.connection
        candidates.execute(
            "CREATE TABLE candidate (question_key INTEGER, chosen INTEGER, message_id INTEGER, question TEXT, "
            "answer TEXT)"
        )
        insert = "INSERT INTO candidate VALUES (?, ?, ?, ?, ?)"
        for answer, _history in self.answers():
            if not self.selected(answer):
                continue
            reason = self.drop_reason(answer, needs_feedback=False)
            if reason:
                self.tally.dropped[reason] += 1
                continue
            sides: list[tuple[bool, str]] = []
            if answer.gold is not None:
                sides.append((True, answer.gold))
                if answer.feedback < 0 and answer.content.strip():
                    sides.append((False, answer.content))
            elif answer.feedback > 0:
                sides.append((True, answer.content))
            elif answer.feedback < 0:
                sides.append((False, answer.content))
            else:
                self.tally.dropped["no_feedback"] += 1
                continue
            question = self.scrub(answer.question or "")
            key = fingerprint(question)
            for chosen, text in sides:
                candidates.execute(insert, (key, int(chosen), answer.message_id, question, self.scrub(text)))
        candidates.execute("CREATE INDEX candidate_question ON candidate (question_key, chosen DESC, message_id)")
        rows = candidates.execute(
            "SELECT question_key, chosen, question, answer FROM candidate "
            "ORDER BY question_key, chosen DESC, message_id"
        )
        group_key: int | None = None
        chosen_texts: list[tuple[str, str]] = []
        rejected_texts: list[str] = []
        group_size = 0

        def pair_group() -> None:
            if not chosen_texts or not rejected_texts:
                self.tally.dropped["unpaired"] += group_size
                return
            count = min(max(len(chosen_texts), len(rejected_texts)), MAX_PAIRS_PER_QUESTION)
            for index in range(count):
                question, chosen = chosen_texts[index % len(chosen_texts)]
                rejected = rejected_texts[index % len(rejected_texts)]
                duplicate = self.duplicate(f"{question}\n{chosen}\n{rejected}")
                if duplicate:
                    self.tally.dropped[duplicate] += 1
                    continue
                write(formats.preference_row(question=question, chosen=chosen, rejected=rejected))

        for key, chosen, question, text in rows:
            if key != group_key:
                if group_key is not None:
                    pair_group()
                group_key, chosen_texts, rejected_texts, group_size = key, [], [], 0
            group_size += 1
            # Only the first few of each side are kept: a question asked ten thousand times
            # still costs MAX_PAIRS_PER_QUESTION of each.
            if chosen and len(chosen_texts) < MAX_PAIRS_PER_QUESTION:
                chosen_texts.append((question, text))
            elif not chosen and len(rejected_texts) < MAX_PAIRS_PER_QUESTION:
                rejected_texts.append(text)
        if group_key is not None:
            pair_group()

    def _triples(self, write: Callable[[dict[str, Any]], None]) -> None:
        team_id = self.dataset.team_id
        for answer, _history in self.answers():
            if not self.selected(answer):
                continue
            # The query searched with; the question where none was recorded.
            query = (answer.retrieval_query or answer.question or "").strip()
            answer.question = query or None
            reason = self.drop_reason(answer)
            if reason:
                self.tally.dropped[reason] += 1
                continue
            cited = [
                source
                for source in answer.citations or []
                if source.get("cited") and isinstance(source.get("chunk_id"), int)
            ]
            if self.selection.knowledge_base_id is not None:
                cited = [
                    source for source in cited if source.get("knowledge_base_id") == self.selection.knowledge_base_id
                ]
            if not cited:
                self.tally.dropped["no_citation"] += 1
                continue
            cited_ids = {source["chunk_id"] for source in cited}
            chunks = {
                row["pk"]: row
                for row in Chunk.objects.filter(pk__in=cited_ids, knowledge_base__team_id=team_id).values(
                    "pk", "text", "knowledge_base_id"
                )
            }
            anchor = self.scrub(query)
            for chunk_id in sorted(cited_ids):
                chunk = chunks.get(chunk_id)
                if chunk is None:
                    self.tally.dropped["chunk_gone"] += 1
                    continue
                positive = self.scrub(chunk["text"])
                duplicate = self.duplicate(f"{anchor}\n{positive}")
                if duplicate:
                    self.tally.dropped[duplicate] += 1
                    continue
                negatives = self.hard_negatives(chunk["knowledge_base_id"], query, cited_ids, chunk["text"])
                if not negatives:
                    self.tally.dropped["no_negative"] += 1
                    continue
                for negative in negatives:
                    write(formats.triple_row(anchor=anchor, positive=positive, negative=self.scrub(negative)))

    def hard_negatives(self, kb_id: int, query: str, cited: set[int], positive: str) -> list[str]:
        kb = self.knowledge_bases.get(kb_id)
        if kb is None:
            kb = KnowledgeBase.objects.select_related("embedding_model").get(pk=kb_id)
            self.knowledge_bases[kb_id] = kb
        hits = kb_search(
            knowledge_bases=[kb],
            request=SearchRequest(
                query=query, top_k=min(100, HARD_NEGATIVES + len(cited) + 5), mode=RetrievalMode.FULLTEXT
            ),
        )
        same = normalize(positive)
        negatives: list[str] = []
        for hit in hits:
            if hit.chunk_id in cited or normalize(hit.text) == same or hit.text in negatives:
                continue
            negatives.append(hit.text)
            if len(negatives) == HARD_NEGATIVES:
                break
        return negatives

    # the archive

    def archive(self) -> Path:
        path = self.folder / "dataset.zip"
        report = {
            "dataset": self.dataset.pk,
            "name": self.dataset.name,
            "version": self.dataset.version,
            "format": self.format.value,
            "filters": self.dataset.filters,
            "built_as": self.role.value,
            "built_at": timezone.now().isoformat(),
            "counts": self.tally.as_json(),
            "kept_means": "pairs written" if self.format == DatasetFormat.DPO else "rows written",
        }
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(self.data_path, arcname=self.data_path.name)
            if self.dataset.holdout_percent and self.held_back_path.exists():
                archive.write(self.held_back_path, arcname=HELD_BACK_FILE)
            info = formats.dataset_info(self.format, key=dataset_info_key(self.dataset))
            if info is not None:
                archive.writestr("dataset_info.json", json.dumps(info, ensure_ascii=False, indent=2))
            archive.writestr("report.json", json.dumps(report, ensure_ascii=False, indent=2))
        return path


def is_held_back(conversation_id: int, percent: int) -> bool:
    """Whether a conversation's rows go to the held-back file: by a hash of its id, so every
    version and format of a team's datasets holds back the same conversations (an adapter trained
    on one version is not compared on rows it learnt from), and a whole conversation at once (its
    answers are in its later rows' history)."""
    digest = hashlib.sha256(f"conversation:{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


def held_back_row(example: formats.Example) -> dict[str, Any]:
    """A held-back question with what the model is shown and the answer people kept."""
    return {
        "system": example.system,
        "history": [list(turn) for turn in example.history],
        "question": example.question,
        "reference": example.answer,
    }


def held_back_rows(dataset: Dataset, limit: int) -> list[dict[str, Any]]:
    """The first `limit` held-back rows of a built dataset (an empty list if it has none)."""
    with dataset.file.open("rb") as handle, zipfile.ZipFile(handle) as archive:
        if HELD_BACK_FILE not in archive.namelist():
            return []
        rows: list[dict[str, Any]] = []
        with archive.open(HELD_BACK_FILE) as lines:
            for line in lines:
                if len(rows) == limit:
                    break
                rows.append(json.loads(line))
        return rows


def dataset_info_key(dataset: Dataset) -> str:
    """The name LLaMA-Factory's `dataset:` argument takes: letters, digits and underscores."""
    safe = "".join(character if character.isalnum() else "_" for character in dataset.name.lower()).strip("_")
    return f"{safe or 'dataset'}_v{dataset.version}"
