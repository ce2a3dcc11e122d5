"""The SSRF guard: every URL a user gives us and the server then fetches (model provider endpoints,
webhook targets) goes through `outbound_url_check` before anything connects to it.

Refused: schemes other than http/https, credentials in the URL, and a host of which ANY resolved
address is loopback, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16 with the cloud
metadata service, fe80::/10), multicast, reserved, unspecified, shared CGNAT space
(100.64.0.0/10), or one of those wrapped in IPv6 (IPv4-mapped ::ffff:a.b.c.d, 6to4, NAT64).
Operators open networks they trust with OUTBOUND_ALLOWED_NETWORKS (comma-separated CIDRs), for
example a model server on the LAN.

A check and a later connection resolve the name twice, and DNS may answer differently the second
time (DNS rebinding). So every request to such a URL goes through `outbound_client` /
`outbound_async_client`, whose transport checks the host at the moment of the request (a URL
approved when it was saved may resolve elsewhere by the time it is called) and connects to the
address it approved, with Host and TLS SNI kept as the original name. It never follows a redirect.
By default (model providers) it also replaces every error answer's body with a short, sanitised
reason, so that no upstream body travels on to users, and a 3xx loses its Location;
`shorten_answers=False` (webhooks, web sources) hands answers on as they are, for callers that
follow redirects themselves, each hop through the same transport and so checked again.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core.domain_errors import DomainError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeUrl(DomainError):
    """The server will not connect to this URL."""

    status_code = 400
    code = "unsafe_url"


class UnresolvableUrl(UnsafeUrl):
    """The host name does not resolve (now): nothing to check, nothing to connect to. Worth retrying
    later for a delivery; refused at once for user input."""

    code = "unresolvable_url"


@dataclass(frozen=True)
class OutboundTarget:
    url: str
    scheme: str
    host: str  # as written in the URL, lower case, without brackets
    port: int
    addresses: tuple[IPAddress, ...]  # every address the host resolved to, all of them approved


def _allowed_networks() -> list[IPNetwork]:
    networks = []
    for cidr in getattr(settings, "OUTBOUND_ALLOWED_NETWORKS", []):
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(f"OUTBOUND_ALLOWED_NETWORKS: {cidr!r} is not a network in CIDR form") from exc
    return networks


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _forbidden_reason(address: IPAddress) -> str | None:
    """Why the server must not connect to this address, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            # Judge the IPv4 address it carries (Python calls all of ::ffff:0:0/96 reserved).
            reason = _forbidden_reason(inner)
            return f"{reason}, inside IPv6" if reason else None
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "shared (CGNAT)"
    return None


def _is_allowed(address: IPAddress, networks: list[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks)


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableUrl(f"the host {host!r} does not resolve ({exc}): check the URL") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # IPv6 link-local answers carry a zone ("fe80::1%eth0"); the address is what we judge.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableUrl(f"the host {host!r} resolves to no address: check the URL")
    return tuple(addresses)


def outbound_url_check(url: str) -> OutboundTarget:
    """Check a user-supplied URL before the server connects to it; raise UnsafeUrl when it may not.

    Every address the host resolves to must be acceptable, not just the first: a name with one
    public and one private address would otherwise reach the private one on some connections.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"{url!r} is not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeUrl(f"only http and https URLs are allowed, not {scheme or 'no scheme'!r}")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL must not carry credentials (user:password@): use an API key or a secret instead")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl(f"{url!r} names no host")
    port = port if port is not None else DEFAULT_PORTS[scheme]
    addresses = outbound_host_check(host, port)
    return OutboundTarget(url=url.strip(), scheme=scheme, host=host, port=port, addresses=addresses)


def outbound_host_check(host: str, port: int) -> tuple[IPAddress, ...]:
    """The addresses of `host` the server may connect to (all of them, or UnsafeUrl): the same rule
    for a URL's host and for a database server's (datasources)."""
    addresses = _resolve(host, port)
    allowed = _allowed_networks()
    for address in addresses:
        reason = _forbidden_reason(address)
        if reason is not None and not _is_allowed(address, allowed):
            raise UnsafeUrl(
                f"{host} resolves to {address}, a {reason} address, which the server does not connect to. "
                "If this server is meant to reach it (a model server on your network, say), ask the operator "
                "to add the network to OUTBOUND_ALLOWED_NETWORKS."
            )
    return addresses


# --- the transport every call to a model provider goes through ----------------------------------

MAX_REASON_CHARS = 100
# What an error answer keeps besides its status: the headers clients base retries on.
KEPT_ERROR_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "x-request-id")
_BRACKETED_PREFIX = re.compile(r"^(\s*\[[^\]]*\])+")  # Xinference's "[address=..., pid=...]"
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_IPV4 = re.compile(r"\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b")


def _message_in(body: Any) -> str:
    """The message field of the usual error shapes: FastAPI's {"detail"}, OpenAI's {"error":
    {"message"}}, {"error": "..."} or {"message"}; nothing else of the body."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    nested = error.get("message") if isinstance(error, dict) else error
    for candidate in (body.get("detail"), nested, body.get("message")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return ""


def upstream_reason(status_code: int, content: bytes, content_type: str) -> str:
    """A short reason for an error answer, safe to show a user: the server's own message when it
    sends one in a known shape (JSON) or as plain text, without addresses or URLs, cut to a few
    words; else the status's reason phrase. Never the body itself: an error page of some internal
    service must not travel to whoever typed its address."""
    if 300 <= status_code < 400:
        return (
            f"the server redirected elsewhere ({status_code}), which is not followed: "
            "set the endpoint to the address it redirects to"
        )
    text = ""
    stripped = content.strip()
    parsed = False
    if "json" in content_type or stripped.startswith((b"{", b"[")):
        try:
            text = _message_in(json.loads(stripped))
            parsed = True
        except ValueError:
            pass  # not JSON after all ("[address=...] ..." is Xinference's plain text)
    if not parsed and "html" not in content_type and not stripped.startswith(b"<"):
        text = stripped.decode("utf-8", "replace").split("\n", 1)[0]
    text = _BRACKETED_PREFIX.sub("", text)
    text = _IPV4.sub("<address>", _URL.sub("<url>", text))
    # Control and format characters (bidi overrides, zero-width) go; whitespace runs become one space.
    text = " ".join("".join(" " if unicodedata.category(char)[0] in "CZ" else char for char in text).split())
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text or httpx.codes.get_reason_phrase(status_code) or f"HTTP {status_code}"


def _short_error(response: httpx.Response, content: bytes) -> httpx.Response:
    """The error answer as clients get it: the status, the retry headers and {"error": {"message":
    short reason}} (the shape OpenAI clients read). A redirect loses its Location, so no client
    can follow it."""
    headers = {name: response.headers[name] for name in KEPT_ERROR_HEADERS if name in response.headers}
    reason = upstream_reason(response.status_code, content, response.headers.get("content-type", ""))
    return httpx.Response(response.status_code, headers=headers, json={"error": {"message": reason}})


Refusal = Callable[[UnsafeUrl], Exception]


def _check_request(request: httpx.Request, on_refused: Refusal | None) -> tuple[IPAddress, ...]:
    """The approved addresses of the request's host, checked now (not when the URL was saved)."""
    try:
        return outbound_url_check(str(request.url)).addresses
    except UnresolvableUrl as exc:
        # A name that does not resolve is an unreachable server, like any failed connection.
        raise httpx.ConnectError(str(exc), request=request) from exc
    except UnsafeUrl as exc:
        raise (on_refused(exc) if on_refused is not None else exc) from exc


def _pinned(request: httpx.Request, address: IPAddress) -> httpx.Request:
    """The same request sent to the approved address; the Host header (set from the URL when the
    request was built) stays, and TLS verifies the original name (SNI)."""
    extensions = dict(request.extensions)
    if request.url.scheme == "https":
        extensions["sni_hostname"] = request.url.host
    return httpx.Request(
        request.method,
        request.url.copy_with(host=str(address)),
        headers=request.headers,
        stream=request.stream,
        extensions=extensions,
    )


class OutboundTransport(httpx.HTTPTransport):
    """Checks, pins and (unless `shorten_answers=False`) shortens error answers on every request
    (see the module docstring). `check=False` for servers the operator configured (the embedded
    Xinference): no address check, the rest still applies. `on_refused` turns a refused address
    into the caller's own error (raised through the HTTP client untouched: the openai package wraps
    only httpx's errors). One client per endpoint: connections are pooled by address, and a pooled
    TLS connection carries the SNI of the name it was opened for."""

    def __init__(
        self, *, check: bool = True, on_refused: Refusal | None = None, shorten_answers: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.on_refused = on_refused
        self.shorten_answers = shorten_answers

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.check:
            return self._shortened(super().handle_request(request))
        addresses = _check_request(request, self.on_refused)
        for address in addresses[:-1]:
            # Every address was approved; the next is tried when one does not take connections
            # (localhost: ::1 first, the server on 127.0.0.1 only).
            try:
                return self._shortened(super().handle_request(_pinned(request, address)))
            except httpx.ConnectError:
                continue
        return self._shortened(super().handle_request(_pinned(request, addresses[-1])))

    def _shortened(self, response: httpx.Response) -> httpx.Response:
        if response.status_code < 300 or not self.shorten_answers:
            return response
        try:
            content = response.read()
        finally:
            response.close()
        return _short_error(response, content)


class AsyncOutboundTransport(httpx.AsyncHTTPTransport):
    """OutboundTransport for async clients (streamed answers); the check's DNS lookup runs in a
    thread so the event loop is not blocked."""

    def __init__(
        self, *, check: bool = True, on_refused: Refusal | None = None, shorten_answers: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.on_refused = on_refused
        self.shorten_answers = shorten_answers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.check:
            return await self._shortened(await super().handle_async_request(request))
        addresses = await anyio.to_thread.run_sync(_check_request, request, self.on_refused)
        for address in addresses[:-1]:
            try:
                return await self._shortened(await super().handle_async_request(_pinned(request, address)))
            except httpx.ConnectError:
                continue
        return await self._shortened(await super().handle_async_request(_pinned(request, addresses[-1])))

    async def _shortened(self, response: httpx.Response) -> httpx.Response:
        if response.status_code < 300 or not self.shorten_answers:
            return response
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return _short_error(response, content)


def outbound_client(
    *, timeout: float, check: bool = True, on_refused: Refusal | None = None, shorten_answers: bool = True
) -> httpx.Client:
    """An httpx client for a user-configured server. trust_env=False: a proxy from the environment
    would take requests past the transport (and resolve names itself)."""
    transport = OutboundTransport(check=check, on_refused=on_refused, shorten_answers=shorten_answers)
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)


def outbound_async_client(
    *, timeout: float, check: bool = True, on_refused: Refusal | None = None
) -> httpx.AsyncClient:
    transport = AsyncOutboundTransport(check=check, on_refused=on_refused)
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)
