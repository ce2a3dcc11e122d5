"""A team's databases that assistants and members may query (read-only, through datasources.sql_guard)."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from accounts.models import Team


class DataSourceKind(models.TextChoices):
    POSTGRESQL = "postgresql", "PostgreSQL (by DSN)"
    MYSQL = "mysql", "MySQL or MariaDB (by DSN)"
    SQLITE = "sqlite", "SQLite (an uploaded file)"


class DataSource(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="data_sources")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True, default="", help_text="Told to the model: what the data is.")
    kind = models.CharField(max_length=12, choices=DataSourceKind.choices)
    dsn_encrypted = models.TextField(blank=True, default="", editable=False)
    sqlite_file = models.FileField(upload_to="data-sources/%Y/%m/", max_length=500, blank=True)
    # The introspected schema: [{"name", "columns": [{"name", "type"}], "sample_rows"}], refreshed
    # by schema/ and on create; the model's prompt is written from it.
    tables = models.JSONField(default=list, blank=True)
    allowed_tables = models.JSONField(default=list, blank=True, help_text="Table names queries may read.")
    sample_rows_allowed = models.BooleanField(
        default=True, help_text="Show a few rows of each table in the schema and to the model."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="datasource_unique_name_per_team")]

    def __str__(self) -> str:
        return self.name

    @property
    def dialect(self) -> str:
        dialects: dict[str, str] = {DataSourceKind.POSTGRESQL: "postgres", DataSourceKind.MYSQL: "mysql"}
        return dialects.get(self.kind, "sqlite")

    @property
    def has_dsn(self) -> bool:
        return self.kind in (DataSourceKind.POSTGRESQL, DataSourceKind.MYSQL)

    @property
    def default_schema(self) -> str:
        return "public" if self.kind == DataSourceKind.POSTGRESQL else ""
