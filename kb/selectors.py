"""Reads: which knowledge bases, documents and chunks an actor may see. One answer for the REST
API, the web app, search, chat and /v1: a team's knowledge bases, except the files dropped into
a conversation, which only those who see that conversation see."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.db.models import Q, QuerySet

from accounts.models import ApiKey, Role, User
from accounts.selectors import team_scoped
from kb.models import Chunk, ChunkEdit, Document, KnowledgeBase, WebSource


def knowledge_bases_visible(
    *, user: User | AnonymousUser | None, api_key: ApiKey | None = None, minimum_role: Role = Role.VIEWER
) -> QuerySet[KnowledgeBase]:
    from chat.selectors import conversations_visible  # chat's models build on kb's

    conversations = conversations_visible(user=user, api_key=api_key)
    return team_scoped(KnowledgeBase.objects.all(), user=user, api_key=api_key, minimum_role=minimum_role).filter(
        Q(file_conversation__isnull=True) | Q(file_conversation__in=conversations)
    )


def documents_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Document]:
    return Document.objects.filter(knowledge_base__in=knowledge_bases_visible(user=user, api_key=api_key))


def chunks_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Chunk]:
    return Chunk.objects.filter(knowledge_base__in=knowledge_bases_visible(user=user, api_key=api_key))


def chunk_edits_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[ChunkEdit]:
    return ChunkEdit.objects.filter(document__in=documents_visible(user=user, api_key=api_key))


def web_sources_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[WebSource]:
    return WebSource.objects.filter(knowledge_base__in=knowledge_bases_visible(user=user, api_key=api_key))
