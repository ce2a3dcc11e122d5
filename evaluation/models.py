"""Evaluation sets (questions with the document that answers each), runs that score a knowledge
base's retrieval on a set, and each question's result in a run."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from accounts.models import Team
from kb.models import KnowledgeBase

# A rebuild is held when recall@5 of the default mode falls by more than this on any set.
DEFAULT_GATE_THRESHOLD = 0.02


class EvaluationSet(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="evaluation_sets")
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="evaluation_sets")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    gate_threshold = models.FloatField(
        default=DEFAULT_GATE_THRESHOLD,
        help_text="A rebuild whose recall@5 falls by more than this is held (0 to 1).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["knowledge_base_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "name"], name="evaluation_set_unique_kb_name"),
        ]

    def __str__(self) -> str:
        return self.name


class ItemStatus(models.TextChoices):
    ACCEPTED = "accepted", _("Accepted")
    DRAFT = "draft", _("Draft (not counted until accepted)")


class ItemSource(models.TextChoices):
    MANUAL = "manual", _("Written by hand")
    IMPORT = "import", _("Imported")
    HIT_TEST = "hit_test", _("From hit testing")
    CHAT = "chat", _("From a good chat answer")
    DRAFTED = "drafted", _("Drafted by the team's model")


class EvaluationItem(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="evaluation_items")
    evaluation_set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="items")
    question = models.TextField()
    # File names of the documents that answer it (any one of them counts).
    expected_documents = models.JSONField(default=list)
    expected_answer = models.TextField(blank=True, default="", help_text="A short string the right passage contains.")
    status = models.CharField(max_length=10, choices=ItemStatus.choices, default=ItemStatus.ACCEPTED)
    source = models.CharField(max_length=10, choices=ItemSource.choices, default=ItemSource.MANUAL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["evaluation_set_id", "pk"]

    def __str__(self) -> str:
        return self.question[:80]


class RunStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class RunTrigger(models.TextChoices):
    MANUAL = "manual", _("Run by hand")
    REBUILD = "rebuild", _("A rebuild")
    SETTINGS = "settings", _("A chunking change")
    MODEL = "model", _("An embedding model change")
    IMPORT = "import", _("An import")


class EvaluationRun(models.Model):
    """One scoring of a set against a generation of its knowledge base. A rebuild's gate run
    (`candidate_generation` set) scores the live generation too (`baseline_metrics`), in the same
    run, so the comparison is of the same questions over the same documents."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="evaluation_runs")
    evaluation_set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="runs")
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="evaluation_runs")
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100")
    trigger = models.CharField(max_length=10, choices=RunTrigger.choices, default=RunTrigger.MANUAL)
    modes = models.JSONField(default=list)
    top_k = models.PositiveSmallIntegerField(default=10)
    answer_scoring = models.BooleanField(
        default=False, help_text="Also have the team's chat model answer and judge (evaluation.answers)."
    )
    rerank_model = models.ForeignKey(
        "models_registry.ModelRegistration", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The model that answers with answer scoring; none: the team's default chat model.
    answer_model = models.ForeignKey(
        "models_registry.ModelRegistration", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    generation = models.PositiveIntegerField(help_text="The knowledge base generation scored.")
    candidate_generation = models.PositiveIntegerField(null=True, blank=True)
    document_count = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    baseline_metrics = models.JSONField(null=True, blank=True)
    regressed = models.BooleanField(default=False)
    regression = models.TextField(blank=True, default="", help_text="What fell, and by how much.")
    error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]
        indexes = [models.Index(fields=["evaluation_set", "-id"], name="evaluation_run_set_idx")]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.evaluation_set_id}"


class EvaluationResult(models.Model):
    """One question in one run. The question and its expectations are copied: items change and
    go, a run's history does not. `retrieved` keeps, per mode, the top chunks (document, chunk
    id, a snippet): the chunks of an old generation are deleted after a swap."""

    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="results")
    item = models.ForeignKey(EvaluationItem, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    question = models.TextField()
    expected_documents = models.JSONField(default=list)
    expected_answer = models.TextField(blank=True, default="")
    ranks = models.JSONField(default=dict, help_text="Per mode: the first rank of an expected document, or null.")
    answer_found = models.JSONField(default=dict, help_text="Per mode: the expected answer is in a top-5 chunk.")
    answer = models.JSONField(null=True, blank=True, help_text="With answer scoring: the model's answer, judged.")
    latencies_ms = models.JSONField(default=dict)
    retrieved = models.JSONField(default=dict)

    class Meta:
        ordering = ["run_id", "pk"]

    def __str__(self) -> str:
        return self.question[:80]
