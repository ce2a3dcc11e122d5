"""Model providers (Xinference, OpenAI-compatible servers) and the models registered on them."""

from __future__ import annotations

from django.db import models

from accounts.models import Team


class ProviderKind(models.TextChoices):
    XINFERENCE = "xinference", "Xinference"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (vLLM, Ollama, LMDeploy, llama.cpp)"


class Provider(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="providers")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=20, choices=ProviderKind.choices)
    endpoint = models.URLField(help_text="Base URL without /v1, e.g. http://xinference:9997")
    credentials_encrypted = models.TextField(blank=True, default="", editable=False)
    is_embedded = models.BooleanField(
        default=False, editable=False, help_text="The local Xinference that `make run` starts and manages."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team__name", "name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="provider_unique_team_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    @property
    def has_credentials(self) -> bool:
        return bool(self.credentials_encrypted)


class ModelKind(models.TextChoices):
    LLM = "llm", "LLM"
    EMBEDDING = "embedding", "Embedding"
    RERANK = "rerank", "Rerank"


class ModelStatus(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    LAUNCHING = "launching", "Launching"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    UNREACHABLE = "unreachable", "Provider unreachable"
    FAILED = "failed", "Failed"


class ModelRegistration(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="model_registrations")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="registrations")
    kind = models.CharField(max_length=10, choices=ModelKind.choices)
    name = models.CharField(max_length=120, help_text="Display name.")
    provider_model_uid = models.CharField(
        max_length=200, help_text="The model's id on the provider (Xinference model_uid, or the served model name)."
    )
    launch_spec = models.JSONField(
        default=dict,
        blank=True,
        help_text="Xinference launch options: model_name, model_engine, model_format, model_size_in_billions, "
        "quantization, n_gpu, replica, download_hub, lora_adapters.",
    )
    custom_spec = models.JSONField(
        null=True, blank=True, help_text="For a custom Xinference model: the registration spec, re-registered on heal."
    )
    dimensions = models.PositiveIntegerField(null=True, blank=True, help_text="Embedding models: vector size.")
    context_length = models.PositiveIntegerField(null=True, blank=True)
    keep_running = models.BooleanField(default=True, help_text="Relaunch whenever it is found not running.")
    status = models.CharField(max_length=12, choices=ModelStatus.choices, default=ModelStatus.UNKNOWN)
    last_error = models.TextField(blank=True, default="")
    last_checked_at = models.DateTimeField(null=True, blank=True)
    failure_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team__name", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "provider_model_uid"], name="registration_unique_uid"),
            models.CheckConstraint(
                condition=~models.Q(kind="embedding") | models.Q(dimensions__isnull=False),
                name="registration_embedding_has_dimensions",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} [{self.kind}, {self.status}]"


class ModelEvent(models.Model):
    """What happened to a registration: launches, terminations, heals, failures."""

    class Kind(models.TextChoices):
        LAUNCHED = "launched", "Launched"
        HEALED = "healed", "Healed (relaunched after it was found not running)"
        TERMINATED = "terminated", "Terminated"
        FAILED = "failed", "Launch failed"
        UNREACHABLE = "unreachable", "Provider unreachable"
        TESTED = "tested", "Tested"

    registration = models.ForeignKey(ModelRegistration, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    message = models.TextField(blank=True, default="")
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["registration", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.registration.name}: {self.kind}"


class TeamModelDefaults(models.Model):
    """The models a team's new assistants and knowledge bases use unless told otherwise."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="model_defaults")
    llm = models.ForeignKey(ModelRegistration, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    embedding = models.ForeignKey(ModelRegistration, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    rerank = models.ForeignKey(ModelRegistration, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        verbose_name_plural = "team model defaults"

    def __str__(self) -> str:
        return f"Defaults of {self.team}"
