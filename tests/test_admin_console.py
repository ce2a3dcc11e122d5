"""The admin console: the dashboard (usage charts and tables, ingestion, models with Launch and
Terminate against a real Xinference, in a real browser), the document and knowledge-base actions,
the audit log of admin actions (LogEntry) and the audit log of API key use (ApiKeyUse)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from playwright.sync_api import expect
from rest_framework.test import APIClient

from accounts.audit import api_key_use_record
from accounts.models import ApiKeyUse, Role, Team, Usage
from accounts.services import api_key_create
from accounts.tasks import prune_api_key_uses
from console.dashboard import bar_chart, queue_depths
from kb.models import Document, DocumentStatus, KnowledgeBase
from kb.services import kb_create
from kb.tasks import ingest
from models_registry import embedded_xinference
from models_registry.models import ModelRegistration, ModelStatus
from models_registry.services import provider_create, registration_create, registration_terminate
from realservices.offline_models import register_offline_embedding
from realservices.xinference import XinferenceServer, free_port
from tests.browser import screenshot, signed_in_context
from tests.conftest import bearer_client, member_of
from tests.factories import TeamFactory, UserFactory
from workers.celery import app as celery_app

DASHBOARD = "/admin/dashboard/"
FAILURE_REASON = "The PDF is encrypted: upload an unlocked copy."
LAUNCH_TIMEOUT_MS = 300_000


# --- helpers ----------------------------------------------------------------------------------


def superuser_client() -> tuple[Client, Any]:
    admin = UserFactory.create(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    return client, admin


def dead_models(team: Team) -> tuple[ModelRegistration, ModelRegistration]:
    """An LLM and an embedding model on a port nothing listens on: provider calls fail at once."""
    provider = provider_create(team=team, name="dead", kind="xinference", endpoint=f"http://127.0.0.1:{free_port()}")
    llm = registration_create(provider=provider, kind="llm", name="Dead LLM", provider_model_uid="dead-llm")
    embedding = registration_create(
        provider=provider, kind="embedding", name="Dead embedding", provider_model_uid="dead-emb", dimensions=384
    )
    return llm, embedding


def knowledge_base_with_documents(team: Team) -> tuple[KnowledgeBase, Document, Document]:
    _llm, embedding = dead_models(team)
    kb = kb_create(team=team, name="Handbook", embedding_model=embedding)

    def document(name: str, status: str, error: str = "") -> Document:
        return Document.objects.create(
            knowledge_base=kb,
            team=team,
            original_name=name,
            file=ContentFile(b"hello", name=name),
            sha256=name.ljust(64, "0"),
            size_bytes=5,
            content_type="text/plain",
            status=status,
            error=error,
        )

    return kb, document("broken.pdf", DocumentStatus.FAILED, FAILURE_REASON), document("ok.txt", DocumentStatus.READY)


def logged(obj: Any) -> list[str]:
    return list(
        LogEntry.objects.filter(object_id=str(obj.pk), action_flag=CHANGE)
        .order_by("pk")
        .values_list("change_message", flat=True)
    )


def purge_queues() -> None:
    """Drop the messages a test left in the broker (its Redis is this test run's own)."""
    celery_app.control.purge()


@contextmanager
def ingest_consumers_paused() -> Iterator[None]:
    """The session's test worker, when one runs, stops taking `ingest` messages, so the messages a
    test queues stay there to be counted."""
    replies = celery_app.control.cancel_consumer("ingest", reply=True, timeout=2)
    try:
        yield
    finally:
        if replies:
            celery_app.control.add_consumer("ingest", reply=True, timeout=5)


# --- the dashboard, in the test client --------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_is_for_staff_only_and_launching_needs_the_change_permission(team) -> None:
    assert Client().get(DASHBOARD).status_code == 302
    member = Client()
    member.force_login(member_of(team, Role.OWNER))  # a team owner is not console staff
    response = member.get(DASHBOARD)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]

    llm, _embedding = dead_models(team)
    staff_user = UserFactory.create(is_staff=True)
    staff = Client()
    staff.force_login(staff_user)
    page = staff.get(DASHBOARD)
    assert page.status_code == 200
    assert f'data-testid="launch-{llm.pk}"' not in page.content.decode()
    assert staff.post(f"/admin/dashboard/models/{llm.pk}/launch/").status_code == 403
    assert not LogEntry.objects.exists()

    staff_user.user_permissions.add(Permission.objects.get(codename="change_modelregistration"))
    staff = Client()
    staff.force_login(staff_user)
    assert f'data-testid="launch-{llm.pk}"' in staff.get(DASHBOARD).content.decode()
    response = staff.post(f"/admin/dashboard/models/{llm.pk}/launch/", follow=True)
    assert response.status_code == 200
    assert "Dead LLM: " in response.content.decode()  # the provider's error, as a message
    assert logged(llm) == ["Launch failed"]
    assert staff.get(f"/admin/dashboard/models/{llm.pk}/launch/").status_code == 405
    assert staff.post(f"/admin/dashboard/models/{llm.pk}/delete/").status_code == 404


@pytest.mark.django_db
def test_the_dashboard_shows_usage_ingestion_and_models(team) -> None:
    client, admin = superuser_client()
    today = timezone.now().date()
    Usage.objects.create(
        team=team, user=admin, model_name="SmolLM2", day=today, requests=7, tokens_in=1200, tokens_out=345
    )
    Usage.objects.create(
        team=team,
        user=admin,
        model_name="MiniLM",
        day=today - timedelta(days=3),
        requests=3,
        tokens_in=800,
        tokens_out=0,
    )
    Usage.objects.create(
        team=team,
        user=admin,
        model_name="Ancient",
        day=today - timedelta(days=20),
        requests=1,
        tokens_in=99_999,
        tokens_out=0,
    )
    _kb, failed, _ready = knowledge_base_with_documents(team)
    with ingest_consumers_paused():
        base = queue_depths()["ingest"]
        for _ in range(2):
            ingest.delay(failed.pk, "stale-token")  # a worker would find the token stale and do nothing
        try:
            page = client.get(DASHBOARD).content.decode()
        finally:
            purge_queues()

    team_block = _between(page, 'data-testid="usage-per-team"', 'data-testid="usage-per-model"')
    assert "<svg" in team_block
    assert ">2345<" in team_block  # 1200 + 345 + 800 in the chart and the table
    model_block = _between(page, 'data-testid="usage-per-model"', 'data-testid="usage-per-day"')
    assert ">1545<" in model_block
    assert ">800<" in model_block
    assert "Ancient" not in page  # older than the 14 days shown
    assert "Ancient" in client.get(DASHBOARD, {"days": 30}).content.decode()
    assert f'data-testid="queue-ingest-depth">{base + 2}<' in page
    assert 'data-testid="documents-failed">1<' in page
    assert 'data-testid="documents-ready">1<' in page
    assert FAILURE_REASON in page
    assert f"/admin/kb/document/{failed.pk}/change/" in page
    assert "Dead embedding" in page


@pytest.mark.django_db
def test_chart_labels_are_escaped() -> None:
    client, admin = superuser_client()
    team = TeamFactory.create(name="<script>alert(1)</script>")
    Usage.objects.create(
        team=team,
        user=admin,
        model_name='"><img src=x onerror=alert(2)>',
        day=timezone.now().date(),
        requests=1,
        tokens_in=5,
        tokens_out=5,
    )
    page = client.get(DASHBOARD).content.decode()
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    svg = str(bar_chart("t", [("<b>&", 3)]))
    assert "&lt;b&gt;&amp;" in svg
    assert "<b>" not in svg


# --- document and knowledge-base actions, and their audit log ---------------------------------


@pytest.mark.django_db
def test_reindex_and_retry_requeue_documents_and_are_logged(team) -> None:
    client, admin = superuser_client()
    kb, failed, ready = knowledge_base_with_documents(team)

    client.post("/admin/kb/document/", {"action": "retry_failed", "_selected_action": [failed.pk, ready.pk]})
    failed.refresh_from_db()
    assert (failed.status, failed.error) == (DocumentStatus.QUEUED, "")
    assert Document.objects.get(pk=ready.pk).status == DocumentStatus.READY  # retry leaves good ones alone
    assert logged(failed) == ["Retried"]
    assert logged(ready) == []

    client.post("/admin/kb/document/", {"action": "reindex", "_selected_action": [ready.pk]})
    assert Document.objects.get(pk=ready.pk).status == DocumentStatus.QUEUED
    assert logged(ready) == ["Re-indexed"]

    Document.objects.filter(pk=ready.pk).update(status=DocumentStatus.READY)
    client.post("/admin/kb/knowledgebase/", {"action": "rebuild", "_selected_action": [kb.pk]})
    kb.refresh_from_db()
    assert kb.rebuilding
    assert Document.objects.get(pk=ready.pk).status == DocumentStatus.QUEUED
    assert logged(kb) == ["Rebuild started"]
    response = client.post("/admin/kb/knowledgebase/", {"action": "rebuild", "_selected_action": [kb.pk]}, follow=True)
    assert "a rebuild of this knowledge base is under way" in response.content.decode()
    assert logged(kb) == ["Rebuild started"]  # a refused rebuild changed nothing
    assert LogEntry.objects.filter(user=admin).count() == 3


@pytest.mark.django_db
def test_model_actions_are_logged_and_the_audit_log_is_read_only(team) -> None:
    client, _admin = superuser_client()
    llm, _embedding = dead_models(team)
    for action in ("launch", "test", "terminate"):
        response = client.post(
            "/admin/models_registry/modelregistration/", {"action": action, "_selected_action": [llm.pk]}, follow=True
        )
        assert response.status_code == 200
    assert logged(llm) == ["Launch failed", "Test failed", "Terminate failed"]
    assert ModelRegistration.objects.get(pk=llm.pk).status == ModelStatus.UNREACHABLE

    audit = client.get("/admin/admin/logentry/")
    assert audit.status_code == 200
    assert "Audit log" in audit.content.decode()
    assert "Launch failed" in audit.content.decode()
    for query in ({"action_flag__exact": CHANGE}, {"q": "Dead LLM"}, {"content_type__id__exact": 1}):
        assert client.get("/admin/admin/logentry/", query).status_code == 200
    entry = LogEntry.objects.first()
    assert entry is not None
    assert client.get("/admin/admin/logentry/add/").status_code == 403
    assert client.post(f"/admin/admin/logentry/{entry.pk}/change/", {"change_message": "x"}).status_code == 403
    assert client.post(f"/admin/admin/logentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert LogEntry.objects.filter(pk=entry.pk).exists()


# --- the audit log of API key use -------------------------------------------------------------


@pytest.mark.django_db
def test_api_key_requests_are_recorded_with_their_status_and_session_requests_are_not(team) -> None:
    user = member_of(team, Role.ADMIN)
    keyed = bearer_client(user, team)
    assert keyed.get("/api/v1/teams/?secret=not-kept", REMOTE_ADDR="203.0.113.7").status_code == 200
    assert keyed.get("/api/v1/knowledge-bases/999999/").status_code == 404
    assert keyed.post("/api/v1/knowledge-bases/", {}, format="json").status_code == 400
    assert keyed.get("/v1/models").status_code == 200
    # The streaming entry point authenticates by itself (no DRF view): still recorded.
    body = {"model": "nope", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    streamed = keyed.post("/v1/chat/completions", body, format="json")
    assert streamed.status_code >= 400

    uses = list(ApiKeyUse.objects.order_by("pk"))
    key = user.api_keys.get()
    assert [(use.method, use.path, use.status_code) for use in uses] == [
        ("GET", "/api/v1/teams/", 200),
        ("GET", "/api/v1/knowledge-bases/999999/", 404),
        ("POST", "/api/v1/knowledge-bases/", 400),
        ("GET", "/v1/models", 200),
        ("POST", "/v1/chat/completions", streamed.status_code),
    ]
    assert {(use.key_id, use.key_prefix, use.team_id, use.user_id) for use in uses} == {
        (key.pk, key.prefix, team.pk, user.pk)
    }
    assert uses[0].client_ip == "203.0.113.7"

    session = Client()
    session.force_login(user)
    assert session.get("/api/v1/teams/").status_code == 200
    bad_key = APIClient()
    bad_key.credentials(HTTP_AUTHORIZATION="Bearer cp_not-a-key")
    assert bad_key.get("/api/v1/teams/").status_code == 401
    assert ApiKeyUse.objects.count() == len(uses)

    client, _admin = superuser_client()
    listing = client.get("/admin/accounts/apikeyuse/", {"status_class": "4"}).content.decode()
    assert "/api/v1/knowledge-bases/999999/" in listing
    assert "/api/v1/teams/" not in listing
    for query in ({"q": "/v1/models"}, {"team__id__exact": team.pk}, {"key__id__exact": key.pk}):
        assert client.get("/admin/accounts/apikeyuse/", query).status_code == 200
    assert client.get("/admin/accounts/apikeyuse/add/").status_code == 403


@pytest.mark.django_db
def test_a_long_path_is_cut_and_a_failed_audit_write_is_logged_not_raised(
    team, caplog: pytest.LogCaptureFixture
) -> None:
    user = member_of(team, Role.ADMIN)
    assert bearer_client(user, team).get("/v1/models/" + "x" * 1500).status_code == 404
    assert len(ApiKeyUse.objects.get().path) == 1000
    key = user.api_keys.get()
    request = RequestFactory().get("/api/v1/teams/")
    with caplog.at_level("ERROR", logger="accounts.audit"):
        api_key_use_record(key=key, request=request, status_code=70_000)  # past the column's range
    assert "could not record the use of API key" in caplog.text
    # The failed INSERT was rolled back to its savepoint: the surrounding transaction still works.
    assert ApiKeyUse.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_audit_row_outside_a_transaction_is_one_statement_and_a_failure_leaves_the_connection_usable(
    team, caplog: pytest.LogCaptureFixture
) -> None:
    user = member_of(team, Role.ADMIN)
    key, _secret = api_key_create(user=user, team=team, name="autocommit")
    request = RequestFactory().get("/api/v1/teams/?secret=1", REMOTE_ADDR="10.1.2.3")
    with CaptureQueriesContext(connection) as queries:
        api_key_use_record(key=key, request=request, status_code=200)
    assert len(queries.captured_queries) == 1
    row = ApiKeyUse.objects.get()
    assert (row.key_id, row.team_id, row.user_id, row.method, row.path, row.status_code, row.client_ip) == (
        key.pk,
        team.pk,
        user.pk,
        "GET",
        "/api/v1/teams/",
        200,
        "10.1.2.3",
    )
    with caplog.at_level("ERROR", logger="accounts.audit"):
        api_key_use_record(key=key, request=request, status_code=70_000)
    assert "could not record the use of API key" in caplog.text
    assert ApiKeyUse.objects.count() == 1  # the connection answers after the failed statement


@pytest.mark.django_db
def test_old_api_key_uses_are_pruned(team) -> None:
    user = member_of(team)
    key, _secret = api_key_create(user=user, team=team, name="old")
    now = timezone.now()
    for age_days in (1, 89, 91, 400):
        ApiKeyUse.objects.create(
            key=key,
            key_prefix=key.prefix,
            team=team,
            user=user,
            method="GET",
            path="/",
            status_code=200,
            created_at=now - timedelta(days=age_days),
        )
    assert prune_api_key_uses() == 2
    with override_settings(API_KEY_AUDIT_RETENTION_DAYS=30):
        assert prune_api_key_uses() == 1
    assert ApiKeyUse.objects.count() == 1
    assert "accounts-prune-api-key-uses" in celery_app.conf.beat_schedule


# --- the dashboard in a real browser, against a real Xinference --------------------------------


@pytest.mark.django_db(transaction=True)
def test_dashboard_in_the_browser_shows_usage_and_launches_and_terminates_a_model(
    xinference: XinferenceServer, browser: Any, live_asgi_url: str
) -> None:
    admin = UserFactory.create(is_staff=True, is_superuser=True)
    team = TeamFactory.create(name="Acme Research")
    today = timezone.now().date()
    Usage.objects.create(
        team=team, user=admin, model_name="SmolLM2", day=today, requests=7, tokens_in=1200, tokens_out=345
    )
    Usage.objects.create(
        team=team,
        user=admin,
        model_name="MiniLM",
        day=today - timedelta(days=1),
        requests=3,
        tokens_in=800,
        tokens_out=0,
    )
    _kb, failed, _ready = knowledge_base_with_documents(team)
    provider = provider_create(team=team, name="Xinference", kind="xinference", endpoint=xinference.endpoint)
    embedding = register_offline_embedding(provider)
    registration_terminate(registration=embedding)  # stopped on the server: Launch has real work to do
    with ingest_consumers_paused():
        depth = queue_depths()["ingest"] + 1
        ingest.delay(failed.pk, "stale-token")

        context = signed_in_context(browser, live_asgi_url, admin)
        page = context.new_page()
        try:
            page.goto("/admin/")
            page.get_by_role("link", name="Open the dashboard").click()
            expect(page).to_have_url(re.compile(r"/admin/dashboard/$"))
            per_team = page.get_by_test_id("usage-per-team")
            expect(per_team.locator("svg")).to_contain_text("Acme Research")
            expect(per_team.locator("svg")).to_contain_text("2345")
            expect(per_team.locator("table")).to_contain_text("2345")
            per_model = page.get_by_test_id("usage-per-model")
            expect(per_model.locator("svg")).to_contain_text("1545")
            expect(per_model.locator("table")).to_contain_text("800")
            expect(page.get_by_test_id("usage-per-day").locator("svg rect")).to_have_count(14)
            expect(page.get_by_test_id("queue-ingest-depth")).to_have_text(str(depth))
            expect(page.get_by_test_id("failure-reason")).to_have_text(FAILURE_REASON)
            expect(page.get_by_test_id(f"model-status-{embedding.pk}")).to_have_text("Stopped")
            screenshot(page, "admin-dashboard")

            # The click itself waits for the navigation it starts, under its own timeout (30 s by
            # default): both get the launch's.
            with page.expect_navigation(timeout=LAUNCH_TIMEOUT_MS):
                page.get_by_test_id(f"launch-{embedding.pk}").click(timeout=LAUNCH_TIMEOUT_MS)
            expect(page.get_by_test_id(f"model-status-{embedding.pk}")).to_have_text("Running")
            expect(page.locator(".messagelist")).to_contain_text("MiniLM: launched")
            assert embedded_xinference.EMBEDDING_UID in {model.uid for model in xinference.client.running_models()}
            screenshot(page, "admin-model-launched")

            with page.expect_navigation(timeout=60_000):
                page.get_by_test_id(f"terminate-{embedding.pk}").click(timeout=60_000)
            expect(page.get_by_test_id(f"model-status-{embedding.pk}")).to_have_text("Stopped")
            assert embedded_xinference.EMBEDDING_UID not in {model.uid for model in xinference.client.running_models()}
            assert logged(embedding) == ["Launched", "Terminated"]

            page.get_by_role("link", name="Audit log", exact=True).click()
            expect(page.locator("#result_list")).to_contain_text("Launched")
            expect(page.locator("#result_list")).to_contain_text("Terminated")
            expect(page.locator("#result_list")).to_contain_text("MiniLM")
            screenshot(page, "admin-audit-log")
        finally:
            context.close()
            purge_queues()
            # Other tests in the session expect the two default models running.
            xinference.launch_default_models()


def _between(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]
