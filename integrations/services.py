"""Writes: webhooks, events emitted after commit (never failing the caller), and deliveries: signed
POSTs with retries and backoff, each attempt recorded on its delivery row.

Receivers verify `X-Chatplatform-Signature: sha256=<hex>`, the HMAC-SHA256 of
`f"{X-Chatplatform-Timestamp}.{raw body}"` keyed with the webhook's secret (`webhook_signature`),
and should refuse timestamps more than a few minutes old (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterable
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import urljoin

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Team, User
from core.domain_errors import DomainError
from core.outbound import UnresolvableUrl, UnsafeUrl, outbound_client, outbound_url_check
from integrations.models import PING, DeliveryStatus, Webhook, WebhookDelivery, WebhookEvent

logger = logging.getLogger(__name__)
SECRET_PREFIX = "whsec_"  # noqa: S105 (a visible prefix, not a secret)
MAX_REDIRECTS = 3
FOLLOWED_REDIRECTS = (307, 308)  # these keep the method and the body by definition
USER_AGENT = "chatplatform-webhooks/1"
MAX_RETRY_AFTER_S = 3600


class WebhookError(DomainError):
    code = "invalid_webhook"


# --- webhooks ---------------------------------------------------------------------------------


def _clean_events(events: Iterable[str]) -> list[str]:
    names = sorted(set(events))
    unknown = [name for name in names if name not in WebhookEvent.values]
    if unknown:
        raise WebhookError(f"unknown events: {', '.join(unknown)}; choose from {', '.join(WebhookEvent.values)}")
    if not names:
        raise WebhookError(f"subscribe to at least one event: {', '.join(WebhookEvent.values)}")
    return names


def webhook_create(
    *, team: Team, url: str, events: Iterable[str], description: str = "", created_by: User | None = None
) -> Webhook:
    """A new webhook with a freshly generated secret (`webhook.secret`: show it to its creator)."""
    outbound_url_check(url)
    return Webhook.objects.create(
        team=team,
        url=url.strip(),
        events=_clean_events(events),
        description=description,
        secret=SECRET_PREFIX + secrets.token_urlsafe(32),
        created_by=created_by,
    )


def webhook_update(
    *,
    webhook: Webhook,
    url: str | None = None,
    events: Iterable[str] | None = None,
    description: str | None = None,
    is_active: bool | None = None,
) -> Webhook:
    changed = ["updated_at"]
    if url is not None and url != webhook.url:
        outbound_url_check(url)
        webhook.url = url.strip()
        changed.append("url")
    if events is not None:
        webhook.events = _clean_events(events)
        changed.append("events")
    if description is not None:
        webhook.description = description
        changed.append("description")
    if is_active is not None:
        webhook.is_active = is_active
        changed.append("is_active")
    webhook.save(update_fields=changed)
    return webhook


def webhook_signature(*, secret: str, timestamp: str | int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 over f"{timestamp}.{body}" keyed with the webhook's secret."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


# --- emitting ---------------------------------------------------------------------------------


def webhook_emit(*, team_id: int, event: str, payload: dict[str, Any]) -> None:
    """Deliver `event` to the team's active webhooks that subscribe to it, once the current
    transaction commits (at once outside one). Never raises: a webhook problem must not fail the
    upload, the answer or the conversation that caused the event."""

    def emit() -> None:
        try:
            # A savepoint: a failure here cannot poison a transaction around it.
            with transaction.atomic():
                _emit_now(team_id=team_id, event=event, payload=payload)
        except Exception:
            logger.exception("could not queue the %s webhooks of team %s", event, team_id)

    try:
        transaction.on_commit(emit)
    except Exception:
        logger.exception("could not schedule the %s webhooks of team %s", event, team_id)


def _emit_now(*, team_id: int, event: str, payload: dict[str, Any]) -> list[int]:
    webhook_ids = Webhook.objects.filter(team_id=team_id, is_active=True, events__contains=[event]).values_list(
        "pk", flat=True
    )
    deliveries = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(webhook_id=webhook_id, event=event, payload=payload) for webhook_id in webhook_ids]
    )
    for delivery in deliveries:
        # Queued once the rows are committed; an unreachable broker is logged, never raised.
        transaction.on_commit(partial(_queue, delivery.pk), robust=True)
    return [delivery.pk for delivery in deliveries]


def _queue(delivery_id: int) -> None:
    from integrations.tasks import deliver

    deliver.delay(delivery_id)


def webhook_ping(*, webhook: Webhook) -> WebhookDelivery:
    """A `ping` event to this webhook alone (whatever it subscribes to), queued after commit."""
    delivery = WebhookDelivery.objects.create(
        webhook=webhook, event=PING, payload={"webhook_id": webhook.pk, "events": webhook.events}
    )
    transaction.on_commit(partial(_queue, delivery.pk), robust=True)
    return delivery


def webhook_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again from its first attempt (after the receiver was fixed)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=None, last_error="", delivered_at=None
    )
    transaction.on_commit(partial(_queue, delivery.pk), robust=True)
    delivery.refresh_from_db()
    return delivery


# --- delivering -------------------------------------------------------------------------------


def _claim(delivery_id: int) -> WebhookDelivery | None:
    """Count an attempt and hold the delivery for it; None when it is done, gone, or held (a
    duplicate message, or one that came before its backoff ended)."""
    now = timezone.now()
    hold = timedelta(seconds=settings.WEBHOOK_TIMEOUT_S * (MAX_REDIRECTS + 1) + 30)
    claimed = (
        WebhookDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(attempts=F("attempts") + 1, next_attempt_at=now + hold)
    )
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("webhook").get(pk=delivery_id)


def _body(delivery: WebhookDelivery) -> bytes:
    envelope = {
        "id": delivery.pk,
        "event": delivery.event,
        "created_at": delivery.created_at.isoformat(),
        "team_id": delivery.webhook.team_id,
        "webhook_id": delivery.webhook_id,
        "data": delivery.payload,
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


def _post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST the event. Redirects: at most MAX_REDIRECTS (3), followed by hand and only for 307 and
    308, which keep the method and the body; every hop goes through the outbound transport, which
    checks its address with the SSRF guard and connects to the address it approved.
    301/302/303 would turn the POST into a body-less GET, so they are not followed: the caller
    records them as failures naming the new location. The response body is never read."""
    with outbound_client(timeout=settings.WEBHOOK_TIMEOUT_S, shorten_answers=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            outbound_url_check(url)  # refused or unresolvable before anything is sent
            response = client.send(client.build_request("POST", url, content=body, headers=headers), stream=True)
            response.close()
            location = response.headers.get("location")
            if response.status_code not in FOLLOWED_REDIRECTS or not location:
                return response
            url = urljoin(url, location)
    raise UnsafeUrl(f"the receiver redirected more than {MAX_REDIRECTS} times: set the webhook URL to the final one")


def _finish(delivery: WebhookDelivery, *, status: str, response_status: int | None, error: str) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=status,
        response_status=response_status,
        last_error=error[:4000],
        next_attempt_at=None,
        delivered_at=timezone.now() if status == DeliveryStatus.DELIVERED else None,
    )


def _retry_later(
    delivery: WebhookDelivery, *, response_status: int | None, error: str, retry_after: float | None = None
) -> float | None:
    if delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        error = f"{error} (gave up after {delivery.attempts} attempts)"
        _finish(delivery, status=DeliveryStatus.FAILED, response_status=response_status, error=error)
        return None
    delay = settings.WEBHOOK_RETRY_BASE_S * 2 ** (delivery.attempts - 1)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        response_status=response_status,
        last_error=f"{error}; retrying in {delay:g}s"[:4000],
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
    )
    return delay


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def webhook_deliver(*, delivery_id: int) -> float | None:
    """One attempt to deliver. Returns the seconds to wait before the next attempt when the
    delivery should be tried again (network errors, timeouts, 5xx, 429; at most
    WEBHOOK_MAX_ATTEMPTS attempts, backoff doubling from WEBHOOK_RETRY_BASE_S), else None:
    delivered, failed for good (other 4xx, an unfollowed redirect, an unsafe address), or not this
    call's to make (already done, gone, or held by another attempt)."""
    delivery = _claim(delivery_id)
    if delivery is None:
        return None
    webhook = delivery.webhook
    if not webhook.is_active and delivery.event != PING:
        _finish(delivery, status=DeliveryStatus.FAILED, response_status=None, error="the webhook is disabled")
        return None
    body = _body(delivery)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Chatplatform-Event": delivery.event,
        "X-Chatplatform-Delivery": str(delivery.pk),
        "X-Chatplatform-Timestamp": timestamp,
        "X-Chatplatform-Signature": webhook_signature(secret=webhook.secret, timestamp=timestamp, body=body),
    }
    try:
        response = _post(webhook.url, body, headers)
    except UnresolvableUrl as exc:
        return _retry_later(delivery, response_status=None, error=str(exc))
    except UnsafeUrl as exc:
        _finish(delivery, status=DeliveryStatus.FAILED, response_status=None, error=str(exc))
        return None
    except httpx.TransportError as exc:
        return _retry_later(delivery, response_status=None, error=f"{type(exc).__name__}: {exc or 'no detail'}")
    except httpx.HTTPError as exc:
        _finish(delivery, status=DeliveryStatus.FAILED, response_status=None, error=f"{type(exc).__name__}: {exc}")
        return None
    code = response.status_code
    if 200 <= code < 300:
        _finish(delivery, status=DeliveryStatus.DELIVERED, response_status=code, error="")
        return None
    if code == 429 or code >= 500:
        return _retry_later(
            delivery, response_status=code, error=f"the receiver answered {code}", retry_after=_retry_after(response)
        )
    if 300 <= code < 400:
        where = response.headers.get("location", "nowhere")
        error = f"the receiver answered {code}, moved to {where}: set the webhook URL to the new address"
    else:
        error = f"the receiver answered {code}; not retried (only 429 and 5xx are)"
    _finish(delivery, status=DeliveryStatus.FAILED, response_status=code, error=error)
    return None
