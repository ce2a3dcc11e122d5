"""Thin Celery entry points for ingestion, on the `ingest` queue (kb.* is routed there)."""

from __future__ import annotations

import logging

from celery import shared_task
from kombu.exceptions import OperationalError as BrokerUnavailable

from kb.services import document_process, documents_dispatch

logger = logging.getLogger(__name__)


@shared_task(name="kb.dispatch", ignore_result=True)
def dispatch() -> None:
    """Hand the next documents to workers, fairly between teams (beat also runs this)."""
    for document_id, token in documents_dispatch():
        ingest.delay(document_id, token)


@shared_task(name="kb.ingest", ignore_result=True)
def ingest(document_id: int, token: str) -> None:
    try:
        document_process(document_id=document_id, token=token)
    finally:
        # A slot is free (or a retry is scheduled): let the next document in line go.
        dispatch_soon()


def dispatch_soon() -> None:
    """Hand documents out now rather than at beat's next tick. With the broker down this is
    logged, not raised: what called it is saved, and beat's next dispatch hands the documents out."""
    try:
        dispatch.delay()
    except BrokerUnavailable:
        logger.warning("could not queue a dispatch: the broker is unavailable; beat's next tick will")
