"""Each team's storage quota: the bytes of uploaded originals it keeps (Document.size_bytes,
archive members counted as stored, each on its own).

An upload that would take the team past its quota is refused whole (413) before any file is
stored, with what the team uses and what to do. Team.storage_quota_bytes sets a team's own
quota; empty means the platform's TEAM_STORAGE_QUOTA_BYTES, 0 means no limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from django.conf import settings
from django.db import connection
from django.db.models import Sum

from accounts.models import Team
from core.domain_errors import DomainError
from core.sizes import format_bytes
from kb.models import Document, KnowledgeBase
from kb.uploads import IncomingFile

# Advisory lock key space of the per-team storage lock (the second key is the team id).
STORAGE_LOCK_SPACE = 0x5354  # "ST"


class StorageQuotaExceeded(DomainError):
    status_code = 413
    code = "storage_quota_exceeded"


def team_storage_quota(*, team: Team) -> int:
    """The team's quota in bytes; 0: no limit."""
    if team.storage_quota_bytes is not None:
        return team.storage_quota_bytes
    return int(settings.TEAM_STORAGE_QUOTA_BYTES)


def team_storage_used(*, team_id: int) -> int:
    return int(Document.objects.filter(team_id=team_id).aggregate(total=Sum("size_bytes"))["total"] or 0)


def storage_quota_check(*, kb: KnowledgeBase, files: Sequence[IncomingFile]) -> None:
    """StorageQuotaExceeded when storing `files` in `kb` would take its team past its quota.
    Files the knowledge base holds already (same SHA-256) add nothing and are not counted."""
    team = Team.objects.get(pk=kb.team_id)
    quota = team_storage_quota(team=team)
    if not quota or not files:
        return
    held = Document.objects.filter(knowledge_base=kb, sha256__in={incoming.sha256 for incoming in files})
    present = set(held.values_list("sha256", flat=True))
    new: dict[str, int] = {}
    for incoming in files:
        if incoming.sha256 not in present:
            new[incoming.sha256] = incoming.size_bytes
    incoming_bytes = sum(new.values())
    used = team_storage_used(team_id=team.pk)
    if used + incoming_bytes > quota:
        raise StorageQuotaExceeded(
            f"The team {team.name!r} stores {format_bytes(used)} of its {format_bytes(quota)} storage quota, and this "
            f"upload needs {format_bytes(incoming_bytes)} more: delete documents the team no longer needs, or ask "
            "the operator to raise the team's storage quota."
        )


@contextlib.contextmanager
def storage_reserved(*, kb: KnowledgeBase, files: Sequence[IncomingFile]) -> Iterator[None]:
    """Checks the quota, then holds the team's storage lock while the caller stores `files`:
    two uploads at once cannot both fit in the room that only one of them has. A session-level
    lock, so that storing keeps its own per-file transactions."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [STORAGE_LOCK_SPACE, kb.team_id])
    try:
        storage_quota_check(kb=kb, files=files)
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [STORAGE_LOCK_SPACE, kb.team_id])
