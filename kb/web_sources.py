"""Web sources: a URL or a sitemap whose pages become documents of a knowledge base, searched like
uploads, and kept in sync by the worker (kb.tasks.web_sync; beat's `kb-web-sync` queues the ones
that are due).

A sync lists the pages (the page itself, or every same-host `<loc>` of the sitemap, nested
sitemap indexes followed up to MAX_SITEMAP_DEPTH levels and MAX_SITEMAPS files), leaves out what
robots.txt disallows and what is past the source's `max_pages`, and fetches each page through
kb.web_fetch (the SSRF guard). A page whose body hashes as before (or that answers 304 to a
conditional request) is left alone, chunks and all; a changed page gets its document's file
replaced and is queued again through the usual ingestion; a new page is added like an upload;
a page that answers 404/410, or that the sitemap no longer lists, loses its document. A page
that fails otherwise (5xx, timeout, not HTML, a redirect the guard refuses) keeps what it had and
says why. A "page" source fetches that page alone: there is no crawling of links.

A page's document is named by its URL (`original_name`), so search hits and citations say where
to read it; pages with URLs over 255 characters are skipped, saying so.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from core.domain_errors import DomainError
from core.outbound import outbound_url_check
from kb.models import (
    Document,
    KnowledgeBase,
    WebPage,
    WebPageStatus,
    WebSource,
    WebSourceKind,
    WebSourceStatus,
)
from kb.parsing import UnsupportedFile, detect_type
from kb.services import KnowledgeBaseError, document_delete, document_replace_file, documents_add
from kb.storage import StorageQuotaExceeded, storage_reserved
from kb.uploads import IncomingFile, workdir
from kb.web_fetch import Fetched, FetchError, WebFetcher, page_text, sitemap_of, without_fragment

logger = logging.getLogger(__name__)

DEFAULT_SYNC_INTERVAL_HOURS = 24
MAX_SYNC_INTERVAL_HOURS = 24 * 365
MAX_URL_CHARS = 2000
MAX_NAME_CHARS = 255  # Document.original_name holds the page's URL
MAX_SITEMAP_DEPTH = 3  # a sitemap index of sitemap indexes of sitemaps
MAX_SITEMAPS = 50  # sitemap files one sync reads at most
# A sync whose row has not moved for this long lost its worker: beat queues it again. Every
# request a sync makes moves it, and no request takes longer than KB_WEB_TIMEOUT_S.
STALE_AFTER_S = 15 * 60
HEARTBEAT_S = 10
PAGE_KINDS = frozenset(("html", "markdown", "text"))


class WebSourceError(DomainError):
    code = "invalid_web_source"


# --- writes from the API and the web page ---------------------------------------------------------


def web_source_create(
    *,
    kb: KnowledgeBase,
    url: str,
    kind: str = WebSourceKind.AUTO,
    max_pages: int | None = None,
    sync_interval_hours: int = DEFAULT_SYNC_INTERVAL_HOURS,
    created_by: User | None = None,
) -> WebSource:
    """A new source, its first sync queued. The URL goes through the SSRF guard now (400
    `unsafe_url` saying what to do), and every request of every sync goes through it again."""
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise WebSourceError(f"url: at most {MAX_URL_CHARS} characters")
    outbound_url_check(url)
    url = without_fragment(url)
    if kind not in WebSourceKind.values:
        raise WebSourceError(f"kind: one of {', '.join(WebSourceKind.values)} (or leave it out to decide by content)")
    limit = settings.KB_WEB_MAX_PAGES
    max_pages = limit if max_pages is None else max_pages
    if not 1 <= max_pages <= limit:
        raise WebSourceError(f"max_pages: between 1 and {limit} (KB_WEB_MAX_PAGES, set by the operator)")
    if not 0 <= sync_interval_hours <= MAX_SYNC_INTERVAL_HOURS:
        raise WebSourceError(
            f"sync_interval_hours: between 0 (synced only when asked) and {MAX_SYNC_INTERVAL_HOURS} (a year)"
        )
    with transaction.atomic():
        existing = WebSource.objects.filter(knowledge_base=kb, url=url).first()
        if existing is not None:
            raise WebSourceError(
                f"this knowledge base has {url} as a web source already (id {existing.pk}): sync that one instead"
            )
        source = WebSource.objects.create(
            team_id=kb.team_id,
            knowledge_base=kb,
            url=url,
            kind=kind,
            max_pages=max_pages,
            sync_interval_hours=sync_interval_hours,
            created_by=created_by,
        )
        transaction.on_commit(lambda: _sync_soon(source.pk))
    return source


def web_source_sync_request(*, source: WebSource) -> WebSource:
    """Sync now. A sync queued or under way already is left to finish (nothing is queued twice)."""
    with transaction.atomic():
        locked = WebSource.objects.select_for_update().get(pk=source.pk)
        if locked.status not in (WebSourceStatus.QUEUED, WebSourceStatus.SYNCING):
            locked.status = WebSourceStatus.QUEUED
            locked.pages_done = 0
            locked.save(update_fields=["status", "pages_done", "updated_at"])
            transaction.on_commit(lambda: _sync_soon(locked.pk))
    return locked


def web_source_delete(*, source: WebSource) -> None:
    """The source, its pages and their documents (chunks and stored files too). A sync under way
    finds the source gone at its next page and stops."""
    with transaction.atomic():
        locked = WebSource.objects.select_for_update().filter(pk=source.pk).first()
        if locked is None:
            return
        for document in Document.objects.filter(web_page__source=locked):
            document_delete(document=document)
        locked.delete()


def web_sources_queue_due() -> list[int]:
    """What beat runs (`kb-web-sync`): sources whose next sync is due, and syncs whose worker was
    lost (queued or syncing, their row still for STALE_AFTER_S), queued; their ids."""
    now = timezone.now()
    with transaction.atomic():
        due = WebSource.objects.select_for_update(skip_locked=True).filter(
            status__in=(WebSourceStatus.SYNCED, WebSourceStatus.FAILED), next_sync_at__lte=now
        )
        lost = WebSource.objects.select_for_update(skip_locked=True).filter(
            status__in=(WebSourceStatus.QUEUED, WebSourceStatus.SYNCING),
            updated_at__lt=now - timedelta(seconds=STALE_AFTER_S),
        )
        ids = sorted({*due.values_list("pk", flat=True), *lost.values_list("pk", flat=True)})
        WebSource.objects.filter(pk__in=ids).update(status=WebSourceStatus.QUEUED, pages_done=0, updated_at=now)
    return ids


def _sync_soon(source_id: int) -> None:
    from kb.tasks import web_sync_soon

    web_sync_soon(source_id)


# --- the sync, as the worker runs it ------------------------------------------------------------------


def web_source_sync(*, source_id: int) -> None:
    """One sync of one source. Stops quietly when the source is gone or its sync is not queued (a
    message delivered twice)."""
    claimed = WebSource.objects.filter(pk=source_id, status=WebSourceStatus.QUEUED).update(
        status=WebSourceStatus.SYNCING, pages_done=0, pages_total=0, updated_at=timezone.now()
    )
    source = WebSource.objects.select_related("knowledge_base").filter(pk=source_id).first()
    if not claimed or source is None:
        return
    try:
        _Sync(source).run()
    except _SourceGone:
        logger.info("web source %s was deleted during its sync", source_id)
    except Exception as exc:
        logger.exception("the sync of web source %s failed", source_id)
        _finish(source, status=WebSourceStatus.FAILED, error=f"the sync stopped on an error: {exc}", notice="")
        raise


class _SourceGone(Exception):
    pass


@dataclass
class _Listing:
    pages: list[str] = field(default_factory=list)  # fetched this sync, in order
    skipped: dict[str, str] = field(default_factory=dict)  # listed but not fetched: why
    notices: list[str] = field(default_factory=list)
    complete: bool = True  # every sitemap was read: pages no longer listed may be removed
    prefetched: Fetched | None = None  # the source's own answer when it was the page


class _Sync:
    def __init__(self, source: WebSource) -> None:
        self.source = source
        self.kb = source.knowledge_base
        self.gone = 0  # pages that answered 404/410 this sync (their documents removed)
        self._beat = 0.0

    def run(self) -> None:
        with WebFetcher(heartbeat=self._heartbeat) as fetcher:
            try:
                listing = self._list(fetcher)
            except FetchError as exc:
                _finish(self.source, status=WebSourceStatus.FAILED, error=f"{self.source.url}: {exc}", notice="")
                return
            WebSource.objects.filter(pk=self.source.pk).update(
                pages_total=len(listing.pages), updated_at=timezone.now()
            )
            for url, reason in listing.skipped.items():
                self._skip(url, reason)
            deadline = time.monotonic() + max(settings.CELERY_TASK_SOFT_TIME_LIMIT - 300, 60)
            for done, url in enumerate(listing.pages, start=1):
                if time.monotonic() > deadline:
                    listing.notices.append(
                        f"the sync ran out of time after {done - 1} of {len(listing.pages)} pages; "
                        "the next sync goes on with the rest"
                    )
                    break
                prefetched = listing.prefetched if url == self.source.url else None
                self._page(fetcher, url, prefetched)
                WebSource.objects.filter(pk=self.source.pk).update(pages_done=done, updated_at=timezone.now())
        if listing.complete:
            listed = {*listing.pages, *listing.skipped}
            for page in WebPage.objects.filter(source=self.source).exclude(url__in=listed).select_related("document"):
                self._remove(page)
        self._finish(listing)

    # --- listing --------------------------------------------------------------------------------

    def _list(self, fetcher: WebFetcher) -> _Listing:
        source = self.source
        listing = _Listing()
        if source.kind == WebSourceKind.PAGE:
            self._take(fetcher, listing, [source.url])
            return listing
        fetched = fetcher.get(source.url)
        sitemap = sitemap_of(fetched)
        if sitemap is None:
            if source.kind == WebSourceKind.SITEMAP:
                raise FetchError(
                    "not a sitemap (no <urlset> or <sitemapindex>): add the page as kind `page`, or give the "
                    "sitemap's own URL"
                )
            self._set_kind(WebSourceKind.PAGE)
            listing.prefetched = fetched
            self._take(fetcher, listing, [source.url])
            return listing
        self._set_kind(WebSourceKind.SITEMAP)
        locations: list[str] = []
        queue = [(source.url, sitemap, 0)]
        read = 1
        seen_sitemaps = {source.url}
        while queue:
            sitemap_url, current, depth = queue.pop(0)
            if current.kind == "urlset":
                locations.extend(current.locations)
                continue
            for child in current.locations:
                child_url = self._same_host(child)
                if child_url is None or child_url in seen_sitemaps:
                    continue
                seen_sitemaps.add(child_url)
                if depth + 1 > MAX_SITEMAP_DEPTH or read >= MAX_SITEMAPS:
                    listing.notices.append(
                        f"sitemaps nested deeper than {MAX_SITEMAP_DEPTH} levels or past {MAX_SITEMAPS} files "
                        "were not read"
                    )
                    listing.complete = False
                    continue
                read += 1
                try:
                    nested = sitemap_of(fetcher.get(child_url))
                except FetchError as exc:
                    nested = None
                    listing.notices.append(f"the sitemap {child_url} could not be read: {exc}")
                else:
                    if nested is None:
                        listing.notices.append(f"{child_url}, listed in {sitemap_url}, is not a sitemap")
                if nested is None:
                    listing.complete = False  # its pages may be listed there still: none is removed
                    continue
                queue.append((child_url, nested, depth + 1))
        pages: list[str] = []
        elsewhere = 0
        for location in locations:
            page_url = self._same_host(location)
            if page_url is None:
                elsewhere += 1
            elif page_url not in pages:
                pages.append(page_url)
        if elsewhere:
            listing.notices.append(f"{elsewhere} URLs on other hosts than the sitemap's were left out")
        self._take(fetcher, listing, pages)
        return listing

    def _take(self, fetcher: WebFetcher, listing: _Listing, urls: list[str]) -> None:
        """Pages robots.txt allows, up to max_pages; the others recorded as skipped or left out."""
        past_cap = 0
        for url in urls:
            refusal = fetcher.robots_refusal(url)
            if refusal is not None:
                listing.skipped[url] = refusal
            elif len(url) > MAX_NAME_CHARS:
                listing.skipped[url] = f"a URL longer than {MAX_NAME_CHARS} characters: a document cannot be named so"
            elif len(listing.pages) < self.source.max_pages:
                listing.pages.append(url)
            else:
                past_cap += 1
        if past_cap:
            listing.notices.append(
                f"{_pages(past_cap)} more listed than max_pages ({self.source.max_pages}) lets in: left out"
            )
        if listing.skipped:
            listing.notices.append(f"{_pages(len(listing.skipped))} skipped (see the pages for why)")

    def _same_host(self, location: str) -> str | None:
        """The URL without its fragment when it is http(s) on the source's host and port, else None."""
        try:
            parts, own = urlsplit(location.strip()), urlsplit(self.source.url)
            if parts.scheme.lower() not in ("http", "https") or parts.username or parts.password:
                return None
            same = (parts.hostname or "").lower() == (own.hostname or "").lower() and parts.port == own.port
        except ValueError:
            return None
        url = without_fragment(location)
        return url if same and len(url) <= MAX_URL_CHARS else None

    def _set_kind(self, kind: str) -> None:
        if self.source.kind != kind:
            self.source.kind = kind
            WebSource.objects.filter(pk=self.source.pk).update(kind=kind)

    # --- pages ----------------------------------------------------------------------------------

    def _page(self, fetcher: WebFetcher, url: str, prefetched: Fetched | None) -> None:
        page = WebPage.objects.filter(source=self.source, url=url).select_related("document").first()
        conditional: dict[str, str] = {}
        if page is not None and page.document_id is not None and page.status == WebPageStatus.OK:
            if page.etag:
                conditional["If-None-Match"] = page.etag
            if page.last_modified:
                conditional["If-Modified-Since"] = page.last_modified
        try:
            fetched = prefetched or fetcher.get(url, headers=conditional)
            if fetched.not_modified and page is not None and page.document_id is not None:
                self._record(url, status=WebPageStatus.OK, fetched=fetched, keep_hash=True)
                return
            text, kind = page_text(fetched)
        except FetchError as exc:
            if exc.gone and page is not None:
                self.gone += 1
                self._remove(page)
            else:
                self._record(url, status=WebPageStatus.FAILED, error=str(exc))
            return
        body_sha256 = hashlib.sha256(fetched.body).hexdigest()
        if page is not None and page.document_id is not None and page.content_sha256 == body_sha256:
            self._record(url, status=WebPageStatus.OK, fetched=fetched, content_sha256=body_sha256)
            return  # unchanged: its document and chunks stay as they are
        with workdir() as scratch:
            try:
                incoming = _stored_page(url, text, kind, fetched.media_type, scratch)
            except UnsupportedFile as exc:
                self._record(url, status=WebPageStatus.FAILED, error=str(exc))
                return
            self._store(url, page, incoming, fetched, body_sha256)

    def _store(
        self, url: str, page: WebPage | None, incoming: IncomingFile, fetched: Fetched, body_sha256: str
    ) -> None:
        """A changed page replaces its document's file; a new one becomes a document."""
        try:
            if page is not None and page.document is not None:
                try:
                    document_replace_file(document=page.document, incoming=incoming)
                except Document.DoesNotExist:
                    raise _SourceGone() from None  # deleted with its source meanwhile
                self._record(url, status=WebPageStatus.OK, fetched=fetched, content_sha256=body_sha256)
                return
            with storage_reserved(kb=self.kb, files=[incoming]), transaction.atomic():
                if not WebSource.objects.select_for_update().filter(pk=self.source.pk).exists():
                    raise _SourceGone()
                result = documents_add(kb=self.kb, files=[incoming])
                if result.duplicates:
                    twin = result.duplicates[0]
                    self._record(
                        url,
                        status=WebPageStatus.SKIPPED,
                        error=f"the same content is in the knowledge base already, as {twin.original_name}",
                    )
                    return
                self._record(
                    url,
                    status=WebPageStatus.OK,
                    fetched=fetched,
                    content_sha256=body_sha256,
                    document=result.created[0],
                )
        except (KnowledgeBaseError, StorageQuotaExceeded) as exc:
            self._record(url, status=WebPageStatus.FAILED, error=str(exc))

    def _record(
        self,
        url: str,
        *,
        status: str,
        error: str = "",
        fetched: Fetched | None = None,
        content_sha256: str = "",
        keep_hash: bool = False,
        document: Document | None = None,
    ) -> None:
        values: dict[str, object] = {"status": status, "error": error[:4000]}
        if fetched is not None:
            values.update(etag=fetched.etag, last_modified=fetched.last_modified, fetched_at=timezone.now())
            if not keep_hash:
                values["content_sha256"] = content_sha256
        if document is not None:
            values["document"] = document
        with transaction.atomic():
            if not WebSource.objects.select_for_update().filter(pk=self.source.pk).exists():
                raise _SourceGone()
            WebPage.objects.update_or_create(source=self.source, url=url, defaults=values)

    def _skip(self, url: str, reason: str) -> None:
        """Listed but not fetched (robots.txt, a URL too long): a document it had goes."""
        page = WebPage.objects.filter(source=self.source, url=url).select_related("document").first()
        if page is not None and page.document is not None:
            self._remove(page)
        self._record(url, status=WebPageStatus.SKIPPED, error=reason)

    def _remove(self, page: WebPage) -> None:
        with transaction.atomic():
            if page.document is not None:
                document_delete(document=page.document)  # the page's row goes with it
            else:
                page.delete()

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._beat >= HEARTBEAT_S:
            self._beat = now
            if not WebSource.objects.filter(pk=self.source.pk).update(updated_at=timezone.now()):
                raise _SourceGone()

    def _finish(self, listing: _Listing) -> None:
        if self.gone:
            listing.notices.append(f"{_pages(self.gone)} answered 404 or 410: removed with their documents")
        pages = WebPage.objects.filter(source=self.source, url__in=listing.pages)
        failed = list(pages.filter(status=WebPageStatus.FAILED).order_by("pk")[:1])
        failed_count = pages.filter(status=WebPageStatus.FAILED).count()
        error = ""
        if failed:
            first = failed[0]
            error = f"{failed_count} of {_pages(len(listing.pages))} could not be fetched; {first.url}: {first.error}"
        all_failed = bool(listing.pages) and failed_count == len(listing.pages)
        if not listing.pages:
            all_failed = True
            error = next(iter(listing.skipped.values()), "the sitemap lists no page on its own host: check its URL")
        _finish(
            self.source,
            status=WebSourceStatus.FAILED if all_failed else WebSourceStatus.SYNCED,
            error=error,
            notice="; ".join(listing.notices),
        )


def _pages(count: int) -> str:
    return f"{count} page" if count == 1 else f"{count} pages"


def _finish(source: WebSource, *, status: str, error: str, notice: str) -> None:
    now = timezone.now()
    interval = source.sync_interval_hours
    WebSource.objects.filter(pk=source.pk).update(
        status=status,
        last_error=error[:4000],
        notice=notice[:4000],
        last_synced_at=now,
        next_sync_at=now + timedelta(hours=interval) if interval else None,
        updated_at=now,
    )


def _stored_page(url: str, text: str, kind: str, media_type: str, scratch: Path) -> IncomingFile:
    """The page as the file its document stores: UTF-8 (whatever the site's charset); one that
    reads as HTML ends in a comment naming its URL (dropped by the parser; it keeps two URLs that
    serve the same markup from counting as one file)."""
    suffix = ".html" if kind == "html" else ".md" if media_type == "text/markdown" else ".txt"
    parts = urlsplit(url)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{parts.hostname}{parts.path}").strip("-.")[:80] or "page"
    path = scratch / f"page{suffix}"
    data = text.encode()
    path.write_bytes(data)
    detected = detect_type(path, f"{stem}{suffix}")
    if detected not in PAGE_KINDS:
        raise UnsupportedFile(f"the page reads as {detected}, not as a web page: a web source reads HTML and text")
    if detected == "html":
        data += f"\n<!-- web source page: {url.replace('-', '%2D')} -->\n".encode()
        path.write_bytes(data)
    return IncomingFile(
        name=url,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        kind=detected,
        stored_as=f"{stem}{suffix}",
    )
