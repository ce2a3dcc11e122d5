"""Fine-tuning dataset pages (included by web.urls under datasets/, namespace web): the list and
the build form, a dataset's page, its download and delete, the review page for gold answers, and
the adapters registered from a dataset with their comparisons (web.views.adapters)."""

from django.urls import path

from web.views import adapters, datasets

urlpatterns = [
    path("", datasets.dataset_list, name="dataset-list"),
    path("new/", datasets.dataset_create_view, name="dataset-create"),
    path("review/", datasets.review_page, name="dataset-review"),
    path("review/<int:message_id>/gold/", datasets.gold_set_view, name="dataset-gold-set"),
    path("review/<int:message_id>/gold/delete/", datasets.gold_delete_view, name="dataset-gold-delete"),
    path("<int:pk>/", datasets.dataset_page, name="dataset-detail"),
    path("<int:pk>/download/", datasets.dataset_download, name="dataset-download"),
    path("<int:pk>/delete/", datasets.dataset_delete_view, name="dataset-delete"),
    path("<int:pk>/adapters/", adapters.adapter_register_view, name="dataset-adapter-register"),
    path("<int:pk>/adapters/<int:adapter_id>/delete/", adapters.adapter_delete_view, name="dataset-adapter-delete"),
    path(
        "<int:pk>/adapters/<int:adapter_id>/comparisons/",
        adapters.comparison_start_view,
        name="dataset-comparison-start",
    ),
    path("<int:pk>/comparisons/<int:comparison_id>/", adapters.comparison_page, name="dataset-comparison"),
]
