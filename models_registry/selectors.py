"""Reads of the model registry."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet

from accounts.models import ApiKey, Team, User
from accounts.selectors import team_scoped
from models_registry.models import ModelRegistration, Provider, ProviderKind, TeamModelDefaults


def team_providers(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Provider]:
    return team_scoped(Provider.objects.all(), user=user, api_key=api_key)


def team_default_model(*, team: Team, kind: str) -> ModelRegistration | None:
    defaults = TeamModelDefaults.objects.filter(team=team).select_related(f"{kind}__provider").first()
    return getattr(defaults, kind) if defaults is not None else None


def kept_running_uids(*, endpoint: str) -> set[str]:
    """Uids of the models that should be running on the Xinference at `endpoint`."""
    return set(
        ModelRegistration.objects.filter(
            keep_running=True, provider__kind=ProviderKind.XINFERENCE, provider__endpoint=endpoint.rstrip("/")
        ).values_list("provider_model_uid", flat=True)
    )
