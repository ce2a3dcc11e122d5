"""Reads: which conversations, messages and assistants an actor may see. The REST API, the web
app, the rooms' socket and /v1 all ask here."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.db.models import Q, QuerySet

from accounts.models import ApiKey, User
from accounts.selectors import team_scoped
from chat.models import Assistant, Conversation, Message


def conversations_visible(
    *, user: User | AnonymousUser | None, api_key: ApiKey | None = None, queryset: QuerySet[Conversation] | None = None
) -> QuerySet[Conversation]:
    """The actor's own conversations and their teams' rooms (with a key: its team's only)."""
    rows = queryset if queryset is not None else Conversation.objects.all()
    return team_scoped(rows, user=user, api_key=api_key).filter(own_or_room(user))


def own_or_room(user: User | AnonymousUser | None, *, through: str = "") -> Q:
    """Which of a team's conversations the user sees: their own, and the rooms. `through` names
    the relation that reaches the conversation from another model (`file_conversation__`)."""
    return Q(**{f"{through}owner": user}) | Q(**{f"{through}is_room": True})


def messages_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Message]:
    return Message.objects.filter(conversation__in=conversations_visible(user=user, api_key=api_key))


def assistants_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Assistant]:
    return team_scoped(Assistant.objects.all(), user=user, api_key=api_key)
