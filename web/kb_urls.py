"""Knowledge-base pages for members (included by web.urls under kb/, namespace web), with each
knowledge base's evaluation pages under <pk>/evaluation/."""

from django.urls import path

from web.views import documents, evaluation, kb, kb_web_sources

urlpatterns = [
    path("", kb.kb_list, name="kb-list"),
    path("new/", kb.kb_create_view, name="kb-create"),
    path("<int:pk>/", kb.kb_detail, name="kb-detail"),
    path("<int:pk>/rebuild-decision/", kb.kb_rebuild_decision, name="kb-rebuild-decision"),
    path("<int:pk>/web-sources/", kb_web_sources.web_source_add, name="web-source-add"),
    path("<int:pk>/web-sources/<int:source_id>/sync/", kb_web_sources.web_source_sync, name="web-source-sync"),
    path("<int:pk>/web-sources/<int:source_id>/delete/", kb_web_sources.web_source_remove, name="web-source-delete"),
    path("<int:pk>/documents/<int:document_id>/", documents.document_page, name="kb-document"),
    path(
        "<int:pk>/documents/<int:document_id>/chunks/<int:chunk_id>/",
        documents.chunk_edit_view,
        name="kb-chunk-edit",
    ),
    path(
        "<int:pk>/documents/<int:document_id>/edits/<int:edit_id>/delete/",
        documents.chunk_edit_delete_view,
        name="kb-chunk-edit-delete",
    ),
    path("<int:pk>/evaluation/", evaluation.evaluation_page, name="kb-evaluation"),
    path("<int:pk>/evaluation/sets/", evaluation.evaluation_set_create_view, name="evaluation-set-create"),
    path("<int:pk>/evaluation/sets/<int:set_id>/", evaluation.evaluation_set_page, name="evaluation-set"),
    path("<int:pk>/evaluation/import/", evaluation.evaluation_import, name="evaluation-import"),
    path("<int:pk>/evaluation/runs/", evaluation.evaluation_run_start, name="evaluation-run-start"),
    path("<int:pk>/evaluation/draft/", evaluation.evaluation_draft, name="evaluation-draft"),
    path("<int:pk>/evaluation/from-hit/", evaluation.evaluation_from_hit, name="evaluation-from-hit"),
    path("<int:pk>/evaluation/items/<int:item_id>/accept/", evaluation.item_accept, name="evaluation-item-accept"),
    path("<int:pk>/evaluation/items/<int:item_id>/delete/", evaluation.item_remove, name="evaluation-item-delete"),
]
