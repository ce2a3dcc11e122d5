"""/v1/: the OpenAI-compatible API. No trailing slashes: clients call /v1/chat/completions."""

from django.urls import path

from integrations.openai_api import EmbeddingsView, ModelDetailView, ModelListView, chat_completions

urlpatterns = [
    path("models", ModelListView.as_view(), name="openai-models"),
    path("models/<path:model>", ModelDetailView.as_view(), name="openai-model"),
    path("chat/completions", chat_completions, name="openai-chat-completions"),
    path("embeddings", EmbeddingsView.as_view(), name="openai-embeddings"),
]
