from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest

from accounts.models import User
from web.teams import current_membership, memberships_of


def teams(request: HttpRequest) -> dict[str, Any]:
    """The team switcher's choices and the current team, on every page of a signed-in user."""
    user = getattr(request, "user", None)
    if not isinstance(user, User):
        return {}
    try:
        membership = current_membership(request)
    except Http404:
        return {"web_memberships": []}
    return {"web_memberships": memberships_of(user), "web_membership": membership, "web_team": membership.team}
