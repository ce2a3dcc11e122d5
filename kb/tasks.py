"""Thin Celery entry points for ingestion and the vector indexes, on the `ingest` queue (kb.* is
routed there, away from the slots chat needs)."""

from __future__ import annotations

import logging

import openai
from celery import Task, shared_task
from django.db import DatabaseError
from kombu.exceptions import OperationalError as BrokerUnavailable

from kb.ingestion import document_process, documents_dispatch
from kb.services import kb_index_vectors, vector_index_ensure
from kb.web_sources import web_source_sync, web_sources_queue_due
from models_registry.models import ModelKind, ModelRegistration
from models_registry.providers.base import ProviderError

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


VECTOR_INDEX_MAX_RETRIES = 6  # 15 s doubling to 5 min: about 13 minutes, a large model's launch


@shared_task(name="kb.vector_index_ensure", bind=True, ignore_result=True, max_retries=VECTOR_INDEX_MAX_RETRIES)
def vector_index_ensure_task(self: Task, registration_id: int) -> None:
    """Probe an embedding model and build the HNSW index for the size it returns (a no-op once the
    index is there). A model not answering yet (still launching, its server down) is probed again
    with backoff, then left: the next knowledge base on it, or kb.index_vectors, asks again."""
    model = (
        ModelRegistration.objects.select_related("provider")
        .filter(pk=registration_id, kind=ModelKind.EMBEDDING)
        .first()
    )
    if model is None:
        return
    try:
        vector_index_ensure(model=model)
    except (openai.APIError, ProviderError, DatabaseError) as exc:
        if self.request.retries >= VECTOR_INDEX_MAX_RETRIES:
            logger.warning("gave up building the vector index for %s: %s", model.name, exc)
            return
        raise self.retry(countdown=min(15 * 2**self.request.retries, 300)) from exc


def vector_index_soon(registration_id: int) -> None:
    """With the broker down this is logged, not raised: search stays exact without the index, and
    kb.index_vectors builds it before any knowledge base is searched through it."""
    try:
        vector_index_ensure_task.delay(registration_id)
    except BrokerUnavailable:
        logger.warning("could not queue the vector index for model %s: the broker is unavailable", registration_id)


@shared_task(name="kb.web_sync", ignore_result=True)
def web_sync(source_id: int) -> None:
    """One sync of a web source (kb.web_sources); a message delivered twice finds it claimed."""
    web_source_sync(source_id=source_id)


def web_sync_soon(source_id: int) -> None:
    """With the broker down this is logged, not raised: the source stays queued, and beat's
    `kb-web-sync` queues it again once it has waited STALE_AFTER_S."""
    try:
        web_sync.delay(source_id)
    except BrokerUnavailable:
        logger.warning("could not queue the sync of web source %s: the broker is unavailable", source_id)


@shared_task(name="kb.web_sync_due", ignore_result=True)
def web_sync_due() -> None:
    """Beat's `kb-web-sync`: queue the syncs that are due, and those whose worker was lost."""
    for source_id in web_sources_queue_due():
        web_sync_soon(source_id)
