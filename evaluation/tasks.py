"""Thin Celery entry points for evaluation: runs and the rebuild gate on the `default` queue,
drafting questions (a model call per passage) on `llm`."""

from __future__ import annotations

import logging

from celery import shared_task
from kombu.exceptions import OperationalError as BrokerUnavailable

from evaluation import drafting, services

logger = logging.getLogger(__name__)


@shared_task(name="evaluation.execute", ignore_result=True)
def execute(run_id: int) -> None:
    services.run_execute(run_id=run_id)


@shared_task(name="evaluation.gate", ignore_result=True)
def gate(kb_id: int) -> None:
    services.gate_execute(kb_id=kb_id)


@shared_task(name="evaluation.draft", ignore_result=True)
def draft(evaluation_set_id: int, document_ids: list[int], per_document: int, user_id: int) -> None:
    drafting.items_draft(
        evaluation_set_id=evaluation_set_id, document_ids=document_ids, per_document=per_document, user_id=user_id
    )


def execute_soon(run_id: int, *, on_llm_queue: bool = False) -> None:
    """With the broker down the run stays queued and says so; running it again queues it again.
    A run whose questions the chat model answers goes on `llm`, with chat's slots."""
    try:
        execute.apply_async(args=(run_id,), queue="llm" if on_llm_queue else "default")
    except BrokerUnavailable:
        logger.warning("could not queue evaluation run %s: the broker is unavailable", run_id)


def gate_soon(kb_id: int) -> None:
    try:
        gate.delay(kb_id)
    except BrokerUnavailable:
        logger.warning("could not queue the rebuild gate of knowledge base %s: the broker is unavailable", kb_id)


def draft_soon(evaluation_set_id: int, document_ids: list[int], per_document: int, user_id: int) -> None:
    try:
        draft.delay(evaluation_set_id, document_ids, per_document, user_id)
    except BrokerUnavailable:
        logger.warning("could not queue drafting for set %s: the broker is unavailable", evaluation_set_id)
