"""Knowledge-base pages for members (included by web.urls under kb/, namespace web)."""

from django.urls import path

from web.views import kb

urlpatterns = [
    path("", kb.kb_list, name="kb-list"),
    path("new/", kb.kb_create_view, name="kb-create"),
    path("<int:pk>/", kb.kb_detail, name="kb-detail"),
]
