"""The SSRF guard: every URL a user gives us and the server then fetches (model provider endpoints,
webhook targets) goes through `outbound_url_check` before anything connects to it.

Refused: schemes other than http/https, credentials in the URL, and a host of which ANY resolved
address is loopback, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16 with the cloud
metadata service, fe80::/10), multicast, reserved, unspecified, shared CGNAT space
(100.64.0.0/10), or one of those wrapped in IPv6 (IPv4-mapped ::ffff:a.b.c.d, 6to4, NAT64).
Operators open networks they trust with OUTBOUND_ALLOWED_NETWORKS (comma-separated CIDRs), for
example a model server on the LAN.

A check and a later connection resolve the name twice, and DNS may answer differently the second
time (DNS rebinding): callers that can, connect to `OutboundTarget.pinned_url` (an address this
check approved) with `Host` and TLS SNI set to the original host name; see `pinned_request_args`.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from chatplatform.domain_errors import DomainError

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

    @property
    def pinned_url(self) -> str:
        """The URL with its host replaced by the first approved address."""
        address = self.addresses[0]
        host = f"[{address}]" if address.version == 6 else str(address)
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, f"{host}:{self.port}", parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


def pinned_request_args(target: OutboundTarget) -> dict[str, Any]:
    """httpx request arguments that connect to the approved address, not to a fresh DNS answer,
    while the server still sees (Host) and TLS verifies (SNI) the original host name."""
    return {
        "url": target.pinned_url,
        "headers": {"Host": target.host_header},
        "extensions": {"sni_hostname": target.host} if target.scheme == "https" else {},
    }


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
    return OutboundTarget(url=url.strip(), scheme=scheme, host=host, port=port, addresses=addresses)
