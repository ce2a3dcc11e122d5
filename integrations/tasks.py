"""Thin Celery entry points on the `default` queue (integrations.* is routed there)."""

from __future__ import annotations

from celery import shared_task

from integrations.services import webhook_deliver


@shared_task(name="integrations.deliver", ignore_result=True)
def deliver(delivery_id: int) -> None:
    """One attempt; the next one, when the service asks for it, is a new message after the backoff."""
    retry_in = webhook_deliver(delivery_id=delivery_id)
    if retry_in is not None:
        deliver.apply_async((delivery_id,), countdown=retry_in)
