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
from evaluation.models import EvaluationRun
from models_registry.models import ModelRegistration


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
    # The percentage of conversations kept out of the training file (supervised formats), in
    # `heldout.jsonl`: a comparison of a trained adapter with its base model asks their
    # questions. 0 (LLaMA-Factory's val_size default): none.
    holdout_percent = models.PositiveSmallIntegerField(default=0)
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


class Adapter(models.Model):
    """A LoRA adapter trained on a dataset, registered on its base model: `registration` is a
    model of its own in the registry (the base's launch spec with the adapter in
    `lora_adapters`), chosen by assistants like any other."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="finetune_adapters")
    dataset = models.ForeignKey(Dataset, on_delete=models.SET_NULL, null=True, blank=True, related_name="adapters")
    base_model = models.ForeignKey(ModelRegistration, on_delete=models.PROTECT, related_name="+")
    registration = models.OneToOneField(ModelRegistration, on_delete=models.CASCADE, related_name="adapter")
    path = models.CharField(max_length=1000, help_text="The adapter's folder on the model server.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"adapter {self.registration_id} on {self.base_model_id}"


class ComparisonStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class Comparison(models.Model):
    """Base model against adapter, side by side: both answer the dataset's held-back questions
    (scored against the answers people kept), and each evaluation set runs once per model with
    answer scoring (`runs`: pairs of evaluation runs)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="finetune_comparisons")
    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="comparisons")
    status = models.CharField(max_length=10, choices=ComparisonStatus.choices, default=ComparisonStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100")
    row_limit = models.PositiveIntegerField(default=20)
    evaluation_set_ids = models.JSONField(default=list, blank=True)
    # {"base": {metric: value}, "adapter": {...}, "adapter_better": n, "base_better": n, "ties": n}
    metrics = models.JSONField(default=dict, blank=True)
    # [{"question", "reference", "base", "adapter", "base_scores", "adapter_scores"}]
    rows = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"comparison {self.pk} of adapter {self.adapter_id}"


class ComparisonRun(models.Model):
    """One evaluation set scored with each model's answers."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="evaluation_runs")
    base_run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="+")
    adapter_run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="+")

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"runs {self.base_run_id} and {self.adapter_run_id} of comparison {self.comparison_id}"
