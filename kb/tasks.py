"""Thin Celery entry points for ingestion, on the `ingest` queue (kb.* is routed there)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import DatabaseError
from kombu.exceptions import OperationalError as BrokerUnavailable

from kb.services import document_process, documents_dispatch, kb_index_vectors

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


@shared_task(
    name="kb.index_vectors", ignore_result=True, autoretry_for=(DatabaseError,), retry_backoff=True, max_retries=8
)
def index_vectors(kb_id: int) -> None:
    """Retried on database errors (a deadlock with a store, a restart): a knowledge base left
    BUILDING is searched exactly, and nothing else asks again."""
    kb_index_vectors(kb_id=kb_id)


def index_vectors_soon(kb_id: int) -> None:
    """With the broker down this is logged, not raised: search stays exact meanwhile, and the next
    search or stored document asks again."""
    try:
        index_vectors.delay(kb_id)
    except BrokerUnavailable:
        logger.warning("could not queue indexing knowledge base %s: the broker is unavailable", kb_id)
