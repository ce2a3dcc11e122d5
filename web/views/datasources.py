"""Data-source pages: the team's list with a form to register one (admins), and a data source's
page with its schema, the admins' choice of readable tables, and the SQL console (members). Plain
form posts that re-render the page or redirect back to it; every write goes through
datasources.services, and a refusal is shown as the service words it."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.functional import Promise
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from accounts.models import Role, Team, User
from accounts.selectors import has_team_role, team_scoped
from core.domain_errors import DomainError
from datasources.connectors import QueryResult
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
from web.sql_chart import sql_result_chart
from web.teams import current_membership, team_of_form, team_switch

# As datasources.api.DataSourceViewSet: viewers see, members query, admins change.
QUERY_ROLE = Role.MEMBER
ADMIN_ROLE = Role.ADMIN
SQL_MAX_CHARS = 20_000  # as the API's QueryInputSerializer

KIND_LABELS: dict[str, Promise] = {
    DataSourceKind.SQLITE: gettext_lazy("SQLite (upload the database file)"),
    DataSourceKind.POSTGRESQL: gettext_lazy("PostgreSQL (connect by DSN)"),
    DataSourceKind.MYSQL: gettext_lazy("MySQL or MariaDB (connect by DSN)"),
}


class DataSourceForm(forms.Form):
    team = forms.IntegerField(widget=forms.HiddenInput)
    name = forms.CharField(label=gettext_lazy("Name"), max_length=120)
    description = forms.CharField(
        label=gettext_lazy("Description (told to the assistant: what the data is)"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    kind = forms.ChoiceField(
        label=gettext_lazy("Kind"),
        choices=list(KIND_LABELS.items()),
        initial=DataSourceKind.SQLITE,
        widget=forms.RadioSelect,
    )
    file = forms.FileField(label=gettext_lazy("SQLite file"), required=False)
    dsn = forms.CharField(
        label=gettext_lazy("DSN"),
        required=False,
        max_length=2000,
        widget=forms.TextInput(
            attrs={"placeholder": "postgresql://user:password@host:5432/dbname (or mysql://...)", "autocomplete": "off"}
        ),
    )
    sample_rows_allowed = forms.BooleanField(
        label=gettext_lazy("Show a few rows of each table (to members and to the assistant)"),
        required=False,
        initial=True,
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind == DataSourceKind.SQLITE and not data.get("file"):
            self.add_error("file", _("Choose the SQLite database file to upload."))
        if kind in (DataSourceKind.POSTGRESQL, DataSourceKind.MYSQL) and not (data.get("dsn") or "").strip():
            self.add_error("dsn", _("Write the database's DSN."))
        return data


class DataSourceSettingsForm(forms.Form):
    """What an admin may change on the page (data_source_update): the tables queries may read,
    whether sample rows are shown, and the description."""

    allowed_tables = forms.MultipleChoiceField(
        label=gettext_lazy("Tables queries may read"), required=False, widget=forms.CheckboxSelectMultiple
    )
    sample_rows_allowed = forms.BooleanField(
        label=gettext_lazy("Show a few rows of each table (to members and to the assistant)"), required=False
    )
    description = forms.CharField(
        label=gettext_lazy("Description (told to the assistant: what the data is)"),
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 2}),
    )

    def __init__(self, *args: Any, source: DataSource, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "allowed_tables": list(source.allowed_tables),
                "sample_rows_allowed": source.sample_rows_allowed,
                "description": source.description,
            },
        )
        super().__init__(*args, **kwargs)
        field = self.fields["allowed_tables"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = [(table["name"], table["name"]) for table in source.tables]


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # every view here is login_required
    return request.user


def _data_sources(request: HttpRequest) -> QuerySet[DataSource]:
    return team_scoped(DataSource.objects.all(), user=_user(request))


def _has_role(request: HttpRequest, team_id: int, role: Role) -> bool:
    return has_team_role(user=_user(request), api_key=None, team_id=team_id, role=role)


def _list_context(request: HttpRequest, team: Team, form: DataSourceForm | None) -> dict[str, Any]:
    can_create = _has_role(request, team.pk, ADMIN_ROLE)
    if can_create and form is None:
        form = DataSourceForm(initial={"team": team.pk})
    sources = _data_sources(request).filter(team=team).order_by("name", "pk")
    rows = [
        {
            "source": source,
            "kind_label": KIND_LABELS.get(source.kind, source.kind),
            "table_count": len(source.tables),
            "allowed_count": len(source.allowed_tables),
        }
        for source in sources
    ]
    return {"team": team, "rows": rows, "can_create": can_create, "form": form}


@login_required
def data_source_list(request: HttpRequest) -> HttpResponse:
    team = current_membership(request).team
    return render(request, "web/datasources/list.html", _list_context(request, team, None))


@login_required
@require_POST
def data_source_create_view(request: HttpRequest) -> HttpResponse:
    team = team_of_form(request)
    if not _has_role(request, team.pk, ADMIN_ROLE):
        return HttpResponse(
            _("Only the team's admins and owners may register data sources: ask one of them."), status=403
        )
    form = DataSourceForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        by_dsn = data["kind"] != DataSourceKind.SQLITE
        try:
            source = data_source_create(
                team=team,
                name=data["name"].strip(),
                kind=data["kind"],
                # Only the field of the chosen kind: the other may still hold what was typed first.
                dsn=data["dsn"].strip() if by_dsn else "",
                sqlite_file=None if by_dsn else data["file"],
                description=data["description"],
                sample_rows_allowed=data["sample_rows_allowed"],
                created_by=_user(request),
            )
        except DomainError as exc:
            form.add_error(None, capfirst(str(exc)))
        else:
            messages.success(
                request,
                _("Data source %(name)s registered: choose the tables queries may read.") % {"name": source.name},
            )
            return redirect("web:datasource-detail", source.pk)
    return render(request, "web/datasources/list.html", _list_context(request, team, form), status=400)


def data_source_for(request: HttpRequest, pk: int, *, switch_team: bool = False) -> DataSource:
    """The data source `pk` of the user's teams, or 404 (another team's is not found, never
    forbidden). A page opened from a link into another of the user's teams switches to it."""
    source = _data_sources(request).select_related("team").filter(pk=pk).first()
    if source is None:
        raise Http404(_("No such data source."))
    if switch_team and current_membership(request).team_id != source.team_id:
        team_switch(request, source.team_id)
    return source


def _dsn_display(source: DataSource) -> str:
    if not source.has_dsn or not source.dsn_encrypted:
        return ""
    return dsn_without_password(credentials_decrypt(source.dsn_encrypted))


def _detail(
    request: HttpRequest,
    source: DataSource,
    *,
    sql: str = "",
    result: QueryResult | None = None,
    query_error: str = "",
    settings_form: DataSourceSettingsForm | None = None,
    status: int = 200,
) -> HttpResponse:
    can_admin = _has_role(request, source.team_id, ADMIN_ROLE)
    allowed = set(source.allowed_tables)
    # Admins see every table, to choose; the others see what queries (and assistants) may read:
    # a table left out keeps its columns and rows to itself.
    shown = [table for table in source.tables if can_admin or table["name"] in allowed]
    tables = [
        {
            "name": table["name"],
            "columns": table.get("columns", []),
            "column_names": [column["name"] for column in table.get("columns", [])],
            "sample_rows": table.get("sample_rows", []) if source.sample_rows_allowed else [],
            "allowed": table["name"] in allowed,
        }
        for table in shown
    ]
    if can_admin and settings_form is None:
        settings_form = DataSourceSettingsForm(source=source)
    return render(
        request,
        "web/datasources/detail.html",
        {
            "source": source,
            "kind_label": KIND_LABELS.get(source.kind, source.kind),
            "dsn_display": _dsn_display(source),
            "tables": tables,
            "table_total": len(source.tables),
            "hidden_tables": len(source.tables) - len(shown),
            "can_query": _has_role(request, source.team_id, QUERY_ROLE),
            "can_admin": can_admin,
            "settings_form": settings_form if can_admin else None,
            "sql": sql,
            "result": result,
            "chart": sql_result_chart(result.columns, result.rows) if result is not None else None,
            "query_error": query_error,
        },
        status=status,
    )


@login_required
def data_source_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _detail(request, data_source_for(request, pk, switch_team=True))


@login_required
@require_POST
def data_source_query_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The SQL console: one statement, checked and run read-only (data_source_query); the page
    comes back with the statement still in the box and its result or the reason it was refused."""
    source = data_source_for(request, pk)
    if not _has_role(request, source.team_id, QUERY_ROLE):
        return HttpResponse(
            _("Viewers may read the schema but not run queries: ask an admin for the member role."), status=403
        )
    sql = request.POST.get("sql", "")
    if not sql.strip():
        return _detail(request, source, sql=sql, query_error=_("Write a SELECT to run."), status=400)
    if len(sql) > SQL_MAX_CHARS:
        message = _("The statement is over %(n)d characters: shorten it.") % {"n": SQL_MAX_CHARS}
        return _detail(request, source, sql=sql, query_error=message, status=400)
    try:
        result = data_source_query(data_source=source, sql=sql)
    except DomainError as exc:
        return _detail(request, source, sql=sql, query_error=capfirst(str(exc)), status=400)
    return _detail(request, source, sql=sql, result=result)


def _admin_only(request: HttpRequest, source: DataSource) -> HttpResponse | None:
    if _has_role(request, source.team_id, ADMIN_ROLE):
        return None
    return HttpResponse(_("Only the team's admins and owners may change data sources: ask one of them."), status=403)


@login_required
@require_POST
def data_source_settings(request: HttpRequest, pk: int) -> HttpResponse:
    source = data_source_for(request, pk)
    if (denied := _admin_only(request, source)) is not None:
        return denied
    form = DataSourceSettingsForm(request.POST, source=source)
    if not form.is_valid():
        return _detail(request, source, settings_form=form, status=400)
    data = form.cleaned_data
    samples_turned_on = data["sample_rows_allowed"] and not source.sample_rows_allowed
    try:
        data_source_update(
            data_source=source,
            description=data["description"],
            allowed_tables=data["allowed_tables"],
            sample_rows_allowed=data["sample_rows_allowed"],
        )
    except DomainError as exc:
        source.refresh_from_db()  # the service may have set fields before it refused
        form.add_error(None, capfirst(str(exc)))
        return _detail(request, source, settings_form=form, status=400)
    messages.success(request, _("Saved."))
    if samples_turned_on:
        # Sample rows were dropped when they were turned off: read them again.
        try:
            data_source_refresh_schema(data_source=source)
        except DomainError as exc:
            messages.error(request, _("The sample rows could not be read: %(reason)s") % {"reason": exc})
    return redirect("web:datasource-detail", source.pk)


@login_required
@require_POST
def data_source_refresh(request: HttpRequest, pk: int) -> HttpResponse:
    source = data_source_for(request, pk)
    if (denied := _admin_only(request, source)) is not None:
        return denied
    try:
        data_source_refresh_schema(data_source=source)
    except DomainError as exc:
        messages.error(request, _("The schema could not be read: %(reason)s") % {"reason": exc})
    else:
        messages.success(request, _("The schema was read again; new tables wait for you to allow them."))
    return redirect("web:datasource-detail", source.pk)


@login_required
@require_POST
def data_source_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    source = data_source_for(request, pk)
    if (denied := _admin_only(request, source)) is not None:
        return denied
    name = source.name
    data_source_delete(data_source=source)
    messages.success(request, _("Data source %(name)s deleted.") % {"name": name})
    return redirect("web:datasource-list")
