"""Knowledge-base pages for members (included by web.urls under kb/, namespace web)."""

from django.urls import path

from web.views import kb

urlpatterns = [
    path("", kb.kb_list, name="kb-list"),
]
