"""Thin Celery entry points: building datasets, on the `ingest` queue (finetune.* is routed
there: a build reads every message of a team, a long batch job beside ingestion, away from the
slots chat needs), and comparing an adapter with its base model, on `llm`."""

from __future__ import annotations

import logging

from celery import shared_task
from kombu.exceptions import OperationalError as BrokerUnavailable

from finetune.adapters import comparison_execute
from finetune.building import dataset_build

logger = logging.getLogger(__name__)


@shared_task(name="finetune.build", ignore_result=True)
def build(dataset_id: int) -> None:
    dataset_build(dataset_id=dataset_id)


def build_soon(dataset_id: int) -> None:
    """With the broker down the dataset stays queued (its status says so); asking again builds
    the next version."""
    try:
        build.delay(dataset_id)
    except BrokerUnavailable:
        logger.warning("could not queue dataset %s: the broker is unavailable", dataset_id)


@shared_task(name="finetune.compare", ignore_result=True)
def compare(comparison_id: int) -> None:
    """On the `llm` queue (finetune.compare is routed there): model calls, beside chat's."""
    comparison_execute(comparison_id=comparison_id)


def compare_soon(comparison_id: int) -> None:
    """With the broker down the comparison stays queued (its status says so); asking again
    queues a new one."""
    try:
        compare.delay(comparison_id)
    except BrokerUnavailable:
        logger.warning("could not queue comparison %s: the broker is unavailable", comparison_id)
