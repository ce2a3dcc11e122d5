"""Data sources: register a team's database (checked, introspected), choose what may be read, and
run one checked, read-only query (the SQL console and assistants share `data_source_query`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.files import File
from django.db import transaction
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from accounts.models import Team, User
from core.domain_errors import DomainError
from core.sizes import format_bytes
from datasources.connectors import (
    QueryResult,
    TableInfo,
    mysql_introspect,
    mysql_run,
    mysql_target,
    postgres_introspect,
    postgres_run,
    postgres_target,
    sqlite_check_file,
    sqlite_introspect,
    sqlite_run,
)
from datasources.models import DataSource, DataSourceKind
from datasources.sql_guard import sql_check
from models_registry.credentials import credentials_decrypt, credentials_encrypt


class DataSourceError(DomainError):
    code = "invalid_data_source"


def _check_name_free(team: Team, name: str, data_source_id: int | None = None) -> None:
    same_name = DataSource.objects.filter(team=team, name=name)
    if data_source_id is not None:
        same_name = same_name.exclude(pk=data_source_id)
    taken = same_name.exists()
    if taken:
        raise DataSourceError(f"the team already has a data source named {name!r}: choose another name")


def _introspect(source: DataSource, *, dsn: str | None = None) -> list[TableInfo]:
    samples = settings.DATA_SOURCE_SAMPLE_ROWS if source.sample_rows_allowed else 0
    timeout_s = settings.DATA_SOURCE_STATEMENT_TIMEOUT_S
    dsn = dsn if dsn is not None else credentials_decrypt(source.dsn_encrypted)
    if source.kind == DataSourceKind.POSTGRESQL:
        return postgres_introspect(postgres_target(dsn), sample_rows=samples, timeout_s=timeout_s)
    if source.kind == DataSourceKind.MYSQL:
        return mysql_introspect(mysql_target(dsn), sample_rows=samples, timeout_s=timeout_s)
    return sqlite_introspect(Path(source.sqlite_file.path), sample_rows=samples)


def _tables_json(tables: list[TableInfo]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(table) for table in tables]


def data_source_create(
    *,
    team: Team,
    name: str,
    kind: str,
    dsn: str = "",
    sqlite_file: File[bytes] | None = None,
    description: str = "",
    sample_rows_allowed: bool = True,
    created_by: User | None = None,
) -> DataSource:
    """Check and introspect the database before anything is saved; every table is allowed until an
    admin narrows the list (PATCH allowed_tables)."""
    _check_name_free(team, name)
    source = DataSource(
        team=team,
        name=name,
        kind=kind,
        description=description,
        sample_rows_allowed=sample_rows_allowed,
        created_by=created_by,
    )
    if kind in (DataSourceKind.POSTGRESQL, DataSourceKind.MYSQL):
        if sqlite_file is not None or not dsn.strip():
            raise DataSourceError(f"a {kind} data source takes a `dsn` (and no file)")
        tables = _introspect(source, dsn=dsn)
        source.dsn_encrypted = credentials_encrypt(dsn.strip())
    elif kind == DataSourceKind.SQLITE:
        if sqlite_file is None or dsn:
            raise DataSourceError("a SQLite data source takes a `file` (multipart), and no dsn")
        if (sqlite_file.size or 0) > settings.DATA_SOURCE_SQLITE_MAX_BYTES:
            raise DataSourceError(
                f"the SQLite file is over {format_bytes(settings.DATA_SOURCE_SQLITE_MAX_BYTES)}: "
                "register the database by DSN instead"
            )
        source.sqlite_file.save(Path(sqlite_file.name or "database.sqlite").name, sqlite_file, save=False)
        try:
            sqlite_check_file(Path(source.sqlite_file.path))
            tables = _introspect(source)
        except Exception:
            source.sqlite_file.delete(save=False)
            raise
    else:
        raise DataSourceError(f"the kind {kind!r} is not supported: use postgresql, mysql or sqlite")
    source.tables = _tables_json(tables)
    source.allowed_tables = [table.name for table in tables]
    source.save()
    return source


def data_source_update(
    *,
    data_source: DataSource,
    name: str | None = None,
    description: str | None = None,
    allowed_tables: list[str] | None = None,
    sample_rows_allowed: bool | None = None,
) -> DataSource:
    if name is not None and name != data_source.name:
        _check_name_free(data_source.team, name, data_source.pk)
        data_source.name = name
    if description is not None:
        data_source.description = description
    if allowed_tables is not None:
        known = {table["name"] for table in data_source.tables}
        wanted = [table.lower() for table in allowed_tables]
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise DataSourceError(
                f"no such table: {', '.join(unknown)}; the data source has {', '.join(sorted(known)) or 'none'}"
            )
        data_source.allowed_tables = list(dict.fromkeys(wanted))
    if sample_rows_allowed is not None:
        data_source.sample_rows_allowed = sample_rows_allowed
        if not sample_rows_allowed:
            data_source.tables = [{**table, "sample_rows": []} for table in data_source.tables]
    data_source.save()
    return data_source


def data_source_refresh_schema(*, data_source: DataSource) -> DataSource:
    """Read the schema again; tables that no longer exist leave the allowed list, new ones wait for
    an admin to allow them."""
    tables = _introspect(data_source)
    names = {table.name for table in tables}
    data_source.tables = _tables_json(tables)
    data_source.allowed_tables = [name for name in data_source.allowed_tables if name in names]
    data_source.save(update_fields=["tables", "allowed_tables", "updated_at"])
    return data_source


def data_source_query(*, data_source: DataSource, sql: str, row_cap: int | None = None) -> QueryResult:
    """Check the statement (SqlRefused, 400) and run it read-only within the time limit and row cap."""
    checked = sql_check(
        sql,
        dialect=data_source.dialect,
        allowed_tables=data_source.allowed_tables,
        default_schema=data_source.default_schema,
    )
    timeout_s = settings.DATA_SOURCE_STATEMENT_TIMEOUT_S
    cap = min(row_cap or settings.DATA_SOURCE_ROW_CAP, settings.DATA_SOURCE_ROW_CAP)
    if data_source.kind == DataSourceKind.POSTGRESQL:
        target = postgres_target(credentials_decrypt(data_source.dsn_encrypted))
        return postgres_run(target, checked.sql, timeout_s=timeout_s, row_cap=cap)
    if data_source.kind == DataSourceKind.MYSQL:
        return mysql_run(
            mysql_target(credentials_decrypt(data_source.dsn_encrypted)), checked.sql, timeout_s=timeout_s, row_cap=cap
        )
    return sqlite_run(
        Path(data_source.sqlite_file.path),
        checked.sql,
        allowed_tables=data_source.allowed_tables,
        timeout_s=timeout_s,
        row_cap=cap,
    )


def data_source_delete(*, data_source: DataSource) -> None:
    with transaction.atomic():
        file = data_source.sqlite_file
        data_source.delete()
        if file:
            transaction.on_commit(lambda: file.delete(save=False))


def dsn_without_password(dsn: str) -> str:
    """The DSN as the API shows it: the password replaced by ***."""
    if dsn.startswith(("mysql://", "mariadb://")):
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    params = {key: str(value) for key, value in conninfo_to_dict(dsn).items() if value is not None}
    if params.get("password"):
        params["password"] = "***"  # noqa: S105 (the mask, not a password)
    return make_conninfo(**params)
