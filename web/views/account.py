"""Sign-in, the team switcher and the language setting."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.models import User
from web.teams import team_switch


def _back(request: HttpRequest, fallback: str = "web:home") -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return redirect(target)
    return redirect(fallback)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("web:chat")


@login_required
@require_POST
def switch_team(request: HttpRequest) -> HttpResponse:
    try:
        team_id = int(request.POST.get("team", ""))
    except ValueError:
        return HttpResponseBadRequest(_("Choose a team from the list."))
    team_switch(request, team_id)
    return redirect("web:chat")


@require_POST
def set_language(request: HttpRequest) -> HttpResponse:
    """Saves the choice on the user (so it follows them to any browser) and in the cookie (so it
    holds before sign-in); an empty choice goes back to the browser's language."""
    language = request.POST.get("language", "")
    if language and language not in dict(settings.LANGUAGES):
        return HttpResponseBadRequest(_("Unknown language: choose one from the list."))
    if isinstance(request.user, User):
        request.user.language = language
        request.user.save(update_fields=["language"])
    response = _back(request)
    if language:
        response.set_cookie(settings.LANGUAGE_COOKIE_NAME, language, samesite="Lax")
    else:
        response.delete_cookie(settings.LANGUAGE_COOKIE_NAME)
    return response
