"""Outgoing webhooks per team, and every delivery of an event to one of them."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from accounts.models import Team


class WebhookEvent(models.TextChoices):
    DOCUMENT_READY = "document.ready", "A document finished ingesting"
    DOCUMENT_FAILED = "document.failed", "A document failed to ingest"
    CONVERSATION_CREATED = "conversation.created", "A conversation was started"
    MESSAGE_COMPLETED = "message.completed", "An assistant answer completed"
    EVALUATION_COMPLETED = "evaluation.completed", "An evaluation run finished"
    EVALUATION_REGRESSED = "evaluation.regressed", "An evaluation run ranks worse than the one before"


PING = "ping"  # sent by the Test action, whatever the webhook subscribes to


class Webhook(models.Model):
    """A team's HTTPS (or HTTP) endpoint that receives the events it subscribes to, signed with
    `secret`. The secret is a signing key the platform must read to sign, so it is stored as is
    (like a provider's endpoint, not like a password); the API shows it once, on creation."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True, default="")
    secret = models.CharField(max_length=100, editable=False)
    events = models.JSONField(default=list, help_text='Event names, e.g. ["document.ready"].')
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-pk"]
        indexes = [models.Index(fields=["team", "is_active"], name="webhook_team_active_idx")]

    def __str__(self) -> str:
        return self.url


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event for one webhook: its payload, and how the attempts to deliver it went."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=50)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # A worker holds the delivery until then (its attempt, or the backoff before the next one):
    # a message Redis delivers twice does not send the event twice.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["webhook", "-id"], name="delivery_webhook_idx")]

    def __str__(self) -> str:
        return f"{self.event} → {self.webhook_id} ({self.status})"
