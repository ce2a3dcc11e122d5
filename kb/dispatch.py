"""Dispatch: which documents are ingested when, and by which worker. The lease state machine of a
document, every transition named here and nowhere else:

    queued ──hand_out──► queued + lease (token) ──claim──► parsing/embedding (attempt counted)
       ▲                        │ lease expires                │ progress / heartbeat renew it
       │◄───────requeue_expired─┘                              ├─release_ready──► ready
       │◄───────────────────────wait_to_retry (lease = backoff)┤
       │                                                       └─release_failed─► failed
       ├── requeue (reindex, rebuild: attempts back to zero)
       └── requeue_replaced (a new file, a changed web page: the token dropped as well)

A worker acts on a document only while it holds the dispatch token it was handed (`held`); a
worker whose lease expired and whose document was handed out again finds its token gone and
writes nothing. At most KB_INGEST_MAX_IN_FLIGHT documents are out at once, all teams together,
handed out round-robin by team."""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from kb.models import ACTIVE_STATUSES, Document, DocumentStatus

logger = logging.getLogger(__name__)

DISPATCH_LOCK_ID = 4_242_001  # pg advisory lock: one dispatcher at a time


def lease_until(extra_s: float = 0) -> datetime:
    return timezone.now() + timedelta(seconds=settings.KB_INGEST_LEASE_S + extra_s)


def held(document: Document) -> QuerySet[Document]:
    """The document's row while this worker still holds it (the token it was handed)."""
    return Document.objects.filter(pk=document.pk, dispatch_token=document.dispatch_token)


# --- transitions ------------------------------------------------------------------------------


def requeue(documents: QuerySet[Document]) -> int:
    """Back in line from the start (reindex, rebuild): attempts counted from zero again."""
    return documents.update(
        status=DocumentStatus.QUEUED, progress=0, error="", attempts=0, dispatched_at=None, lease_expires_at=None
    )


def requeue_replaced(documents: QuerySet[Document]) -> int:
    """Back in line with a new file (a web page that changed): as `requeue`, and the dispatch token
    dropped, so a worker still on the old file writes nothing of it (no chunks, no ready)."""
    return documents.update(
        status=DocumentStatus.QUEUED,
        progress=0,
        error="",
        attempts=0,
        dispatched_at=None,
        dispatch_token=None,
        lease_expires_at=None,
        updated_at=timezone.now(),
    )


def _requeue_expired(now: datetime) -> None:
    """Documents whose lease ran out (their worker died, or a retry's wait is over) go back in line."""
    Document.objects.filter(status__in=ACTIVE_STATUSES, lease_expires_at__lt=now).update(
        status=DocumentStatus.QUEUED, dispatched_at=None, dispatch_token=None, lease_expires_at=None
    )


def _hand_out(document_id: int, now: datetime) -> str:
    token = uuid.uuid4()
    Document.objects.filter(pk=document_id).update(
        dispatched_at=now, dispatch_token=token, lease_expires_at=lease_until()
    )
    return str(token)


def claim(*, document_id: int, token: str) -> Document | None:
    """The document, marked as being parsed by this worker (an attempt counted); None when this
    message is stale (the document was handed out again) or another live worker holds it."""
    with transaction.atomic():
        document = Document.objects.select_for_update().select_related("knowledge_base").filter(pk=document_id).first()
        if document is None or str(document.dispatch_token) != token:
            return None
        if document.status in (DocumentStatus.PARSING, DocumentStatus.EMBEDDING):
            return None  # a redelivered message while the first worker may still run: the lease decides
        document.status = DocumentStatus.PARSING
        document.progress = 0
        document.attempts += 1
        document.lease_expires_at = lease_until()
        document.save(update_fields=["status", "progress", "attempts", "lease_expires_at", "updated_at"])
    return document


def progress(document: Document, *, status: str, percent: int) -> None:
    """Stage and percent shown to people; reporting progress renews the lease."""
    document.status = status
    document.progress = percent
    held(document).update(status=status, progress=percent, lease_expires_at=lease_until(), updated_at=timezone.now())


def release_ready(
    document: Document, *, generation: int, chunk_count: int, timings: dict[str, float], notice: str = ""
) -> bool:
    """Ready, if this worker still holds it; False when another worker took the document over.
    `notice`: what was left out, such as pages past KB_OCR_MAX_PAGES (not a failure)."""
    return bool(
        held(document).update(
            status=DocumentStatus.READY,
            progress=100,
            error="",
            notice=notice,
            chunk_count=chunk_count,
            built_generation=generation,
            stage_timings=timings,
            dispatched_at=None,
            dispatch_token=None,
            lease_expires_at=None,
            updated_at=timezone.now(),
        )
    )


def release_failed(
    document: Document, *, reason: str, timings: dict[str, float], expired_before: datetime | None = None
) -> bool:
    """Failed with the reason, if this holder still holds it (and, with expired_before, nobody
    renewed its lease since)."""
    rows = held(document)
    if expired_before is not None:
        rows = rows.filter(lease_expires_at__lt=expired_before)
    return bool(
        rows.update(
            status=DocumentStatus.FAILED,
            error=reason,
            stage_timings=timings,
            dispatched_at=None,
            dispatch_token=None,
            lease_expires_at=None,
            updated_at=timezone.now(),
        )
    )


def wait_to_retry(document: Document, *, delay_s: float, reason: str) -> None:
    """Queued again after a transient failure; the lease holds it back until the wait is over."""
    held(document).update(
        status=DocumentStatus.QUEUED,
        progress=0,
        error=f"waiting to retry in {delay_s:.0f}s: {reason}",
        lease_expires_at=timezone.now() + timedelta(seconds=delay_s),
        updated_at=timezone.now(),
    )


# --- the dispatcher ---------------------------------------------------------------------------


def abandoned() -> QuerySet[Document]:
    """Documents whose worker died (or stalled past its lease) on their last allowed attempt."""
    return Document.objects.filter(
        status__in=(DocumentStatus.PARSING, DocumentStatus.EMBEDDING),
        lease_expires_at__lt=timezone.now(),
        attempts__gte=settings.KB_INGEST_MAX_ATTEMPTS,
    )


def documents_hand_out() -> list[tuple[int, str]]:
    """Hand queued documents to workers: at most KB_INGEST_MAX_IN_FLIGHT at once, round-robin by
    team (every team's oldest first, but documents that failed before after those that have not,
    so a knowledge base whose model server is down does not hold the slots with its retries while
    the team's other uploads wait); expired leases go back in line first. Returns (document id,
    dispatch token) pairs. Abandoned documents are failed before this (kb.ingestion)."""
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [DISPATCH_LOCK_ID])
        if not cursor.fetchone()[0]:
            return []
        _requeue_expired(now)
        in_flight = Document.objects.filter(status__in=ACTIVE_STATUSES, dispatched_at__isnull=False).count()
        free = settings.KB_INGEST_MAX_IN_FLIGHT - in_flight
        if free <= 0:
            return []
        cursor.execute(
            """
            SELECT id FROM (
                SELECT id, row_number() OVER (PARTITION BY team_id ORDER BY attempts, id) AS turn
                FROM kb_document WHERE status = %s AND dispatched_at IS NULL
            ) AS queued
            ORDER BY turn, id LIMIT %s
            """,
            [DocumentStatus.QUEUED, free],
        )
        return [(document_id, _hand_out(document_id, now)) for (document_id,) in cursor.fetchall()]


@contextlib.contextmanager
def lease_heartbeat(document: Document) -> Iterator[None]:
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
                    still_held = held(document).update(lease_expires_at=lease_until())
                except DatabaseError:
                    logger.warning("could not renew the lease of document %s; trying again", document.pk)
                    continue
                if not still_held:
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
