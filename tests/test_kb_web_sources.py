"""Web sources end to end: a small site on 127.0.0.1 (a sitemap index, pages with known facts,
a robots.txt that disallows one page) synced by the real Celery worker into a knowledge base
embedded by the real MiniLM on Xinference, then changed and synced again; the SSRF guard on the
URL given and on every redirect; what is not a web page; other teams and viewers; the beat task
that finds due and lost syncs; the section on the knowledge base's page, and a sync followed
live there in Chromium."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect
from rest_framework.test import APIClient

from accounts.models import Role
from kb.models import Chunk, Document, KnowledgeBase, WebPage, WebSource, WebSourceStatus
from kb.services import kb_create
from kb.web_fetch import FetchError, WebFetcher
from kb.web_sources import STALE_AFTER_S, web_sources_queue_due
from models_registry.services import registration_launch
from realservices.offline_models import offline_embedding_on
from realservices.workers import WorkerProcess
from realservices.xinference import XinferenceServer, free_port
from tests.browser import screenshot, signed_in_context
from tests.conftest import TEST_ALLOWED_NETWORKS, bearer_client, member_of
from tests.test_kb import all_settled, search, wait_until
from tests.test_web_kb import ALL_READY, INGEST_TIMEOUT_MS, csp_violations

SYNC_TIMEOUT_S = 120

FACT_A = "The Varnholm lighthouse is painted in teal and orange stripes."
FACT_B = "The Quillfield library lends brass telescopes for nine days."
FACT_B_NEW = "The Quillfield library now lends brass telescopes for fourteen days."
FACT_C = "Brasswick bakery shapes its rye loaves like sleeping owls."
FACT_E = "The Morrowdale ferry leaves the harbour at 6:40 every Thursday."
FACT_PRIVATE = "The vault code of the archive is 4417."


def html_page(title: str, fact: str) -> bytes:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><nav><a href='/'>Home</a></nav><main><h1>{title}</h1><p>{fact}</p></main></body></html>"
    ).encode()


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class Site:
    """A web site in a thread of the test process. `routes` may change between syncs; `requests`
    holds (path, User-Agent) of every request it got."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests.append((self.path, self.headers.get("User-Agent", "")))
                route = site.routes.get(self.path) or Route(b"not here", 404, "text/plain")
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-site", daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def paths(self) -> list[str]:
        return [path for path, _agent in self.requests]

    def urlset(self, *paths: str) -> bytes:
        entries = "".join(f"<url><loc>{path if '://' in path else self.url(path)}</loc></url>" for path in paths)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'
        ).encode()

    def sitemap_index(self, *paths: str) -> bytes:
        entries = "".join(f"<sitemap><loc>{self.url(path)}</loc></sitemap>" for path in paths)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</sitemapindex>'
        ).encode()


@pytest.fixture
def site() -> Iterator[Site]:
    site = Site()
    site.thread.start()
    try:
        yield site
    finally:
        site.server.shutdown()
        site.server.server_close()


@pytest.fixture
def setup(team, xinference: XinferenceServer, celery_worker: WorkerProcess):
    model = registration_launch(registration=offline_embedding_on(team, xinference.endpoint))
    client = bearer_client(member_of(team, Role.MEMBER), team)
    kb = kb_create(team=team, name="Site", embedding_model=model)
    return client, kb


def wait_for_sync(client: APIClient, source_id: int) -> dict[str, Any]:
    """The source once its sync is over (synced or failed), with its pages."""
    found: dict[str, Any] = {}

    def over() -> bool:
        found.update(client.get(f"/api/v1/web-sources/{source_id}/").json())
        return found["status"] in (WebSourceStatus.SYNCED, WebSourceStatus.FAILED)

    wait_until(over, timeout=SYNC_TIMEOUT_S)
    return found


def documents_by_name(kb: KnowledgeBase) -> dict[str, Document]:
    return {document.original_name: document for document in Document.objects.filter(knowledge_base=kb)}


def chunk_ids(document: Document) -> list[int]:
    return sorted(Chunk.objects.filter(document=document).values_list("pk", flat=True))


def settle(kb: KnowledgeBase) -> None:
    ids = list(Document.objects.filter(knowledge_base=kb).values_list("pk", flat=True))
    wait_until(lambda: all_settled(ids), poke=True)
    failed = {d.original_name: d.error for d in Document.objects.filter(knowledge_base=kb).exclude(status="ready")}
    assert failed == {}


def top_hit(client: APIClient, kb: KnowledgeBase, query: str) -> dict[str, Any]:
    results = search(client, kb, query, top_k=3)
    assert results, query
    return results[0]


@pytest.mark.django_db(transaction=True)
def test_a_sitemap_becomes_documents_and_stays_in_sync(setup, site: Site) -> None:
    client, kb = setup
    site.routes.update(
        {
            "/robots.txt": Route(b"User-agent: *\nDisallow: /private.html\n", content_type="text/plain"),
            "/sitemap.xml": Route(
                site.sitemap_index("/sitemap-pages.xml", "/sitemap-more.xml"), 200, "application/xml"
            ),
            "/sitemap-pages.xml": Route(
                site.urlset("/a.html", "/private.html", "/b.html", "http://elsewhere.example/x.html"),
                content_type="application/xml",
            ),
            "/sitemap-more.xml": Route(site.urlset("/c.html", "/e.html"), content_type="text/xml"),
            "/a.html": Route(html_page("Varnholm", FACT_A), headers={"ETag": '"a-1"'}),
            "/b.html": Route(html_page("Quillfield", FACT_B)),
            "/c.html": Route(html_page("Brasswick", FACT_C)),
            "/e.html": Route(html_page("Morrowdale", FACT_E)),
            "/private.html": Route(html_page("Archive", FACT_PRIVATE)),
        }
    )
    a, b, c, e = (site.url(path) for path in ("/a.html", "/b.html", "/c.html", "/e.html"))
    created = client.post(
        f"/api/v1/knowledge-bases/{kb.pk}/web-sources/",
        {"url": site.url("/sitemap.xml"), "max_pages": 3, "sync_interval_hours": 0},
        format="json",
    )
    assert created.status_code == 202, created.json()
    assert (created.json()["status"], created.json()["kind"]) == ("queued", "auto")
    source_id = created.json()["id"]

    source = wait_for_sync(client, source_id)
    assert (source["status"], source["kind"], source["last_error"]) == ("synced", "sitemap", "")
    assert (source["pages_done"], source["pages_total"], source["progress"]) == (3, 3, 100)
    assert source["last_synced_at"]
    assert source["next_sync_at"] is None
    assert "max_pages (3)" in source["notice"]
    assert "other hosts" in source["notice"]
    pages = {page["url"]: page for page in source["pages"]}
    assert pages[site.url("/private.html")]["status"] == "skipped"
    assert "robots.txt disallows" in pages[site.url("/private.html")]["error"]
    assert {pages[url]["status"] for url in (a, b, c)} == {"ok"}
    # The disallowed page and the page past the cap were never asked for; robots.txt was, once,
    # by the platform's crawler.
    assert "/private.html" not in site.paths()
    assert "/e.html" not in site.paths()
    assert [agent for path, agent in site.requests if path == "/robots.txt"] == [
        "chatplatform-bot/1.0 (knowledge-base web source)"
    ]
    assert set(documents_by_name(kb)) == {a, b, c}
    settle(kb)
    for query, url, fact in (
        ("What colours is the Varnholm lighthouse painted?", a, FACT_A),
        ("How long does the Quillfield library lend telescopes?", b, FACT_B),
        ("What shape are the Brasswick bakery's rye loaves?", c, FACT_C),
    ):
        hit = top_hit(client, kb, query)
        assert (hit["document_name"], fact in hit["text"]) == (url, True), (query, hit)
    assert not any("4417" in hit["text"] for hit in search(client, kb, "vault code of the archive", top_k=5))

    before = {
        name: (document.pk, chunk_ids(document), document.updated_at)
        for name, document in documents_by_name(kb).items()
    }
    site.routes["/b.html"] = Route(html_page("Quillfield", FACT_B_NEW))
    site.routes["/sitemap-more.xml"] = Route(site.urlset("/e.html"), content_type="text/xml")
    site.requests.clear()
    synced = client.post(f"/api/v1/web-sources/{source_id}/sync/")
    assert synced.status_code == 202
    assert synced.json()["status"] == "queued"
    source = wait_for_sync(client, source_id)
    assert (source["status"], source["last_error"]) == ("synced", "")
    settle(kb)

    after = documents_by_name(kb)
    assert set(after) == {a, b, e}
    # The unchanged page was asked again, conditionally, and kept its document and chunks.
    assert "/a.html" in site.paths()
    assert (after[a].pk, chunk_ids(after[a]), after[a].updated_at) == before[a]
    # The changed page kept its document, re-embedded: new chunks, none of the old ones.
    assert after[b].pk == before[b][0]
    assert chunk_ids(after[b])
    assert not set(chunk_ids(after[b])) & set(before[b][1])
    # The page the sitemap dropped is gone with its chunks; the page that now fits is in.
    assert not Document.objects.filter(pk=before[c][0]).exists()
    assert not Chunk.objects.filter(document_id=before[c][0]).exists()
    assert not WebPage.objects.filter(source_id=source_id, url=c).exists()
    hit = top_hit(client, kb, "How long does the Quillfield library lend telescopes?")
    assert (hit["document_name"], FACT_B_NEW in hit["text"]) == (b, True)
    assert not any("nine days" in hit["text"] for hit in search(client, kb, "Quillfield telescopes", top_k=5))
    hit = top_hit(client, kb, "When does the Morrowdale ferry leave?")
    assert (hit["document_name"], FACT_E in hit["text"]) == (e, True)

    # A page that answers 404 loses its document at the next sync.
    site.routes.pop("/e.html")
    client.post(f"/api/v1/web-sources/{source_id}/sync/")
    source = wait_for_sync(client, source_id)
    assert "1 page answered 404 or 410" in source["notice"]
    assert set(documents_by_name(kb)) == {a, b}

    listed = client.get(f"/api/v1/knowledge-bases/{kb.pk}/web-sources/").json()
    assert [row["id"] for row in listed] == [source_id]
    deleted = client.delete(f"/api/v1/web-sources/{source_id}/")
    assert deleted.status_code == 204
    assert not Document.objects.filter(knowledge_base=kb).exists()
    assert not Chunk.objects.filter(knowledge_base=kb).exists()
    assert not WebSource.objects.filter(pk=source_id).exists()


@pytest.mark.django_db(transaction=True)
def test_unsafe_addresses_and_what_is_not_a_page_are_refused(setup, site: Site, settings) -> None:
    client, kb = setup
    path = f"/api/v1/knowledge-bases/{kb.pk}/web-sources/"
    settings.OUTBOUND_ALLOWED_NETWORKS = []  # as in production: loopback refused
    for url, says in (
        (site.url("/a.html"), "OUTBOUND_ALLOWED_NETWORKS"),
        ("http://169.254.169.254/latest/meta-data/", "OUTBOUND_ALLOWED_NETWORKS"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "only http and https"),
    ):
        refused = client.post(path, {"url": url}, format="json")
        assert refused.status_code == 400, (url, refused.json())
        assert refused.json()["error"]["code"] == "unsafe_url"
        assert says in refused.json()["error"]["message"], url
    assert site.requests == []
    assert not WebSource.objects.exists()

    settings.OUTBOUND_ALLOWED_NETWORKS = list(TEST_ALLOWED_NETWORKS)  # the worker's, too
    refused = client.post(path, {"url": site.url("/a.html"), "max_pages": 100_000}, format="json")
    assert refused.status_code == 400
    assert "KB_WEB_MAX_PAGES" in refused.json()["error"]["message"]
    site.routes.update(
        {
            "/robots.txt": Route(b"User-agent: *\nAllow: /\n", content_type="text/plain"),
            "/moved.html": Route(status=302, headers={"Location": "http://10.255.255.1/internal"}),
            "/data.bin": Route(b"\x00\x01binary", content_type="application/octet-stream"),
            "/gone.html": Route(b"gone", 410, "text/plain"),
        }
    )
    for page, reason in (
        ("/moved.html", "10.255.255.1, a private address"),
        ("/data.bin", "not a web page but application/octet-stream"),
        ("/gone.html", "410"),
    ):
        created = client.post(path, {"url": site.url(page), "kind": "page"}, format="json")
        assert created.status_code == 202, created.json()
        source = wait_for_sync(client, created.json()["id"])
        assert source["status"] == "failed", source
        assert reason in source["last_error"], source
        assert [(row["status"], reason in row["error"]) for row in source["pages"]] == [("failed", True)]
    assert not Document.objects.filter(knowledge_base=kb).exists()
    duplicate = client.post(path, {"url": site.url("/data.bin")}, format="json")
    assert duplicate.status_code == 400
    assert "sync that one instead" in duplicate.json()["error"]["message"]


def test_the_fetcher_connects_only_where_the_guard_allows_and_reads_within_the_cap(site: Site, settings) -> None:
    site.routes.update(
        {
            "/robots.txt": Route(b"User-agent: chatplatform-bot\nDisallow: /mine/\n", content_type="text/plain"),
            "/big.html": Route(html_page("Big", "x" * 5000)),
            "/mine/page.html": Route(html_page("Mine", FACT_A)),
            "/loop.html": Route(status=301, headers={"Location": "/loop.html"}),
        }
    )
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    with WebFetcher() as fetcher, pytest.raises(FetchError, match="loopback"):
        fetcher.get(site.url("/big.html"))
    assert site.requests == []  # refused before connecting, robots.txt included

    settings.OUTBOUND_ALLOWED_NETWORKS = list(TEST_ALLOWED_NETWORKS)
    settings.KB_WEB_MAX_PAGE_BYTES = 1000
    settings.KB_WEB_HOST_DELAY_S = 0
    with WebFetcher() as fetcher:
        with pytest.raises(FetchError, match="larger than KB_WEB_MAX_PAGE_BYTES"):
            fetcher.get(site.url("/big.html"))
        with pytest.raises(FetchError, match=r"robots\.txt disallows"):
            fetcher.get(site.url("/mine/page.html"))
        with pytest.raises(FetchError, match="more than 5 redirects"):
            fetcher.get(site.url("/loop.html"))
    assert "/mine/page.html" not in site.paths()
    assert site.paths().count("/robots.txt") == 1


@pytest.fixture
def quiet_kb(team) -> KnowledgeBase:
    """A knowledge base on a model nothing calls: no document is ingested here."""
    return kb_create(
        team=team, name="Docs", embedding_model=offline_embedding_on(team, f"http://127.0.0.1:{free_port()}")
    )


def a_source(kb: KnowledgeBase, url: str = "https://docs.example.com/sitemap.xml", **values: Any) -> WebSource:
    values.setdefault("status", WebSourceStatus.SYNCED)
    return WebSource.objects.create(
        team_id=kb.team_id,
        knowledge_base=kb,
        url=url,
        max_pages=10,
        **values,
    )


@pytest.mark.django_db
def test_other_teams_find_nothing_and_viewers_change_nothing(team, other_team, quiet_kb) -> None:
    source = a_source(quiet_kb)
    outsider = bearer_client(member_of(other_team, Role.OWNER), other_team)
    viewer = bearer_client(member_of(team, Role.VIEWER), team)
    body = {"url": "http://127.0.0.1:9/page.html"}
    for method, url, data in (
        ("get", f"/api/v1/knowledge-bases/{quiet_kb.pk}/web-sources/", None),
        ("post", f"/api/v1/knowledge-bases/{quiet_kb.pk}/web-sources/", body),
        ("get", f"/api/v1/web-sources/{source.pk}/", None),
        ("post", f"/api/v1/web-sources/{source.pk}/sync/", {}),
        ("delete", f"/api/v1/web-sources/{source.pk}/", None),
    ):
        for client, expected in ((outsider, 404), (viewer, 200 if method == "get" else 403)):
            call = getattr(client, method)
            response = call(url) if data is None else call(url, data, format="json")
            assert response.status_code == expected, (method, url, response.content[:200])
    source.refresh_from_db()
    assert source.status == WebSourceStatus.SYNCED
    assert list(WebSource.objects.all()) == [source]


@pytest.mark.django_db
def test_beat_queues_due_syncs_and_syncs_whose_worker_was_lost(quiet_kb) -> None:
    now = timezone.now()
    due = a_source(quiet_kb, next_sync_at=now - timedelta(minutes=1))
    later = a_source(quiet_kb, url="https://docs.example.com/later", next_sync_at=now + timedelta(hours=1))
    manual = a_source(quiet_kb, url="https://docs.example.com/manual", sync_interval_hours=0)
    lost = a_source(quiet_kb, url="https://docs.example.com/lost", status=WebSourceStatus.SYNCING)
    running = a_source(quiet_kb, url="https://docs.example.com/running", status=WebSourceStatus.SYNCING)
    WebSource.objects.filter(pk=lost.pk).update(updated_at=now - timedelta(seconds=STALE_AFTER_S + 60))
    assert web_sources_queue_due() == sorted([due.pk, lost.pk])
    states = dict(WebSource.objects.values_list("pk", "status"))
    assert [states[s.pk] for s in (due, later, manual, lost, running)] == [
        "queued",
        "synced",
        "synced",
        "queued",
        "syncing",
    ]
    assert web_sources_queue_due() == []


@pytest.mark.django_db
def test_the_knowledge_base_page_shows_and_adds_web_sources(team, quiet_kb, settings) -> None:
    source = a_source(quiet_kb, pages_done=4, pages_total=4, last_error="1 of 4 pages could not be fetched")
    member = Client()
    member.force_login(member_of(team, Role.MEMBER))
    page = member.get(reverse("web:kb-detail", args=[quiet_kb.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-testid="web-sources"' in html
    assert source.url in html
    assert "1 of 4 pages could not be fetched" in html
    assert "Synced" in html
    assert 'data-testid="web-source-form"' in html

    added = member.post(
        reverse("web:web-source-add", args=[quiet_kb.pk]),
        {"url": "http://127.0.0.1:9/docs/", "kind": "page", "sync_interval_hours": "0"},
    )
    assert added.status_code == 302
    new = WebSource.objects.get(url="http://127.0.0.1:9/docs/")
    assert (new.kind, new.status, new.max_pages) == ("page", "queued", settings.KB_WEB_MAX_PAGES)
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    refused = member.post(
        reverse("web:web-source-add", args=[quiet_kb.pk]),
        {"url": "http://10.0.0.5/", "kind": "auto", "sync_interval_hours": "24"},
        follow=True,
    )
    assert "OUTBOUND_ALLOWED_NETWORKS" in refused.content.decode()
    assert not WebSource.objects.filter(url="http://10.0.0.5/").exists()

    synced = member.post(reverse("web:web-source-sync", args=[quiet_kb.pk, source.pk]))
    assert synced.status_code == 302
    source.refresh_from_db()
    assert source.status == WebSourceStatus.QUEUED
    assert "Queued" in member.get(reverse("web:kb-detail", args=[quiet_kb.pk])).content.decode()
    member.post(reverse("web:web-source-delete", args=[quiet_kb.pk, source.pk]))
    assert not WebSource.objects.filter(pk=source.pk).exists()

    viewer = Client()
    viewer.force_login(member_of(team, Role.VIEWER))
    html = viewer.get(reverse("web:kb-detail", args=[quiet_kb.pk])).content.decode()
    assert new.url in html
    assert 'data-testid="web-source-form"' not in html
    assert viewer.post(reverse("web:web-source-sync", args=[quiet_kb.pk, new.pk])).status_code == 403
    assert viewer.post(reverse("web:web-source-delete", args=[quiet_kb.pk, new.pk])).status_code == 403
    assert WebSource.objects.filter(pk=new.pk).exists()


# --- the section in Chromium: a sync followed live ------------------------------------------------


class HeldRoutes(dict[str, Route]):
    """The site's routes, where a request for a path held waits until the test lets it go: the
    sync stands still at a known point while the browser is looked at."""

    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__(routes)
        self.held: dict[str, threading.Event] = {}

    def hold(self, path: str) -> threading.Event:
        self.held[path] = threading.Event()
        return self.held[path]

    def release_all(self) -> None:
        for gate in self.held.values():
            gate.set()

    def get(self, path: str, default: Any = None) -> Any:
        gate = self.held.get(path)
        if gate is not None:
            gate.wait(timeout=SYNC_TIMEOUT_S)
        return super().get(path, default)


@pytest.mark.django_db(transaction=True)
def test_the_page_follows_a_sync_live_and_then_lists_its_documents(
    team, setup, site: Site, live_asgi_url: str, browser: Any
) -> None:
    _client, kb = setup
    routes = HeldRoutes(
        {
            "/robots.txt": Route(b"User-agent: *\nAllow: /\n", content_type="text/plain"),
            "/sitemap.xml": Route(site.urlset("/a.html", "/b.html", "/c.html"), content_type="application/xml"),
            "/a.html": Route(html_page("Varnholm", FACT_A)),
            "/b.html": Route(html_page("Quillfield", FACT_B)),
            "/c.html": Route(html_page("Brasswick", FACT_C)),
        }
    )
    sitemap_held = routes.hold("/sitemap.xml")
    second_page_held = routes.hold("/b.html")
    site.routes = routes
    sitemap = site.url("/sitemap.xml")
    context = signed_in_context(browser, live_asgi_url, member_of(team, Role.MEMBER))
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    try:
        page.goto(f"/kb/{kb.pk}/")
        page.get_by_test_id("web-sources-empty").wait_for()
        form = page.get_by_test_id("web-source-form")
        form.locator("input[name=url]").fill(sitemap)
        form.locator("select[name=kind]").select_option("sitemap")
        form.locator("input[name=sync_interval_hours]").fill("0")
        form.get_by_test_id("web-source-add").click()
        row = page.get_by_test_id("web-source")
        row.wait_for()
        status = row.get_by_test_id("web-source-status")
        progress = row.get_by_test_id("web-source-progress")
        # The worker waits on the sitemap: nothing is counted yet when the page is rendered.
        assert status.inner_text() in ("Queued", "Syncing")
        expect(progress).to_contain_text("0 of 0 (0%)")
        page.evaluate("window.__sameLoad = true")

        # The sitemap answers, the first page is fetched and the second one waits: the row says
        # so in place, without a reload.
        sitemap_held.set()
        expect(progress).to_contain_text("1 of 3 (33%)", timeout=SYNC_TIMEOUT_S * 1000)
        expect(status).to_have_text("Syncing")
        assert row.locator("progress").evaluate("bar => bar.value") == 33
        assert page.evaluate("window.__sameLoad") is True
        screenshot(page, "kb-web-source-syncing")

        # The sync ends: the page reloads itself and lists the documents the pages became, which
        # turn ready as the page follows them.
        second_page_held.set()
        documents = page.locator("#document-rows tr[data-document-id]")
        expect(documents).to_have_count(3, timeout=SYNC_TIMEOUT_S * 1000)
        assert page.evaluate("window.__sameLoad") is None
        expect(status).to_have_text("Synced")
        expect(progress).to_contain_text("3 of 3 (100%)")
        page.wait_for_function(ALL_READY, arg=3, timeout=INGEST_TIMEOUT_MS)

        page.reload()
        expect(documents.get_by_test_id("document-status")).to_have_text(["Ready"] * 3)
        names = documents.get_by_test_id("document-name").all_inner_texts()
        assert sorted(names) == sorted(site.url(path) for path in ("/a.html", "/b.html", "/c.html"))
        expect(status).to_have_text("Synced")
        expect(progress).to_contain_text("3 of 3 (100%)")
        assert row.locator("progress").count() == 0
        synced_at = WebSource.objects.get(knowledge_base=kb).last_synced_at
        assert synced_at is not None
        last_synced = row.get_by_test_id("web-source-last-synced").locator("time")
        assert datetime.fromisoformat(last_synced.get_attribute("datetime") or "") == synced_at
        assert page.get_by_test_id("web-sources-error").is_hidden()
        screenshot(page, "kb-web-source-synced")
        assert csp_violations(console) == []
    finally:
        routes.release_all()
        context.close()

    viewer = signed_in_context(browser, live_asgi_url, member_of(team, Role.VIEWER))
    page = viewer.new_page()
    page.goto(f"/kb/{kb.pk}/")
    row = page.get_by_test_id("web-source")
    expect(row.get_by_test_id("web-source-status")).to_have_text("Synced")
    expect(row).to_contain_text(sitemap)
    assert row.get_by_test_id("web-source-last-synced").locator("time").count() == 1
    assert page.get_by_test_id("web-source-form").count() == 0
    assert row.get_by_test_id("web-source-sync").count() == 0
    assert row.get_by_test_id("web-source-delete").count() == 0
    viewer.close()
