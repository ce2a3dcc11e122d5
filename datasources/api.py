"""/api/v1/data-sources/ (+ {id}/schema/, {id}/query/): members see the team's data sources and
query them (the SQL console); admins register, change and delete them. A DSN's password is never
shown again after it is sent."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role, User
from accounts.selectors import has_team_role
from datasources.models import DataSource, DataSourceKind
from datasources.services import (
    data_source_create,
    data_source_delete,
    data_source_query,
    data_source_refresh_schema,
    data_source_update,
    dsn_without_password,
)
from models_registry.credentials import credentials_decrypt
from restapi.serializers import StrictFieldsMixin, validated
from restapi.viewsets import TeamScopedModelViewSet


class DataSourceSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id", required=False, help_text="Defaults to your only team.")
    kind = serializers.ChoiceField(
        choices=DataSourceKind.choices,
        help_text="postgresql or mysql (send `dsn`), or sqlite (send the database as multipart `file`).",
    )
    dsn = serializers.CharField(
        write_only=True,
        required=False,
        max_length=2000,
        help_text="postgresql://user:password@host:5432/dbname or mysql://user:password@host:3306/dbname",
    )
    file = serializers.FileField(write_only=True, required=False, help_text="A SQLite database file.")
    dsn_display = serializers.SerializerMethodField(help_text="The DSN with its password hidden.")
    allowed_tables = serializers.ListField(child=serializers.CharField(max_length=300), required=False)

    class Meta:
        model = DataSource
        fields = [
            "id",
            "team",
            "name",
            "description",
            "kind",
            "dsn",
            "file",
            "dsn_display",
            "allowed_tables",
            "sample_rows_allowed",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def get_dsn_display(self, source: DataSource) -> str:
        if not source.has_dsn or not source.dsn_encrypted:
            return ""
        return dsn_without_password(credentials_decrypt(source.dsn_encrypted))

    def validate_kind(self, kind: str) -> str:
        if self.instance is not None and kind != self.instance.kind:
            raise serializers.ValidationError("A data source's kind cannot change: register a new one.")
        return kind


class QueryInputSerializer(StrictFieldsMixin, serializers.Serializer):
    sql = serializers.CharField(max_length=20_000, trim_whitespace=False, help_text="One SELECT.")


QueryResultSerializer = inline_serializer(
    "DataSourceQueryResult",
    fields={
        "columns": serializers.ListField(child=serializers.CharField()),
        "rows": serializers.ListField(child=serializers.ListField()),
        "row_count": serializers.IntegerField(),
        "truncated": serializers.BooleanField(help_text="More rows than the cap (DATA_SOURCE_ROW_CAP)."),
    },
)
SchemaSerializer = inline_serializer(
    "DataSourceSchema",
    fields={
        "tables": serializers.ListField(child=serializers.DictField(), help_text="name, columns, sample_rows"),
        "allowed_tables": serializers.ListField(child=serializers.CharField()),
    },
)


class DataSourceViewSet(TeamScopedModelViewSet):
    """A team's databases, read-only: PostgreSQL by DSN (its host through the SSRF guard), or an
    uploaded SQLite file. Every statement is checked (one SELECT over allowed tables; 400
    `sql_refused` otherwise) and runs in a read-only transaction with a time limit and a row cap."""

    queryset = DataSource.objects.all()
    serializer_class = DataSourceSerializer
    parser_classes = [JSONParser, MultiPartParser, FormParser]
    filterset_fields = ["team", "kind"]
    action_roles = {action: Role.ADMIN for action in ("update", "partial_update", "destroy")} | {"query": Role.MEMBER}

    def perform_create(self, serializer: serializers.BaseSerializer[DataSource]) -> None:
        data = serializer.validated_data
        if data.get("allowed_tables") is not None:
            raise ValidationError({"allowed_tables": "Every table is allowed at first: narrow the list with PATCH."})
        serializer.instance = data_source_create(
            team=self.target_team(data.get("team_id"), Role.ADMIN),
            name=data["name"],
            kind=data["kind"],
            dsn=data.get("dsn", ""),
            sqlite_file=data.get("file"),
            description=data.get("description", ""),
            # A form (multipart) without the field reads as False in DRF (checkbox rules): default here.
            sample_rows_allowed=data["sample_rows_allowed"] if "sample_rows_allowed" in self.request.data else True,
            created_by=self.request.user if isinstance(self.request.user, User) else None,
        )

    def perform_update(self, serializer: serializers.BaseSerializer[DataSource]) -> None:
        source = serializer.instance
        assert source is not None
        changes = dict(serializer.validated_data)
        if changes.pop("team_id", source.team_id) != source.team_id:
            raise ValidationError({"team": "A data source cannot move to another team: register it there."})
        changes.pop("kind", None)  # validate_kind refused a change
        if "dsn" in changes or "file" in changes:
            raise ValidationError({"dsn": "The connection cannot change: register the database again."})
        serializer.instance = data_source_update(data_source=source, **changes)

    def perform_destroy(self, instance: DataSource) -> None:
        data_source_delete(data_source=instance)

    @extend_schema(request=None, responses=SchemaSerializer)
    @action(detail=True, methods=["get", "post"], url_path="schema")
    def table_schema(self, request: Request, pk: str | None = None) -> Response:
        """GET: the tables as last read, their columns and, where allowed, a few rows; admins see
        every table (to choose), members and viewers the allowed ones only. POST (admins): read the
        schema from the database again. `allowed_tables` are those queries may read."""
        source = self.get_object()
        is_admin = has_team_role(user=request.user, api_key=self.api_key, team_id=source.team_id, role=Role.ADMIN)
        if request.method == "POST":
            if not is_admin:
                raise PermissionDenied("Only the team's admins and owners may read the schema again: ask one of them.")
            source = data_source_refresh_schema(data_source=source)
        tables = [table for table in source.tables if is_admin or table["name"] in source.allowed_tables]
        return Response({"tables": tables, "allowed_tables": source.allowed_tables})

    @extend_schema(request=QueryInputSerializer, responses={200: QueryResultSerializer})
    @action(detail=True, methods=["post"])
    def query(self, request: Request, pk: str | None = None) -> Response:
        """Run one read-only SELECT (the SQL console)."""
        source = self.get_object()
        sql = validated(QueryInputSerializer, request.data)["sql"]
        result = data_source_query(data_source=source, sql=sql)
        body: dict[str, Any] = {
            "columns": result.columns,
            "rows": result.rows,
            "row_count": result.row_count,
            "truncated": result.truncated,
        }
        return Response(body, status=status.HTTP_200_OK)
