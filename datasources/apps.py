from django.apps import AppConfig


class DataSourcesConfig(AppConfig):
    name = "datasources"
    verbose_name = "Data sources"
