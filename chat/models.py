"""Assistants, conversations (personal or shared team rooms) and their messages."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from accounts.models import Team
from kb.models import KnowledgeBase, RetrievalMode
from models_registry.models import ModelRegistration


class Assistant(models.Model):
    """A team's named configuration: which model answers, from which knowledge bases, how."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="assistants")
    name = models.CharField(max_length=120)
    llm = models.ForeignKey(ModelRegistration, on_delete=models.PROTECT, related_name="assistants")
    knowledge_bases = models.ManyToManyField(KnowledgeBase, blank=True, related_name="assistants")
    data_sources = models.ManyToManyField(
        "datasources.DataSource",
        blank=True,
        related_name="assistants",
        help_text="Databases the assistant answers from in SQL (datasources.text_to_sql).",
    )
    # Tool specs (chat.tools): knowledge_base_search, sql, http (OpenAPI), mcp; header secrets encrypted.
    tools = models.JSONField(default=list, blank=True)
    system_prompt = models.TextField(blank=True, default="You are a helpful assistant for the team.")
    retrieval_mode = models.CharField(max_length=10, choices=RetrievalMode.choices, default=RetrievalMode.HYBRID)
    top_k = models.PositiveSmallIntegerField(default=4)
    score_threshold = models.FloatField(null=True, blank=True)
    rerank_model = models.ForeignKey(
        ModelRegistration, on_delete=models.SET_NULL, null=True, blank=True, related_name="reranking_assistants"
    )
    # Memory budget, in tokens (estimated): recent turns kept verbatim, and the running summary.
    recent_tokens = models.PositiveIntegerField(default=1200)
    summary_tokens = models.PositiveIntegerField(default=300)
    max_answer_tokens = models.PositiveIntegerField(default=512)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team__name", "name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="assistant_unique_team_name")]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="conversations")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    assistant = models.ForeignKey(Assistant, on_delete=models.PROTECT, related_name="conversations")
    title = models.CharField(max_length=200, blank=True, default="")
    is_room = models.BooleanField(default=False, help_text="A team room: every member of the team takes part.")
    # Summary memory: turns up to and including `summarized_up_to` are folded into `summary`.
    summary = models.TextField(blank=True, default="")
    summarized_up_to = models.BigIntegerField(default=0, help_text="Id of the last message folded in.")
    # File chat: files dropped into the conversation live in a knowledge base of its own.
    file_knowledge_base = models.OneToOneField(
        KnowledgeBase, on_delete=models.SET_NULL, null=True, blank=True, related_name="file_conversation"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-pk"]
        indexes = [models.Index(fields=["team", "owner", "-updated_at"], name="conversation_list_idx")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class MessageStatus(models.TextChoices):
    STREAMING = "streaming", "Streaming"
    COMPLETE = "complete", "Complete"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    content = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=MessageStatus.choices, default=MessageStatus.COMPLETE)
    error = models.TextField(blank=True, default="")
    # [{"index", "chunk_id", "document_id", "document_name", "knowledge_base_id", "snippet", "score"}]
    citations = models.JSONField(default=list, blank=True)
    # Tools the answer used, with their results: [{"tool": "sql", "data_source_id", "sql", "columns",
    # "rows", "row_count", "truncated", "error", "attempts"}] (datasources.text_to_sql).
    tool_calls = models.JSONField(default=list, blank=True)
    retrieval_query = models.TextField(blank=True, default="")
    model_name = models.CharField(max_length=200, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)
    feedback = models.SmallIntegerField(default=0, help_text="1 up, -1 down, 0 none.")
    feedback_comment = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]
        indexes = [models.Index(fields=["conversation", "id"], name="message_conversation_idx")]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"
