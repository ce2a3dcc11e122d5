"""Users, teams, memberships with roles, and API keys (only a hash stored)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class User(AbstractUser):
    """The platform's user; custom from the first migration so it can grow without a data move."""

    language = models.CharField(
        max_length=10,
        blank=True,
        default="",
        choices=settings.LANGUAGES,
        help_text="The web interface's language; empty follows the browser.",
    )

    class Meta:
        db_table = "accounts_user"


class Team(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="API requests per minute for all the team's keys; empty: the platform default."
    )
    storage_quota_bytes = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Bytes of uploaded files the team may keep; empty: the platform default "
        "(TEAM_STORAGE_QUOTA_BYTES); 0: no limit.",
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


# Higher rank may do everything a lower rank may.
ROLE_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="membership_unique_user_team")]
        ordering = ["team__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    def has_role(self, minimum: Role) -> bool:
        return ROLE_RANK[Role(self.role)] >= ROLE_RANK[minimum]


class Scope(models.TextChoices):
    READ = "read", "Read"
    WRITE = "write", "Write"
    CHAT = "chat", "Chat"
    ADMIN = "admin", "Admin"


def default_scopes() -> list[str]:
    return [Scope.READ, Scope.WRITE, Scope.CHAT]


class ApiKey(models.Model):
    """A bearer key for one user acting in one team. The secret is shown once and never stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=120)
    prefix = models.CharField(max_length=16, unique=True, help_text="Shown to identify the key; not secret.")
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=default_scopes)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute for this key; empty: the platform default."
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class Usage(models.Model):
    """Tokens used per user, team, model and day (UTC); one row each, incremented in place."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="usage")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage")
    model_name = models.CharField(max_length=200)
    day = models.DateField()
    requests = models.PositiveIntegerField(default=0)
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user", "model_name", "day"], name="usage_unique_row"),
        ]
        indexes = [models.Index(fields=["team", "day"], name="usage_team_day_idx")]

    def __str__(self) -> str:
        return f"{self.team} {self.user} {self.model_name} {self.day}"


class QuotaReservation(models.Model):
    """Tokens set aside for a model call in flight, counted against the quotas until the call
    settles (the reservation becomes usage) or expires (its worker died)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="quota_reservations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota_reservations")
    tokens = models.PositiveBigIntegerField()
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["team", "expires_at"], name="quota_reservation_team_idx")]

    def __str__(self) -> str:
        return f"{self.team} {self.user} {self.tokens}"


class Quota(models.Model):
    """A daily token limit for a whole team (user empty) or for one user in it."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="quotas")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True)
    daily_tokens = models.PositiveBigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="quota_unique_team_user"),
            models.UniqueConstraint(
                fields=["team"], condition=models.Q(user__isnull=True), name="quota_unique_team_wide"
            ),
        ]

    def __str__(self) -> str:
        who = self.user or "whole team"
        return f"{self.team}: {who} {self.daily_tokens}/day"


API_KEY_USE_PATH_MAX = 1000


class ApiKeyUse(models.Model):
    """One request made with an API key: the audit log of key use. Written after the response by
    accounts.audit.ApiKeyAuditMiddleware, pruned after API_KEY_AUDIT_RETENTION_DAYS."""

    # SET_NULL and the copied prefix: deleting a key must not erase the record of what it did.
    key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="uses", verbose_name=_("API key")
    )
    key_prefix = models.CharField(_("key prefix"), max_length=16)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_key_uses", verbose_name=_("team"))
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="api_key_uses",
        verbose_name=_("user"),
    )
    method = models.CharField(_("method"), max_length=10)
    path = models.CharField(_("path"), max_length=API_KEY_USE_PATH_MAX)
    status_code = models.PositiveSmallIntegerField(_("status code"))
    client_ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("API key use")
        verbose_name_plural = _("API key uses")

    def __str__(self) -> str:
        return f"{self.key_prefix}… {self.method} {self.path} {self.status_code}"
