"""Thin Celery entry points for the model lifecycle."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from models_registry.models import Provider
from models_registry.services import provider_reconcile, registration_heal


@shared_task(name="models_registry.reconcile", ignore_result=True)
def reconcile() -> None:
    """Beat runs this every few seconds: statuses refreshed, models that should run and do not
    are relaunched, each in its own task so one slow launch holds up no other."""
    for provider in Provider.objects.all():
        for registration_id in provider_reconcile(provider=provider):
            heal.delay(registration_id)


@shared_task(
    name="models_registry.heal",
    ignore_result=True,
    soft_time_limit=settings.XINFERENCE_LAUNCH_TIMEOUT_S + 60,
    time_limit=settings.XINFERENCE_LAUNCH_TIMEOUT_S + 120,
)
def heal(registration_id: int) -> None:
    registration_heal(registration_id=registration_id)
