"""Reads: which knowledge bases, documents and chunks an actor may see. One answer for the REST
API, the web app, search, chat and /v1: a team's knowledge bases, except the files dropped into
a conversation, which only those who see that conversation see."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.db.models import F, Q, QuerySet

from accounts.models import ApiKey, Role, User
from accounts.selectors import team_scoped
from kb.models import Chunk, ChunkEdit, Document, KnowledgeBase, WebSource


def knowledge_bases_visible(
    *, user: User | AnonymousUser | None, api_key: ApiKey | None = None, minimum_role: Role = Role.VIEWER
) -> QuerySet[KnowledgeBase]:
    """The actor's teams' knowledge bases, less the file knowledge bases of conversations the actor
    may not see: a conversation's files are its owner's, or the team's in a room.

    The conversation's own rule (chat.selectors.own_or_room) applied to the joined row rather
    than through conversations_visible as a subquery: one request's query took 4 ms to build in
    the ORM and 1.5 ms to plan that way. A file knowledge base is made in its conversation's team;
    a row that says otherwise is hidden."""
    from chat.selectors import own_or_room  # chat's models build on kb's

    return team_scoped(KnowledgeBase.objects.all(), user=user, api_key=api_key, minimum_role=minimum_role).filter(
        Q(file_conversation__isnull=True)
        | (Q(file_conversation__team=F("team")) & own_or_room(user, through="file_conversation__"))
    )


def documents_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Document]:
    return Document.objects.filter(knowledge_base__in=knowledge_bases_visible(user=user, api_key=api_key))


def chunks_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Chunk]:
    return Chunk.objects.filter(knowledge_base__in=knowledge_bases_visible(user=user, api_key=api_key))


def chunk_edits_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[ChunkEdit]:
    return ChunkEdit.objects.filter(document__in=documents_visible(user=user, api_key=api_key))


def web_sources_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[WebSource]:
    return WebSource.objects.filter(knowledge_base__in=knowledge_bases_visible(user=user, api_key=api_key))
