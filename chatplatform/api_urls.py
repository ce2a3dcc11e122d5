"""The REST API under /api/v1/: each app contributes its viewsets to one router."""

from rest_framework.routers import DefaultRouter

from accounts.api import TeamViewSet

router = DefaultRouter()
router.register("teams", TeamViewSet, basename="team")

urlpatterns = router.urls
