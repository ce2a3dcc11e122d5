"""Writes: start a dataset build, delete a dataset, set or remove a gold answer. The build itself
is finetune.building (a worker runs it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from accounts.models import ROLE_RANK, Role, Team, User
from chat.models import Assistant, Message
from core.domain_errors import DomainError
from finetune import formats
from finetune.models import Dataset, DatasetFormat, DatasetStatus, GoldAnswer
from finetune.selectors import conversations_in_scope, role_in
from kb.models import KnowledgeBase

logger = logging.getLogger(__name__)

FEEDBACK_CHOICES = ("positive", "any")
REVIEWED_CHOICES = ("only", "any")
FILTER_KEYS = ("assistant", "knowledge_base", "since", "until", "feedback", "reviewed")
MAX_GOLD_CHARS = 32_000
MAX_HOLDOUT_PERCENT = 50


class DatasetError(DomainError):
    pass


class DatasetNotReady(DomainError):
    status_code = 409
    code = "not_ready"


@dataclass(frozen=True)
class Selection:
    """A dataset's filters, checked: which answers it is built from."""

    assistant_id: int | None = None
    knowledge_base_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    feedback: str = "any"  # positive: 👍 (or a gold answer) only; any: everything but 👎
    reviewed: str = "any"  # only: answers with a gold answer only


def _moment(value: Any, name: str, *, end_of_day: bool) -> datetime:
    """An ISO date or date-time; a date alone is the start of that day (`since`) or the start of
    the next one (`until`, which is exclusive), in the platform's time zone."""
    parsed: datetime | date | None = None
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value) or parse_date(value)
        except ValueError:
            parsed = None
    if parsed is None:
        raise DatasetError(f"filters.{name}: {value!r} is not a date: write 2025-01-31 or 2025-01-31T12:00:00Z")
    if not isinstance(parsed, datetime):
        day = parsed + timedelta(days=1) if end_of_day else parsed
        return timezone.make_aware(datetime.combine(day, time.min))
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def _id(value: Any, name: str) -> int:
    if type(value) is not int:
        raise DatasetError(
            f"filters.{name}: give the id (a whole number) of one of the team's {name.replace('_', ' ')}s"
        )
    return value


def selection_parse(*, team: Team, user: User, role: Role, filters: Any) -> Selection:
    """The filters, checked against the team: an id of another team's object is refused, never
    silently matched to nothing."""
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise DatasetError('filters: an object such as {"feedback": "positive"}')
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise DatasetError(f"filters: unknown {', '.join(unknown)}; the filters are {', '.join(FILTER_KEYS)}")
    assistant_id = knowledge_base_id = None
    if filters.get("assistant") is not None:
        assistant_id = _id(filters["assistant"], "assistant")
        if not Assistant.objects.filter(pk=assistant_id, team=team).exists():
            raise DatasetError(f"filters.assistant: no assistant with id {assistant_id} in this team")
    if filters.get("knowledge_base") is not None:
        knowledge_base_id = _id(filters["knowledge_base"], "knowledge_base")
        # A conversation's own files: only when that conversation is one the dataset may hold.
        in_scope = conversations_in_scope(team=team, user=user, role=role)
        found = KnowledgeBase.objects.filter(
            Q(file_conversation__isnull=True) | Q(file_conversation__in=in_scope), pk=knowledge_base_id, team=team
        )
        if not found.exists():
            raise DatasetError(f"filters.knowledge_base: no knowledge base with id {knowledge_base_id} in this team")
    since = _moment(filters["since"], "since", end_of_day=False) if filters.get("since") is not None else None
    until = _moment(filters["until"], "until", end_of_day=True) if filters.get("until") is not None else None
    if since and until and until <= since:
        raise DatasetError("filters: `until` is before `since`: swap them")
    feedback = filters.get("feedback", "any")
    if feedback not in FEEDBACK_CHOICES:
        raise DatasetError(
            f"filters.feedback: {feedback!r} is not one of {', '.join(FEEDBACK_CHOICES)} "
            "(positive: thumbs-up answers only; any: every answer without a thumbs-down)"
        )
    reviewed = filters.get("reviewed", "any")
    if reviewed not in REVIEWED_CHOICES:
        raise DatasetError(
            f"filters.reviewed: {reviewed!r} is not one of {', '.join(REVIEWED_CHOICES)} "
            "(only: answers a reviewer gave a gold answer)"
        )
    return Selection(
        assistant_id=assistant_id,
        knowledge_base_id=knowledge_base_id,
        since=since,
        until=until,
        feedback=feedback,
        reviewed=reviewed,
    )


def selection_json(selection: Selection) -> dict[str, Any]:
    stored: dict[str, Any] = {"feedback": selection.feedback, "reviewed": selection.reviewed}
    if selection.assistant_id is not None:
        stored["assistant"] = selection.assistant_id
    if selection.knowledge_base_id is not None:
        stored["knowledge_base"] = selection.knowledge_base_id
    if selection.since is not None:
        stored["since"] = selection.since.isoformat()
    if selection.until is not None:
        stored["until"] = selection.until.isoformat()
    return stored


def check_format(value: Any) -> DatasetFormat:
    if value not in DatasetFormat.values:
        raise DatasetError(f"format: {value!r} is not a format; choose one of {', '.join(DatasetFormat.values)}")
    return DatasetFormat(value)


def builder_role(*, team: Team, user: User) -> Role:
    """The role the user builds with; viewers and outsiders may not build."""
    role = role_in(team=team, user=user)
    if role is None or ROLE_RANK[role] < ROLE_RANK[Role.MEMBER]:
        raise DatasetError("only the team's members, admins and owners build datasets: ask an admin for the role")
    return role


def dataset_start(
    *, team: Team, user: User, name: str, format: str, filters: Any = None, holdout_percent: int = 0
) -> Dataset:
    """A dataset queued for a worker: the next version of `name` in the team."""
    if type(holdout_percent) is not int or not 0 <= holdout_percent <= MAX_HOLDOUT_PERCENT:
        raise DatasetError(f"holdout: a whole percentage from 0 to {MAX_HOLDOUT_PERCENT}")
    name = (name or "").strip()
    if not name:
        raise DatasetError("name: give the dataset a name (building it again makes its next version)")
    if len(name) > 200:
        raise DatasetError("name: at most 200 characters")
    chosen_format = check_format(format)
    if holdout_percent and chosen_format not in formats.MULTI_TURN:
        raise DatasetError(
            "holdout: only supervised formats (alpaca, sharegpt, openai, swift, xtuner) hold conversations back"
        )
    role = builder_role(team=team, user=user)
    selection = selection_parse(team=team, user=user, role=role, filters=filters)
    with transaction.atomic():
        # The team's row lock orders two builds of one name: each gets its own version.
        Team.objects.select_for_update().filter(pk=team.pk).first()
        latest = Dataset.objects.filter(team=team, name=name).aggregate(latest=Max("version"))["latest"] or 0
        dataset = Dataset.objects.create(
            team=team,
            created_by=user,
            builder_role=role,
            name=name,
            version=latest + 1,
            format=chosen_format,
            filters=selection_json(selection),
            holdout_percent=holdout_percent,
        )
    transaction.on_commit(lambda: _build_soon(dataset.pk))
    return dataset


def _build_soon(dataset_id: int) -> None:
    from finetune.tasks import build_soon

    build_soon(dataset_id)


def dataset_delete(*, dataset: Dataset) -> None:
    """The row and its file; a build under way stops at its next progress report."""
    name = dataset.file.name if dataset.file else ""
    storage = dataset.file.storage
    dataset.delete()
    if name:
        transaction.on_commit(lambda: storage.delete(name))


def dataset_archive_name(dataset: Dataset) -> str:
    """The download's file name: `<name>-v<version>-<format>.zip`, with only safe characters."""
    safe = "".join(character if character.isalnum() or character in "-_." else "-" for character in dataset.name)
    return f"{safe.strip('-.') or 'dataset'}-v{dataset.version}-{dataset.format}.zip"


def dataset_require_ready(*, dataset: Dataset) -> None:
    if dataset.status == DatasetStatus.FAILED:
        raise DatasetNotReady(f"the dataset failed to build ({dataset.error}): build it again")
    if dataset.status != DatasetStatus.READY or not dataset.file:
        raise DatasetNotReady(
            f"the dataset is {dataset.status} ({dataset.progress}%): download it when its status is ready"
        )


def gold_answer_set(*, message: Message, reviewer: User, text: str) -> GoldAnswer:
    """The reviewer's answer for this assistant message, used by datasets instead of the
    original (which stays as it was)."""
    if message.role != Message.Role.ASSISTANT:
        raise DatasetError("gold answers replace the assistant's answers: give the id of an assistant message")
    if not text.strip():
        raise DatasetError("text: write the gold answer (to remove one, DELETE it)")
    if len(text) > MAX_GOLD_CHARS:
        raise DatasetError(f"text: at most {MAX_GOLD_CHARS} characters")
    gold, _created = GoldAnswer.objects.update_or_create(
        message=message,
        defaults={"team_id": message.conversation.team_id, "text": text, "reviewed_by": reviewer},
    )
    return gold


def gold_answer_delete(*, message: Message) -> bool:
    deleted, _ = GoldAnswer.objects.filter(message=message).delete()
    return bool(deleted)
