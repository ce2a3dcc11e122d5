"""The REST API under /api/v1/: each app contributes its viewsets to one router."""

from rest_framework.routers import DefaultRouter

from accounts.api import ApiKeyViewSet, TeamViewSet, UsageViewSet
from chat.api import AssistantViewSet, ConversationViewSet
from datasources.api import DataSourceViewSet
from evaluation.api import EvaluationItemViewSet, EvaluationRunViewSet, EvaluationSetViewSet
from finetune.api import AdapterViewSet, ComparisonViewSet, DatasetViewSet
from integrations.api import WebhookViewSet
from kb.api import ChunkEditViewSet, ChunkViewSet, DocumentViewSet, KnowledgeBaseViewSet
from kb.web_api import WebSourceViewSet
from models_registry.api import ModelRegistrationViewSet, ProviderViewSet

router = DefaultRouter()
router.register("teams", TeamViewSet, basename="team")
router.register("api-keys", ApiKeyViewSet, basename="api-key")
router.register("usage", UsageViewSet, basename="usage")
router.register("providers", ProviderViewSet, basename="provider")
router.register("models", ModelRegistrationViewSet, basename="model")
router.register("knowledge-bases", KnowledgeBaseViewSet, basename="knowledge-base")
router.register("documents", DocumentViewSet, basename="document")
router.register("web-sources", WebSourceViewSet, basename="web-source")
router.register("chunks", ChunkViewSet, basename="chunk")
router.register("chunk-edits", ChunkEditViewSet, basename="chunk-edit")
router.register("evaluation-sets", EvaluationSetViewSet, basename="evaluation-set")
router.register("evaluation-items", EvaluationItemViewSet, basename="evaluation-item")
router.register("evaluation-runs", EvaluationRunViewSet, basename="evaluation-run")
router.register("assistants", AssistantViewSet, basename="assistant")
router.register("conversations", ConversationViewSet, basename="conversation")
router.register("webhooks", WebhookViewSet, basename="webhook")
router.register("data-sources", DataSourceViewSet, basename="data-source")
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("adapters", AdapterViewSet, basename="adapter")
router.register("comparisons", ComparisonViewSet, basename="comparison")

urlpatterns = router.urls
