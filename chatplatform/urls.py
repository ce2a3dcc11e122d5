from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from chat.api import FeedbackView, conversation_messages, conversation_regenerate
from finetune.api import GoldAnswerView
from runtime.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    # Async entry points that stream (SSE) or answer as REST (restapi.async_views).
    path("api/v1/conversations/<int:pk>/messages/", conversation_messages, name="conversation-messages"),
    path("api/v1/conversations/<int:pk>/regenerate/", conversation_regenerate, name="conversation-regenerate"),
    path("api/v1/messages/<int:pk>/feedback/", FeedbackView.as_view(), name="message-feedback"),
    path("api/v1/messages/<int:pk>/gold/", GoldAnswerView.as_view(), name="message-gold"),
    path("api/v1/", include("chatplatform.api_urls")),
    path("v1/", include("integrations.openai_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include("web.urls")),
]
