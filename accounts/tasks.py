"""Thin Celery entry points for accounts (on the default queue)."""

from __future__ import annotations

from celery import shared_task

from accounts.audit import api_key_uses_prune
from accounts.quotas import quota_reservations_prune


@shared_task(name="accounts.prune_api_key_uses", ignore_result=True)
def prune_api_key_uses() -> int:
    """Beat runs this hourly: the API-key audit log keeps API_KEY_AUDIT_RETENTION_DAYS; expired
    quota reservations (their call's process died) go too."""
    quota_reservations_prune()
    return api_key_uses_prune()
