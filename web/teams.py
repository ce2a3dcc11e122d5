"""The team a signed-in browser is working in: chosen with the team switcher, kept in the session."""

from __future__ import annotations

from django.http import Http404, HttpRequest

from accounts.models import Membership, Team, User

SESSION_KEY = "web_team_id"


def memberships_of(user: User) -> list[Membership]:
    return list(Membership.objects.filter(user=user).select_related("team").order_by("team__name"))


def current_membership(request: HttpRequest) -> Membership:
    """The membership of the session's team, else the user's first; 404 for a user in no team."""
    user = request.user
    assert isinstance(user, User)
    memberships = memberships_of(user)
    if not memberships:
        raise Http404("You are not in any team yet: ask a team admin to add you.")
    chosen = request.session.get(SESSION_KEY)
    for membership in memberships:
        if membership.team_id == chosen:
            return membership
    return memberships[0]


def current_team(request: HttpRequest) -> Team:
    return current_membership(request).team


def team_switch(request: HttpRequest, team_id: int) -> Team:
    user = request.user
    assert isinstance(user, User)
    membership = Membership.objects.filter(user=user, team_id=team_id).select_related("team").first()
    if membership is None:
        raise Http404("No such team.")
    request.session[SESSION_KEY] = membership.team_id
    return membership.team


def team_of_form(request: HttpRequest) -> Team:
    """The team a create form was shown for (its hidden `team` field, else the session's), switched
    to: a switch in another tab meanwhile cannot put the new object into a different team. 404 for
    a team the user is not in."""
    try:
        team_id = int(request.POST.get("team", ""))
    except ValueError:
        team_id = current_membership(request).team_id
    if current_membership(request).team_id != team_id:
        return team_switch(request, team_id)
    return current_membership(request).team
