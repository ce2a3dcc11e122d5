"""The audit log of API key use: every request an API key authenticated (ApiKeyUse), written by a
middleware and pruned by beat. Admin actions are audited by Django's own LogEntry rows."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils import timezone

from accounts.models import API_KEY_USE_PATH_MAX, ApiKey, ApiKeyUse

logger = logging.getLogger(__name__)


# --- API key use ------------------------------------------------------------------------------


def client_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, which uvicorn already sets from X-Forwarded-For when the proxy is trusted
    (FORWARDED_ALLOW_IPS); the header itself is never read here, since any client can send it."""
    address = request.META.get("REMOTE_ADDR", "")
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def api_key_use_record(*, key: ApiKey, request: HttpRequest, status_code: int) -> None:
    """One INSERT. A failure is logged and swallowed: the audit log must never fail the request
    it describes (the response is already made). The atomic block is a savepoint when a caller's
    transaction is open, so a failed INSERT does not poison it."""
    own_transaction = not connection.in_atomic_block
    try:
        with transaction.atomic():
            if own_transaction:
                # Its own transaction (not a caller's): the commit need not wait for the WAL flush.
                # A crash of the database server may lose the last fraction of a second of these
                # rows, never corrupt them; every request pays a disk flush otherwise.
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
            ApiKeyUse.objects.create(
                key_id=key.pk,
                key_prefix=key.prefix,
                team_id=key.team_id,
                user_id=key.user_id,
                method=(request.method or "")[:10],
                # The path only: query strings can carry secrets the audit log should not keep.
                path=request.path[:API_KEY_USE_PATH_MAX],
                status_code=status_code,
                client_ip=client_ip(request),
            )
    except Exception:
        logger.exception("could not record the use of API key %s on %s %s", key.prefix, request.method, request.path)


class ApiKeyAuditMiddleware:
    """Records each request that an API key authenticated, with the status it answered.

    ApiKeyAuthentication runs inside the views (DRF, the streaming views and /v1 all wrap the
    request in a DRF Request), and DRF copies the authenticated key onto the Django request as
    `request.auth`: so the key is known here only after the view has run, as is the status.
    A streamed answer is recorded with the status it started with. Requests refused before a key
    is accepted (a bad key, 429 from the rate limit) have no key on them and are not recorded."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        key = getattr(request, "auth", None)
        if isinstance(key, ApiKey):
            api_key_use_record(key=key, request=request, status_code=response.status_code)
        return response


def api_key_uses_prune(*, now: datetime | None = None) -> int:
    """Delete the rows older than the retention; returns how many went."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.API_KEY_AUDIT_RETENTION_DAYS)
    deleted, _by_model = ApiKeyUse.objects.filter(created_at__lt=cutoff).delete()
    return deleted
