"""Fine-tuning datasets built from a team's conversations, and reviewers' gold answers.

A dataset is a versioned snapshot: building the same name again makes the next version and the
older ones stay. What it holds is fixed when it is built (a zip in storage); the filters, the
role its creator had and the counts say how it was made."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from accounts.models import Role, Team
from chat.models import Message


class DatasetFormat(models.TextChoices):
    ALPACA = "alpaca", _("LLaMA-Factory alpaca")
    SHAREGPT = "sharegpt", _("LLaMA-Factory sharegpt")
    OPENAI = "openai", _("OpenAI chat JSONL")
    SWIFT = "swift", _("ms-swift messages")
    XTUNER = "xtuner", _("XTuner conversation")
    DPO = "dpo", _("Preference pairs (DPO)")
    RETRIEVAL_TRIPLES = "retrieval_triples", _("Retrieval triples (sentence-transformers)")


class DatasetStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    BUILDING = "building", _("Building")
    READY = "ready", _("Ready")
    FAILED = "failed", _("Failed")


class Dataset(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="finetune_datasets")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The creator's role when it was built: whose conversations it could hold (finetune.selectors).
    builder_role = models.CharField(max_length=10, choices=Role.choices)
    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    format = models.CharField(max_length=20, choices=DatasetFormat.choices)
    filters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=DatasetStatus.choices, default=DatasetStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100")
    # {"messages_read", "kept", "dropped": {reason: n}, "scrubbed": {kind: n}}
    counts = models.JSONField(default=dict, blank=True)
    preview = models.JSONField(default=list, blank=True, help_text="The first rows, as written.")
    error = models.TextField(blank=True, default="")
    file = models.FileField(upload_to="datasets/%Y/%m/", max_length=500, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    # Set by the worker that claims the build: a worker whose token was replaced (its task was
    # redelivered after it was presumed dead) stops without writing.
    build_token = models.UUIDField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name", "version"], name="finetune_dataset_unique_version"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class GoldAnswer(models.Model):
    """A reviewer's corrected answer: datasets use it instead of the assistant's. The message
    itself is never changed."""

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="gold_answer")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="gold_answers")
    text = models.TextField()
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"gold answer of message {self.message_id}"
