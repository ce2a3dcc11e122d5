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
    return team_scoped(rows, user=user, api_key=api_key).filter(Q(owner=user) | Q(is_room=True))


def messages_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Message]:
    return Message.objects.filter(conversation__in=conversations_visible(user=user, api_key=api_key))


def assistants_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Assistant]:
    return team_scoped(Assistant.objects.all(), user=user, api_key=api_key)
