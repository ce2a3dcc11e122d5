"""The knowledge-base pages: list and create, upload with live progress, hit testing, delete;
team isolation and roles with the Django test client, the whole flow in Chromium against the
real worker and the real MiniLM on Xinference."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Role
from accounts.services import membership_set
from kb.models import Document, KnowledgeBase
from kb.services import documents_upload, kb_create
from models_registry.models import ModelRegistration
from models_registry.services import registration_launch
from realservices.offline_models import offline_embedding_on
from realservices.xinference import XinferenceServer, free_port
from tests.browser import screenshot, signed_in_context
from tests.conftest import member_of
from tests.documents import FACT_EN, samples

INGEST_TIMEOUT_MS = 180_000
XSS_PHRASE = "Purple giraffes graze beside the observatory on Tuesdays."
XSS_TEXT = (
    f'{XSS_PHRASE}\n\n<script>window.__xss=1</script>\n<img src=x onerror="window.__xss=2">\n'
    "The end of the hostile sample."
)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def upload_file(kb: KnowledgeBase, name: str, data: bytes) -> None:
    documents_upload(kb=kb, uploads=[(io.BytesIO(data), name)])


# --- the Django test client: roles, teams, rendering --------------------------------------------


@pytest.fixture
def offline_model(team) -> ModelRegistration:
    """A registration nothing calls: the pages only read it (no document is ingested here)."""
    return offline_embedding_on(team, f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def handbook(team, offline_model) -> KnowledgeBase:
    return kb_create(team=team, name="Handbook", description="How we work.", embedding_model=offline_model)


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_the_login_page(handbook) -> None:
    for url in (reverse("web:kb-list"), reverse("web:kb-detail", args=[handbook.pk])):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("web:login"))
    response = Client().post(reverse("web:kb-create"), {"name": "x"})
    assert response.status_code == 302
    assert not KnowledgeBase.objects.filter(name="x").exists()


@pytest.mark.django_db
def test_the_list_shows_the_current_teams_knowledge_bases_with_counts(team, other_team, handbook, member) -> None:
    other_model = offline_embedding_on(other_team, f"http://127.0.0.1:{free_port()}")
    kb_create(team=other_team, name="Secret plans", embedding_model=other_model)
    upload_file(handbook, "one.txt", b"First document.")
    upload_file(handbook, "two.txt", b"Second document.")
    Document.objects.filter(original_name="one.txt").update(status="ready", progress=100)
    Document.objects.filter(original_name="two.txt").update(status="failed", error="broken")
    response = client_for(member).get(reverse("web:kb-list"))
    assert response.status_code == 200
    rows = response.context["knowledge_bases"]
    assert [(kb.name, kb.document_count, kb.ready_count, kb.failed_count) for kb in rows] == [("Handbook", 2, 1, 1)]
    html = response.content.decode()
    assert "How we work." in html
    assert "MiniLM" in html
    assert "Secret plans" not in html


@pytest.mark.django_db
def test_a_knowledge_base_of_a_team_the_user_is_not_in_is_not_found(handbook, outsider) -> None:
    response = client_for(outsider).get(reverse("web:kb-detail", args=[handbook.pk]))
    assert response.status_code == 404


@pytest.mark.django_db
def test_creating_in_a_team_the_user_is_not_in_is_not_found(team, other_team, offline_model) -> None:
    admin = member_of(other_team, Role.ADMIN)
    response = client_for(admin).post(
        reverse("web:kb-create"),
        {
            "team": team.pk,
            "name": "Intruder",
            "embedding_model": offline_model.pk,
            "splitter": "recursive",
            "chunk_size": 800,
            "chunk_overlap": 100,
        },
    )
    assert response.status_code == 404
    assert not KnowledgeBase.objects.filter(name="Intruder").exists()


@pytest.mark.django_db
def test_an_embedding_model_of_another_team_is_not_a_choice(team, other_team, offline_model) -> None:
    admin = member_of(team, Role.ADMIN)
    foreign = offline_embedding_on(other_team, f"http://127.0.0.1:{free_port()}")
    response = client_for(admin).post(
        reverse("web:kb-create"),
        {
            "team": team.pk,
            "name": "Borrowed",
            "embedding_model": foreign.pk,
            "splitter": "recursive",
            "chunk_size": 800,
            "chunk_overlap": 100,
        },
    )
    assert response.status_code == 400
    assert response.context["form"].errors["embedding_model"]
    assert not KnowledgeBase.objects.filter(name="Borrowed").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER])
def test_viewers_and_members_cannot_create_as_in_the_api(team, offline_model, role) -> None:
    user = member_of(team, role)
    client = client_for(user)
    page = client.get(reverse("web:kb-list"))
    assert page.context["can_create"] is False
    assert b'data-testid="kb-create-form"' not in page.content
    response = client.post(
        reverse("web:kb-create"),
        {
            "team": team.pk,
            "name": "Mine",
            "embedding_model": offline_model.pk,
            "splitter": "recursive",
            "chunk_size": 800,
            "chunk_overlap": 100,
        },
    )
    assert response.status_code == 403
    assert not KnowledgeBase.objects.filter(name="Mine").exists()


@pytest.mark.django_db
def test_an_admin_creates_one_and_a_taken_name_is_a_form_error(team, offline_model) -> None:
    client = client_for(member_of(team, Role.ADMIN))
    page = client.get(reverse("web:kb-list"))
    assert b'data-testid="kb-create-form"' in page.content
    form = {
        "team": team.pk,
        "name": "Runbooks",
        "description": "On call.",
        "embedding_model": offline_model.pk,
        "splitter": "headings",
        "chunk_size": 400,
        "chunk_overlap": 40,
    }
    response = client.post(reverse("web:kb-create"), form)
    kb = KnowledgeBase.objects.get(team=team, name="Runbooks")
    assert response.status_code == 302
    assert response["Location"] == reverse("web:kb-detail", args=[kb.pk])
    assert (kb.description, kb.embedding_model_id, kb.splitter, kb.chunk_size, kb.chunk_overlap) == (
        "On call.",
        offline_model.pk,
        "headings",
        400,
        40,
    )
    again = client.post(reverse("web:kb-create"), form)
    assert again.status_code == 400
    assert "already" in " ".join(again.context["form"].non_field_errors())
    assert KnowledgeBase.objects.filter(team=team, name="Runbooks").count() == 1


@pytest.mark.django_db
def test_viewers_read_and_search_but_see_no_upload_or_delete(team, handbook) -> None:
    upload_file(handbook, "one.txt", b"First document.")
    viewer_page = client_for(member_of(team, Role.VIEWER)).get(reverse("web:kb-detail", args=[handbook.pk]))
    assert viewer_page.status_code == 200
    html = viewer_page.content.decode()
    assert "one.txt" in html
    assert 'data-testid="search-form"' in html
    assert 'data-testid="file-input"' not in html
    assert 'data-testid="dropzone"' not in html
    assert 'data-testid="document-delete"' not in html
    member_html = client_for(member_of(team, Role.MEMBER)).get(reverse("web:kb-detail", args=[handbook.pk]))
    assert b'data-testid="file-input"' in member_html.content
    assert b'data-testid="document-delete"' in member_html.content


@pytest.mark.django_db
def test_document_names_and_failure_reasons_are_escaped(team, handbook, member) -> None:
    upload_file(handbook, "notes.txt", b"Some words.")
    Document.objects.filter(knowledge_base=handbook).update(
        original_name="<img src=x onerror=alert(1)>.txt", status="failed", error="<script>alert(2)</script>"
    )
    html = client_for(member).get(reverse("web:kb-detail", args=[handbook.pk])).content.decode()
    assert "<img src=x" not in html
    assert "<script>alert(2)" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html


@pytest.mark.django_db
def test_a_link_into_another_of_the_users_teams_switches_the_team(team, other_team, handbook, member) -> None:
    membership_set(team=other_team, user=member, role=Role.VIEWER)
    other_model = offline_embedding_on(other_team, f"http://127.0.0.1:{free_port()}")
    elsewhere = kb_create(team=other_team, name="Elsewhere", embedding_model=other_model)
    client = client_for(member)
    client.post(reverse("web:switch-team"), {"team": team.pk})
    response = client.get(reverse("web:kb-detail", args=[elsewhere.pk]))
    assert response.status_code == 200
    assert response.context["can_upload"] is False  # a viewer there
    listing = client.get(reverse("web:kb-list"))
    assert [kb.name for kb in listing.context["knowledge_bases"]] == ["Elsewhere"]


# --- Chromium against the live server, the worker and MiniLM ------------------------------------

browser_db = pytest.mark.django_db(transaction=True)

STATUS_RECORDER = """() => {
  window.__statuses = [];
  const record = (row) => {
    if (row.dataset && row.dataset.documentId) {
      const bar = row.querySelector('.js-progress');
      window.__statuses.push([row.dataset.documentId, row.dataset.status, bar ? bar.style.width : '']);
    }
  };
  new MutationObserver((changes) => {
    for (const change of changes) {
      if (change.type === 'attributes') record(change.target.closest('tr'));
      for (const node of change.addedNodes || []) if (node.nodeType === 1) record(node);
    }
  }).observe(document.getElementById('document-rows'), {
    subtree: true, childList: true, attributes: true, attributeFilter: ['data-status', 'style'],
  });
}"""

ALL_READY = """(count) => {
  const rows = [...document.querySelectorAll('#document-rows tr[data-document-id]')];
  return rows.length === count && rows.every((row) => row.dataset.status === 'ready');
}"""


DROP_FILE = """([name, text]) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([text], name, {type: 'text/plain'}));
  const zone = document.getElementById('dropzone');
  zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true, cancelable: true}));
  zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


def file_payload(name: str, data: bytes, mime: str = "text/plain") -> dict[str, Any]:
    return {"name": name, "mimeType": mime, "buffer": data}


def csp_violations(messages: list[str]) -> list[str]:
    return [message for message in messages if "Content Security Policy" in message]


@browser_db
def test_upload_follow_progress_hit_test_and_open_the_source(
    team, xinference: XinferenceServer, celery_worker_process: str, live_asgi_url: str, browser: Any
) -> None:
    model = registration_launch(registration=offline_embedding_on(team, xinference.endpoint))
    admin = member_of(team, Role.ADMIN)
    context = signed_in_context(browser, live_asgi_url, admin)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    page.goto("/kb/")
    page.get_by_test_id("kb-empty").wait_for()
    page.fill("input[name=name]", "Field guide")
    page.fill("textarea[name=description]", "Notes from the northern coast.")
    page.select_option("select[name=embedding_model]", str(model.pk))
    page.get_by_test_id("kb-create").click()
    page.get_by_test_id("kb-name").wait_for()
    kb = KnowledgeBase.objects.get(team=team, name="Field guide")
    assert page.url.endswith(f"/kb/{kb.pk}/")
    assert page.get_by_test_id("documents-empty").is_visible()

    page.evaluate(STATUS_RECORDER)
    files = samples()
    page.set_input_files(
        "[data-testid=file-input]",
        files=[
            file_payload("notes.txt", files["notes.txt"]),
            file_payload("guide.md", files["guide.md"], "text/markdown"),
            file_payload("hostile.txt", XSS_TEXT.encode()),
            file_payload("blob.txt", b"\x00\x01\x02binary\x00" * 50, "application/octet-stream"),
            file_payload("empty.txt", b""),
        ],
    )
    rejected = page.get_by_test_id("upload-rejected")
    rejected.wait_for()
    rejected_text = rejected.inner_text()
    assert "blob.txt holds binary data" in rejected_text
    assert "empty.txt is empty" in rejected_text
    assert page.locator("#document-rows tr[data-document-id]").count() == 3

    page.wait_for_function(ALL_READY, arg=3, timeout=INGEST_TIMEOUT_MS)
    statuses = page.evaluate("window.__statuses")
    ids = {str(document.pk) for document in Document.objects.filter(knowledge_base=kb)}
    assert len(ids) == 3
    for document_id in ids:
        seen = [status for row_id, status, _width in statuses if row_id == document_id]
        # Each row appeared in progress and then turned ready in place, without a reload.
        assert seen, statuses
        assert seen[0] in ("queued", "parsing", "embedding"), statuses
        assert seen[-1] == "ready", statuses
    for row in page.locator("#document-rows tr[data-document-id]").all():
        assert row.locator(".js-progress").evaluate("bar => bar.style.width") == "100%"
        assert row.get_by_test_id("document-progress").inner_text() == "100%"
        assert row.get_by_test_id("document-status").inner_text() == "Ready"
    assert page.get_by_test_id("count-total").inner_text() == "3"
    assert page.get_by_test_id("count-ready").inner_text() == "3"
    assert not page.get_by_test_id("document-duplicate").first.is_visible()
    screenshot(page, "kb-detail")

    # The same file again, dropped on the drop zone this time: nothing new, and its row says so.
    page.evaluate(DROP_FILE, ["notes-again.txt", files["notes.txt"].decode()])
    page.get_by_test_id("upload-duplicates").wait_for()
    assert "notes.txt" in page.get_by_test_id("upload-duplicates").inner_text()
    notes_row = page.locator("#document-rows tr", has_text="notes.txt")
    assert notes_row.get_by_test_id("document-duplicate").is_visible()
    assert not page.locator("#document-rows tr", has_text="guide.md").get_by_test_id("document-duplicate").is_visible()
    assert page.get_by_test_id("count-total").inner_text() == "3"
    assert Document.objects.filter(knowledge_base=kb).count() == 3

    # Hit testing, the three modes side by side.
    page.fill("[data-testid=search-query]", "How many cats does the lighthouse keeper of Vardø feed?")
    page.select_option("[data-testid=search-mode]", "all")
    page.get_by_test_id("search-submit").click()
    page.locator("[data-testid=hit-column]").nth(2).wait_for()
    assert page.locator("[data-testid=hit-column]").count() == 3
    for mode in ("hybrid", "vector", "fulltext"):
        column = page.locator(f"[data-testid=hit-column][data-mode={mode}]")
        texts = column.get_by_test_id("hit-text").all_inner_texts()
        assert any("seventeen cats" in text for text in texts), (mode, texts)
        assert column.get_by_test_id("hit-score").count() >= 1
    screenshot(page, "kb-hit-testing")

    # A document full of markup shows it as text and runs none of it.
    page.fill("[data-testid=search-query]", "purple giraffes observatory")
    page.select_option("[data-testid=search-mode]", "hybrid")
    page.get_by_test_id("search-submit").click()
    hostile = page.locator("[data-testid=hit-text]", has_text="Purple giraffes")
    hostile.first.wait_for()
    assert "<script>window.__xss=1</script>" in hostile.first.inner_text()
    assert page.get_by_text("<script>window.__xss=1</script>").first.is_visible()
    assert page.locator("#search-results script, #search-results img").count() == 0
    assert page.evaluate("window.__xss") is None

    # The result of the fact opens its source page.
    page.fill("[data-testid=search-query]", "lighthouse keeper of Vardø")
    page.get_by_test_id("search-submit").click()
    fact_hit = page.locator("[data-testid=hit]", has_text="seventeen cats").first
    fact_hit.wait_for()
    fact_hit.get_by_test_id("hit-link").click()
    page.get_by_test_id("cited-chunk").wait_for()
    assert "/sources/" in page.url
    assert FACT_EN in page.get_by_test_id("cited-chunk").inner_text()
    assert page.evaluate("window.__xss") is None

    # Delete a document from the table.
    page.goto(f"/kb/{kb.pk}/")
    page.once("dialog", lambda dialog: dialog.accept())
    guide_row = page.locator("#document-rows tr", has_text="guide.md")
    guide_row.get_by_test_id("document-delete").click()
    guide_row.wait_for(state="detached")
    assert page.get_by_test_id("count-total").inner_text() == "2"
    assert page.get_by_test_id("count-ready").inner_text() == "2"
    assert not Document.objects.filter(knowledge_base=kb, original_name="guide.md").exists()

    page.goto("/kb/")
    row = page.get_by_test_id("kb-row")
    assert "Field guide" in row.inner_text()
    assert "MiniLM" in row.inner_text()
    screenshot(page, "kb-list")
    assert csp_violations(console) == []
    context.close()

    # At phone width: nothing wider than the screen, the hit test still usable.
    phone = signed_in_context(browser, live_asgi_url, admin, phone=True)
    page = phone.new_page()
    page.goto(f"/kb/{kb.pk}/")
    page.get_by_test_id("documents").wait_for()
    page.fill("[data-testid=search-query]", "lighthouse keeper")
    page.get_by_test_id("search-submit").click()
    page.get_by_test_id("hit").first.wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "kb-phone")
    page.goto("/kb/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "kb-list-phone")
    phone.close()
