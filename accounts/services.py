"""Writes: teams, memberships, API keys, and the first-start bootstrap."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import ApiKey, Membership, Role, Scope, Team, User
from accounts.selectors import api_key_hash, api_key_is_stale
from chat.rooms import room_access_changed
from core.domain_errors import DomainError

API_KEY_PREFIX = "cp_"
API_KEY_VISIBLE_CHARS = 12


class AccountsError(DomainError):
    """A request the accounts services refuse; the message says what to do instead."""


class AccountsForbidden(AccountsError):
    status_code = 403
    code = "permission_denied"


@transaction.atomic
def team_create(*, name: str, owner: User, slug: str = "") -> Team:
    slug = slug or slugify(name)
    if not slug:
        raise AccountsError("a team needs a name with at least one letter or digit")
    if Team.objects.filter(slug=slug).exists():
        raise AccountsError(f"a team with the slug {slug!r} exists already: choose another name or slug")
    team = Team.objects.create(name=name, slug=slug)
    Membership.objects.create(team=team, user=owner, role=Role.OWNER)
    return team


@transaction.atomic
def membership_set(*, team: Team, user: User, role: Role) -> Membership:
    _refuse_losing_last_owner(team=team, user=user, new_role=role)
    membership, _created = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
    # Open team-room sockets checked the role when they connected: a demoted viewer stops writing now.
    transaction.on_commit(partial(room_access_changed, user_id=user.pk, team_id=team.pk))
    return membership


@transaction.atomic
def membership_remove(*, team: Team, user: User) -> None:
    _refuse_losing_last_owner(team=team, user=user, new_role=None)
    Membership.objects.filter(team=team, user=user).delete()
    # The user's keys acted in this team only: they stop working with the membership.
    ApiKey.objects.filter(team=team, user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    # And so do their open team-room sockets, which would otherwise keep reading and posting.
    transaction.on_commit(partial(room_access_changed, user_id=user.pk, team_id=team.pk))


def _refuse_losing_last_owner(*, team: Team, user: User, new_role: Role | None) -> None:
    owners = Membership.objects.select_for_update().filter(team=team, role=Role.OWNER)
    if new_role != Role.OWNER and list(owners.values_list("user_id", flat=True)) == [user.pk]:
        raise AccountsError("this is the team's last owner: make someone else owner first")


@transaction.atomic
def api_key_create(
    *,
    user: User,
    team: Team,
    name: str,
    scopes: Sequence[str] | None = None,
    expires_at: datetime | None = None,
    rate_limit_per_minute: int | None = None,
    issued_by: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its secret; the secret exists only in the return value. A key made with
    another key (`issued_by`) never carries a scope that key lacks (unless it has `admin`) and
    never outlives it: with no expiry given it expires with it."""
    if not Membership.objects.filter(user=user, team=team).exists():
        raise AccountsError(f"{user.username} is not a member of the team {team.slug!r}: add them to it first")
    chosen_scopes = list(scopes) if scopes is not None else [Scope.READ, Scope.WRITE, Scope.CHAT]
    unknown = sorted(set(chosen_scopes) - set(Scope.values))
    if unknown:
        raise AccountsError(f"unknown scopes {unknown}: choose from {sorted(Scope.values)}")
    if expires_at is not None and expires_at <= timezone.now():
        raise AccountsError("the expiry lies in the past: give a future date or none")
    if issued_by is not None:
        wider = sorted(set(chosen_scopes) - set(issued_by.scopes))
        if wider and Scope.ADMIN not in issued_by.scopes:
            raise AccountsForbidden(f"this key cannot grant scopes it lacks: {wider}")
        if issued_by.expires_at is not None:
            if expires_at is not None and expires_at > issued_by.expires_at:
                limit = f"{issued_by.expires_at:%Y-%m-%d %H:%M} UTC"
                raise AccountsError(f"a key cannot outlive the key that made it: give an expiry before {limit}")
            expires_at = expires_at or issued_by.expires_at
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        user=user,
        team=team,
        name=name,
        prefix=secret[:API_KEY_VISIBLE_CHARS],
        key_hash=api_key_hash(secret),
        scopes=chosen_scopes,
        expires_at=expires_at,
        rate_limit_per_minute=rate_limit_per_minute,
    )
    return key, secret


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_mark_used(*, key: ApiKey) -> None:
    if api_key_is_stale(key):
        key.last_used_at = timezone.now()
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=key.last_used_at)


@dataclass(frozen=True)
class BootstrapResult:
    team: Team
    admin: User
    generated_password: str | None  # set only when this call created the admin with a new password


@transaction.atomic
def platform_bootstrap(*, admin_username: str = "admin", admin_password: str = "") -> BootstrapResult:
    """The default team and the admin user in it; idempotent, so every start may call it."""
    team, _ = Team.objects.get_or_create(slug=settings.DEFAULT_TEAM_SLUG, defaults={"name": "Default team"})
    admin = User.objects.filter(username=admin_username).first()
    generated_password = None
    if admin is None:
        password = admin_password or secrets.token_urlsafe(16)
        generated_password = None if admin_password else password
        admin = User.objects.create_superuser(username=admin_username, email="", password=password)
    Membership.objects.get_or_create(team=team, user=admin, defaults={"role": Role.OWNER})
    return BootstrapResult(team=team, admin=admin, generated_password=generated_password)
