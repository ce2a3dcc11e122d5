"""Fetching web pages and sitemaps for web sources (kb.web_sources), strictly through the SSRF guard.

Every request, robots.txt and each redirect hop included, goes to a URL `outbound_url_check`
approved and connects to an address it approved (pinned, with `Host` and TLS SNI kept: no second
DNS answer to rebind), without proxies from the environment. Redirects are followed by hand, at
most MAX_REDIRECTS, each Location checked like the first URL (and against its host's robots.txt).
Every request carries KB_WEB_USER_AGENT, has KB_WEB_TIMEOUT_S, reads at most KB_WEB_MAX_PAGE_BYTES
(a larger body fails), and waits until KB_WEB_HOST_DELAY_S (or the host's robots.txt Crawl-delay,
up to MAX_CRAWL_DELAY_S) has passed since the last request to the same host.

robots.txt (RFC 9309, read with urllib.robotparser) is fetched once per host and fetcher: a 4xx
answer means no rules; a 5xx, a refused or unreachable one means nothing on that host is fetched.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import httpx
from django.conf import settings

from core.outbound import OutboundTarget, UnsafeUrl, outbound_client, outbound_url_check
from core.sizes import format_bytes

MAX_REDIRECTS = 5
MAX_CRAWL_DELAY_S = 10.0
ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,application/xml;q=0.8,text/xml;q=0.8,*/*;q=0.1"
HTML_TYPES = frozenset(("text/html", "application/xhtml+xml"))
TEXT_TYPES = frozenset(("text/plain", "text/markdown"))
SITEMAP_TYPES = frozenset(("application/xml", "text/xml", "application/gzip", "application/x-gzip"))
REDIRECTS = frozenset((301, 302, 303, 307, 308))
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)


class FetchError(Exception):
    """The page could not be fetched; the message says why, in words for the person who added the
    source. `status_code` is the HTTP status when the server answered one."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def gone(self) -> bool:
        """The server says the page does not exist (any more)."""
        return self.status_code in (404, 410)


@dataclass(frozen=True)
class Fetched:
    url: str  # as asked for
    final_url: str  # after redirects
    status_code: int  # 200-299, or 304 for a conditional request whose page has not changed
    media_type: str  # lower case, without parameters ("" when the server named none)
    charset: str | None
    body: bytes
    etag: str
    last_modified: str

    @property
    def not_modified(self) -> bool:
        return self.status_code == 304


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), (parts.netloc or "").lower(), "", "", ""))


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower().rstrip(".")


def without_fragment(url: str) -> str:
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


class WebFetcher:
    """One sync's fetcher: its own connection pool, robots.txt per host, the pause per host.
    `heartbeat` is called after every request (the sync's sign of life)."""

    def __init__(self, *, heartbeat: Callable[[], None] | None = None) -> None:
        self.user_agent: str = settings.KB_WEB_USER_AGENT
        self.max_bytes: int = settings.KB_WEB_MAX_PAGE_BYTES
        self.host_delay: float = settings.KB_WEB_HOST_DELAY_S
        self.heartbeat = heartbeat
        # Each request is checked and pinned by the outbound transport, redirects included (get()
        # follows them by hand, each hop a request of its own).
        self.client = outbound_client(
            timeout=settings.KB_WEB_TIMEOUT_S, shorten_answers=False, on_refused=lambda exc: FetchError(str(exc))
        )
        self._last_request: dict[str, float] = {}
        self._robots: dict[str, tuple[RobotFileParser, str]] = {}

    def __enter__(self) -> WebFetcher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.client.close()

    # --- robots.txt -----------------------------------------------------------------------------

    def robots_refusal(self, url: str) -> str | None:
        """Why robots.txt keeps this URL from being fetched, or None when it may be."""
        rules, unreadable = self._robots_for(url)
        if unreadable:
            return unreadable
        if not rules.can_fetch(self.user_agent, url):
            return f"{origin_of(url)}/robots.txt disallows this page for the platform's crawler ({self.user_agent})"
        return None

    def _robots_for(self, url: str) -> tuple[RobotFileParser, str]:
        origin = origin_of(url)
        if origin not in self._robots:
            self._robots[origin] = self._read_robots(origin)
        return self._robots[origin]

    def _read_robots(self, origin: str) -> tuple[RobotFileParser, str]:
        rules = RobotFileParser(f"{origin}/robots.txt")
        try:
            fetched = self.get(f"{origin}/robots.txt", obey_robots=False)
        except FetchError as exc:
            if exc.status_code is not None and 400 <= exc.status_code < 500:
                rules.parse([])  # no robots.txt: no rules
                return rules, ""
            rules.parse(["User-agent: *", "Disallow: /"])
            return rules, (
                f"{origin}/robots.txt could not be read ({exc}), so nothing on that host is fetched: "
                "try again when the site answers"
            )
        rules.parse(fetched.body.decode(fetched.charset or "utf-8", errors="replace").splitlines())
        return rules, ""

    def _delay_for(self, url: str) -> float:
        rules = self._robots.get(origin_of(url))
        crawl_delay = rules[0].crawl_delay(self.user_agent) if rules is not None else None
        return max(self.host_delay, min(float(crawl_delay or 0), MAX_CRAWL_DELAY_S))

    # --- requests -------------------------------------------------------------------------------

    def get(self, url: str, *, headers: dict[str, str] | None = None, obey_robots: bool = True) -> Fetched:
        """GET `url`, following redirects through the guard; FetchError with the reason when the
        page cannot be had (refused address, robots.txt, 4xx/5xx, timeout, too large)."""
        current = url
        for hop in range(MAX_REDIRECTS + 1):
            target = self._checked(current, redirected=hop > 0)
            if obey_robots:
                refusal = self.robots_refusal(current)
                if refusal is not None:
                    raise FetchError(refusal if hop == 0 else f"redirected to {current}, but {refusal}")
            response = self._send(target, headers or {})
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECTS and location:
                    current = urljoin(current, location.strip())
                    continue
                return self._read(url, current, response)
            finally:
                response.close()
        raise FetchError(f"more than {MAX_REDIRECTS} redirects: add the page's final address instead")

    @staticmethod
    def _checked(url: str, *, redirected: bool) -> OutboundTarget:
        """The guard's approval of `url` (every hop's), or FetchError saying why not."""
        try:
            return outbound_url_check(url)
        except UnsafeUrl as exc:
            reason = f"redirected to {url}, which the server does not fetch: {exc}" if redirected else str(exc)
            raise FetchError(reason) from exc

    def _send(self, target: OutboundTarget, headers: dict[str, str]) -> httpx.Response:
        url = target.url
        self._wait_for_host(url)
        request_headers = {
            "User-Agent": self.user_agent,
            "Accept": ACCEPT,
            "Accept-Encoding": "gzip, deflate",
            **headers,
        }
        try:
            return self.client.send(self.client.build_request("GET", url, headers=request_headers), stream=True)
        except httpx.ConnectError as exc:
            raise FetchError(f"could not connect to {target.host} ({exc})") from exc
        except httpx.TimeoutException as exc:
            raise FetchError(f"no answer within {settings.KB_WEB_TIMEOUT_S:g} s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"the request failed ({type(exc).__name__}: {exc})") from exc
        finally:
            self._last_request[host_of(url)] = time.monotonic()
            if self.heartbeat is not None:
                self.heartbeat()

    def _wait_for_host(self, url: str) -> None:
        last = self._last_request.get(host_of(url))
        if last is None:
            return
        wait = last + self._delay_for(url) - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _read(self, url: str, final_url: str, response: httpx.Response) -> Fetched:
        status = response.status_code
        if status == 304:
            return self._fetched(url, final_url, response, b"")
        if status >= 300:
            reason = response.reason_phrase or httpx.codes.get_reason_phrase(status)
            hint = "remove it from the source, or fix the site" if status in (404, 410) else "try again later"
            if 300 <= status < 400:
                hint = "a redirect without a Location"
            raise FetchError(f"the server answered {status} {reason}: {hint}", status_code=status)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(self._too_large())
        body = bytearray()
        try:
            for block in response.iter_bytes():
                body.extend(block)
                if len(body) > self.max_bytes:
                    raise FetchError(self._too_large())
        except httpx.TimeoutException as exc:
            raise FetchError(f"the page did not arrive within {settings.KB_WEB_TIMEOUT_S:g} s") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"reading the page failed ({type(exc).__name__}: {exc})") from exc
        return self._fetched(url, final_url, response, bytes(body))

    def _too_large(self) -> str:
        return f"larger than KB_WEB_MAX_PAGE_BYTES ({format_bytes(self.max_bytes)}): the platform does not read it"

    @staticmethod
    def _fetched(url: str, final_url: str, response: httpx.Response, body: bytes) -> Fetched:
        content_type = response.headers.get("content-type", "")
        media_type, _, parameters = content_type.partition(";")
        charset_match = re.search(r"charset\s*=\s*\"?([^\";\s]+)", parameters, re.IGNORECASE)
        return Fetched(
            url=url,
            final_url=final_url,
            status_code=response.status_code,
            media_type=media_type.strip().lower(),
            charset=charset_match.group(1) if charset_match else None,
            body=body,
            etag=response.headers.get("etag", "")[:500],
            last_modified=response.headers.get("last-modified", "")[:100],
        )


# --- what came back -----------------------------------------------------------------------------


def page_text(fetched: Fetched) -> tuple[str, str]:
    """(text, kind) of a fetched page: its markup (or text) decoded by the charset the server or the
    page names (UTF-8, else Windows-1252, when neither does), and "html" or "text". FetchError
    when it is not a web page: images, PDFs and the like are uploaded as documents instead."""
    media_type = fetched.media_type
    if media_type and media_type not in HTML_TYPES | TEXT_TYPES:
        raise FetchError(
            f"not a web page but {media_type}: a web source reads HTML and text pages only "
            "(download the file and upload it as a document instead)"
        )
    charset = fetched.charset
    if charset is None:
        found = _META_CHARSET.search(fetched.body[:4096])
        charset = found.group(1).decode("ascii") if found else None
    for encoding in (charset, "utf-8", "cp1252"):
        if not encoding:
            continue
        try:
            text = fetched.body.decode(encoding)
            break
        except (LookupError, UnicodeDecodeError):
            continue
    else:  # cp1252 leaves five bytes undefined
        text = fetched.body.decode("utf-8", errors="replace")
    if "\x00" in text:
        raise FetchError("binary data, not a web page: a web source reads HTML and text pages only")
    kind = "html" if media_type in HTML_TYPES or (not media_type and _looks_like_html(text)) else "text"
    return text.lstrip("\ufeff"), kind


def _looks_like_html(text: str) -> bool:
    head = text[:2000].lstrip().lower()
    return head.startswith(("<!doctype html", "<html")) or bool(re.search(r"<(body|div|p|h[1-6])[\s>]", head))


@dataclass(frozen=True)
class Sitemap:
    kind: str  # "urlset" (pages) or "sitemapindex" (more sitemaps)
    locations: list[str]


def sitemap_of(fetched: Fetched) -> Sitemap | None:
    """The sitemap this body is (gzipped or not), or None when it is not one. Parsed without DTDs,
    entities or network access."""
    body = fetched.body
    if body[:2] == b"\x1f\x8b":
        body = gunzip_bounded(body, settings.KB_WEB_MAX_PAGE_BYTES)
    head = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head.startswith(b"<") or (b"<urlset" not in body[:4096] and b"<sitemapindex" not in body[:4096]):
        return None
    from lxml import etree

    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
    )
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise FetchError(f"a sitemap that is not well-formed XML ({exc}): fix the sitemap") from exc
    kind = etree.QName(root).localname
    if kind not in ("urlset", "sitemapindex"):
        return None
    entry = "url" if kind == "urlset" else "sitemap"
    return Sitemap(kind=kind, locations=list(_locations(root, entry)))


def _locations(root: object, entry: str) -> Iterator[str]:
    from lxml import etree

    for element in root.iter():  # type: ignore[attr-defined]
        if not isinstance(element.tag, str) or etree.QName(element).localname != entry:
            continue
        for child in element:
            if isinstance(child.tag, str) and etree.QName(child).localname == "loc" and (child.text or "").strip():
                yield child.text.strip()
                break


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """A gzipped sitemap, expanded to at most `limit` bytes (a bomb fails, it is not expanded)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise FetchError(f"a gzipped sitemap that does not expand ({exc})") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise FetchError(f"a gzipped sitemap larger than {format_bytes(limit)} expanded: split it")
    return out
