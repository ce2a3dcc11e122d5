"""Reads: which teams an actor may see, and the one helper that scopes every team-owned queryset."""

from __future__ import annotations

import hashlib
from typing import TypeVar

from django.contrib.auth.models import AnonymousUser
from django.db.models import Model, QuerySet
from django.utils import timezone

from accounts.models import ROLE_RANK, ApiKey, Membership, Role, Team, User

ModelT = TypeVar("ModelT", bound=Model)


def api_key_hash(secret: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_get_active(*, secret: str) -> ApiKey | None:
    """The unrevoked, unexpired key with this secret whose user is active, or None."""
    key = ApiKey.objects.select_related("user", "team").filter(key_hash=api_key_hash(secret)).first()
    if key is None or not key.is_active or not key.user.is_active:
        return None
    return key


def team_ids_for(
    *, user: User | AnonymousUser | None, api_key: ApiKey | None = None, minimum_role: Role = Role.VIEWER
) -> QuerySet:
    """Ids of the teams this user may act in with at least `minimum_role`.

    A request made with an API key acts in the key's team only, even when its user belongs to others.
    """
    if user is None or not user.is_authenticated:
        return Membership.objects.none().values("team_id")
    allowed_roles = [role for role, rank in ROLE_RANK.items() if rank >= ROLE_RANK[minimum_role]]
    memberships = Membership.objects.filter(user=user, role__in=allowed_roles)
    if api_key is not None:
        memberships = memberships.filter(team_id=api_key.team_id)
    return memberships.values("team_id")


def team_scoped(
    queryset: QuerySet[ModelT],
    *,
    user: User | AnonymousUser | None,
    api_key: ApiKey | None = None,
    team_field: str = "team",
    minimum_role: Role = Role.VIEWER,
) -> QuerySet[ModelT]:
    """`queryset` narrowed to rows of the actor's teams: the only way views reach team-owned rows."""
    team_ids = team_ids_for(user=user, api_key=api_key, minimum_role=minimum_role)
    return queryset.filter(**{f"{team_field}__in": team_ids})


def has_team_role(*, user: User | AnonymousUser | None, api_key: ApiKey | None, team_id: int, role: Role) -> bool:
    """Whether the actor holds at least `role` in the team (through the key's team only, with a key)."""
    return team_ids_for(user=user, api_key=api_key, minimum_role=role).filter(team_id=team_id).exists()


def teams_for(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Team]:
    return team_scoped(Team.objects.all(), user=user, api_key=api_key, team_field="pk")


def membership_get(*, user: User, team: Team) -> Membership | None:
    return Membership.objects.filter(user=user, team=team).first()


def api_key_is_stale(key: ApiKey, *, seconds: int = 60) -> bool:
    """Whether last_used_at is old enough to be worth a write (one per minute, not one per request)."""
    return key.last_used_at is None or (timezone.now() - key.last_used_at).total_seconds() > seconds
