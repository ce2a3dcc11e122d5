"""Data-source pages (included by web.urls under data/, namespace web): the list and the register
form, and a data source's page with its schema, settings and SQL console."""

from django.urls import path

from web.views import datasources

urlpatterns = [
    path("", datasources.data_source_list, name="datasource-list"),
    path("new/", datasources.data_source_create_view, name="datasource-create"),
    path("<int:pk>/", datasources.data_source_detail, name="datasource-detail"),
    path("<int:pk>/query/", datasources.data_source_query_view, name="datasource-query"),
    path("<int:pk>/settings/", datasources.data_source_settings, name="datasource-settings"),
    path("<int:pk>/refresh/", datasources.data_source_refresh, name="datasource-refresh"),
    path("<int:pk>/delete/", datasources.data_source_delete_view, name="datasource-delete"),
]
