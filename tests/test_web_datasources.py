"""The data-source pages: teams and roles with the Django test client (another team's data source
is not found on any page; viewers and members are refused what the API refuses them, and nothing
changes), the services' refusals shown on the page; and the whole flow once in Chromium: an admin
uploads a SQLite file and narrows the tables, a member queries it and is refused the rest."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from accounts.models import Role
from datasources.models import DataSource
from datasources.services import data_source_create
from tests.browser import screenshot, signed_in_context
from tests.conftest import member_of

HOSTILE = "<img src=x onerror=alert(1)>"
CUSTOMERS = [(1, "Acme", "Pays on time"), (2, "Globex", HOSTILE), (3, "Initech", None)]


def sales_sqlite(tmp_path: Path) -> bytes:
    path = tmp_path / "sales.sqlite"
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as database:
        database.execute("CREATE TABLE customers (id integer PRIMARY KEY, name text, note text)")
        database.execute("CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer, amount real)")
        database.execute("CREATE TABLE secrets (id integer PRIMARY KEY, token text)")
        database.executemany("INSERT INTO customers VALUES (?, ?, ?)", CUSTOMERS)
        database.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, 1 + i % 3, 10.0 * i) for i in range(1, 8)])
        database.execute("INSERT INTO secrets VALUES (1, 'sk-live-do-not-read')")
    database.close()
    return path.read_bytes()


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def sales(team, tmp_path: Path) -> DataSource:
    return data_source_create(
        team=team,
        name="Sales",
        kind="sqlite",
        description="Orders by customer.",
        sqlite_file=SimpleUploadedFile("sales.sqlite", sales_sqlite(tmp_path)),
    )


def admin_posts(source: DataSource) -> list[tuple[str, dict[str, Any]]]:
    """Every admin action of a data source's page, with a body that would change something."""
    return [
        (
            reverse("web:datasource-settings", args=[source.pk]),
            {"allowed_tables": ["customers"], "description": "Changed.", "sample_rows_allowed": ""},
        ),
        (reverse("web:datasource-refresh", args=[source.pk]), {}),
        (reverse("web:datasource-delete", args=[source.pk]), {}),
    ]


def state(source: DataSource) -> tuple[Any, ...]:
    source.refresh_from_db()
    return (source.name, source.description, source.allowed_tables, source.sample_rows_allowed, source.tables)


# --- the Django test client ---------------------------------------------------------------------


@pytest.mark.django_db
def test_another_teams_data_source_is_not_found_on_every_page(sales, outsider) -> None:
    before = state(sales)
    client = client_for(outsider)  # the owner of another team: no role there counts here
    assert client.get(reverse("web:datasource-detail", args=[sales.pk])).status_code == 404
    query = client.post(reverse("web:datasource-query", args=[sales.pk]), {"sql": "SELECT * FROM customers"})
    assert query.status_code == 404
    assert b"Globex" not in query.content
    for url, body in admin_posts(sales):
        assert client.post(url, body).status_code == 404, url
    assert state(sales) == before
    listing = client.get(reverse("web:datasource-list"))
    assert listing.status_code == 200
    assert listing.context["rows"] == []
    assert b"Sales" not in listing.content


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER])
def test_viewers_and_members_see_no_admin_controls_and_their_posts_are_refused(team, sales, role, tmp_path) -> None:
    before = state(sales)
    client = client_for(member_of(team, role))
    page = client.get(reverse("web:datasource-detail", args=[sales.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="schema-table"' in html
    for control in ("ds-admin", "settings-form", "refresh-form", "delete-form"):
        assert f'data-testid="{control}"' not in html, control
    # Members run queries; viewers only read.
    assert ('data-testid="console-form"' in html) is (role == Role.MEMBER)
    assert b'data-testid="ds-create-form"' not in client.get(reverse("web:datasource-list")).content

    for url, body in admin_posts(sales):
        assert client.post(url, body).status_code == 403, url
    created = client.post(
        reverse("web:datasource-create"),
        {
            "team": team.pk,
            "name": "Mine",
            "kind": "sqlite",
            "file": SimpleUploadedFile("mine.sqlite", sales_sqlite(tmp_path)),
        },
    )
    assert created.status_code == 403
    assert state(sales) == before
    assert list(DataSource.objects.values_list("name", flat=True)) == ["Sales"]


@pytest.mark.django_db
def test_a_viewers_query_is_refused(team, sales) -> None:
    client = client_for(member_of(team, Role.VIEWER))
    response = client.post(reverse("web:datasource-query", args=[sales.pk]), {"sql": "SELECT name FROM customers"})
    assert response.status_code == 403
    assert b"Globex" not in response.content


@pytest.mark.django_db
def test_a_capped_result_says_more_rows_were_not_shown(team, sales, member, settings) -> None:
    settings.DATA_SOURCE_ROW_CAP = 2
    response = client_for(member).post(
        reverse("web:datasource-query", args=[sales.pk]), {"sql": "SELECT id, amount FROM orders ORDER BY id"}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "2 rows" in html
    assert 'data-testid="console-truncated"' in html
    assert "SELECT id, amount FROM orders ORDER BY id</textarea>" in html


@pytest.mark.django_db
def test_a_failed_registration_shows_the_services_reason(team) -> None:
    client = client_for(member_of(team, Role.ADMIN))
    not_sqlite = client.post(
        reverse("web:datasource-create"),
        {"team": team.pk, "name": "Notes", "kind": "sqlite", "file": SimpleUploadedFile("notes.db", b"just text")},
    )
    assert not_sqlite.status_code == 400
    assert "not a SQLite database" in " ".join(not_sqlite.context["form"].non_field_errors())
    socket_dsn = client.post(
        reverse("web:datasource-create"),
        {"team": team.pk, "name": "Local", "kind": "postgresql", "dsn": "host=/var/run/postgresql dbname=app"},
    )
    assert socket_dsn.status_code == 400
    assert b'data-testid="ds-create-error"' in socket_dsn.content
    assert "socket path" in " ".join(socket_dsn.context["form"].non_field_errors())
    assert not DataSource.objects.exists()


@pytest.mark.django_db
def test_an_admin_refreshes_and_deletes(team, sales) -> None:
    client = client_for(member_of(team, Role.ADMIN))
    refreshed = client.post(reverse("web:datasource-refresh", args=[sales.pk]))
    assert refreshed.status_code == 302
    assert refreshed["Location"] == reverse("web:datasource-detail", args=[sales.pk])
    deleted = client.post(reverse("web:datasource-delete", args=[sales.pk]))
    assert deleted.status_code == 302
    assert deleted["Location"] == reverse("web:datasource-list")
    assert not DataSource.objects.exists()


# --- Chromium against the live server ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_register_by_upload_narrow_the_tables_query_and_be_refused(
    team, tmp_path: Path, live_asgi_url: str, browser: Any
) -> None:
    admin = member_of(team, Role.ADMIN)
    member = member_of(team, Role.MEMBER)
    dialogs: list[str] = []  # an alert() would mean the hostile row ran

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    context = signed_in_context(browser, live_asgi_url, admin)
    page = context.new_page()
    page.on("dialog", on_dialog)
    page.goto("/data/")
    page.get_by_test_id("ds-empty").wait_for()
    page.fill("input[name=name]", "Sales")
    page.check("input[name=kind][value=sqlite]")
    page.set_input_files(
        "input[name=file]",
        files=[{"name": "sales.sqlite", "mimeType": "application/vnd.sqlite3", "buffer": sales_sqlite(tmp_path)}],
    )
    screenshot(page, "datasource-register")
    page.get_by_test_id("ds-create").click()
    page.get_by_test_id("ds-name").wait_for()
    source = DataSource.objects.get(team=team, name="Sales")
    assert page.url.endswith(f"/data/{source.pk}/")
    assert page.get_by_test_id("schema-table").count() == 3
    # The hostile sample row is text on the page, not an element.
    customers = page.locator("[data-testid=schema-table][data-table=customers]")
    assert HOSTILE in customers.get_by_test_id("schema-samples").inner_text()
    assert page.locator("[data-testid=schema] img").count() == 0

    page.uncheck("input[name=allowed_tables][value=secrets]")
    page.get_by_test_id("settings-save").click()
    page.wait_for_url(f"**/data/{source.pk}/")
    page.reload()
    assert page.locator("input[name=allowed_tables][value=secrets]").is_checked() is False
    assert page.locator("input[name=allowed_tables][value=customers]").is_checked() is True
    source.refresh_from_db()
    assert source.allowed_tables == ["customers", "orders"]
    screenshot(page, "datasource-admin", markup_expected=True)
    context.close()

    context = signed_in_context(browser, live_asgi_url, member)
    page = context.new_page()
    page.on("dialog", on_dialog)
    page.goto(f"/data/{source.pk}/")
    assert page.get_by_test_id("ds-admin").count() == 0
    statement = "SELECT name, note FROM customers ORDER BY id"
    page.fill("[data-testid=console-sql]", statement)
    page.get_by_test_id("console-run").click()
    result = page.get_by_test_id("console-result-table")
    result.wait_for()
    assert result.locator("tbody tr").count() == 3
    assert result.locator("tbody tr").nth(1).locator("td").all_inner_texts() == ["Globex", HOSTILE]
    assert result.locator("img").count() == 0
    assert page.get_by_test_id("console-row-count").inner_text() == "3 rows"
    assert page.get_by_test_id("console-sql").input_value() == statement
    screenshot(page, "datasource-console", markup_expected=True)

    refused = "SELECT token FROM secrets"
    page.fill("[data-testid=console-sql]", refused)
    page.get_by_test_id("console-run").click()
    error = page.get_by_test_id("console-error")
    error.wait_for()
    assert "secrets is not one this data source allows" in error.inner_text()
    assert page.get_by_test_id("console-result").count() == 0
    assert page.get_by_test_id("console-sql").input_value() == refused

    # Reloaded, the page shows the allowed tables' schema; the table left out shows nothing of itself.
    page.goto(f"/data/{source.pk}/")
    page.reload()
    tables = page.get_by_test_id("schema-table")
    assert [tables.nth(i).get_attribute("data-table") for i in range(tables.count())] == ["customers", "orders"]
    assert page.locator("[data-testid=table-allowed]").count() == 2
    columns = page.locator("[data-table=orders] [data-testid=schema-columns] tbody tr")
    assert columns.nth(2).locator("td").all_inner_texts() == ["amount", "REAL"]
    assert "1 more table is not open to queries" in page.get_by_test_id("schema-hidden").inner_text()
    assert "sk-live" not in page.content()
    assert dialogs == []
    context.close()
