"""The SSRF guard: what it refuses (loopback, private, link-local and metadata, CGNAT, their IPv6
wrappings, names that resolve there, credentials, other schemes), what the operator may open with
OUTBOUND_ALLOWED_NETWORKS, and that provider endpoints typed into the API go through it while the
embedded Xinference registered by bootstrap does not. Redirects are covered with webhook
delivery in test_webhooks.py; the check at every provider call, pinning, redirects and error
bodies of provider calls in test_provider_outbound.py."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from accounts.models import Role
from core.outbound import (
    UnresolvableUrl,
    UnsafeUrl,
    _pinned,
    outbound_url_check,
    upstream_reason,
)
from models_registry.models import Provider
from models_registry.services import embedded_models_bootstrap, provider_create
from tests.conftest import bearer_client, member_of


@pytest.fixture
def nothing_allowed(settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = []


REFUSED = [
    "http://127.0.0.1/",
    "http://127.8.9.10:8000/v1",
    "http://localhost:9997",
    "http://LocalHost./",  # case and a trailing dot change nothing
    "http://2130706433/",  # 127.0.0.1 written as one number
    "http://0x7f.1/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "https://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/",  # CGNAT
    "http://0.0.0.0:8000/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[::1]:9997/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:169.254.169.254]/",
    "http://[2002:a00:1::1]/",  # 6to4 around 10.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 around 169.254.169.254
]


@pytest.mark.parametrize("url", REFUSED)
@pytest.mark.usefixtures("nothing_allowed")
def test_refuses_internal_addresses(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="OUTBOUND_ALLOWED_NETWORKS") as refused:
        outbound_url_check(url)
    assert refused.value.code == "unsafe_url"
    assert refused.value.status_code == 400


@pytest.mark.usefixtures("nothing_allowed")
def test_a_host_name_is_judged_by_every_address_it_resolves_to() -> None:
    with pytest.raises(UnsafeUrl, match=r"localhost resolves to 127\.0\.0\.1, a loopback address"):
        outbound_url_check("http://localhost:8000/")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/file", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "only http and https"),
        ("example.com/path", "only http and https"),
        ("http://user:pw@8.8.8.8/", "credentials"),
        ("http://token@8.8.8.8/", "credentials"),
        ("http:///no-host", "names no host"),
        ("http://8.8.8.8:99999/", "not a valid URL"),
    ],
)
def test_refuses_other_schemes_credentials_and_malformed_urls(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl, match=reason):
        outbound_url_check(url)


def test_an_unresolvable_name_is_its_own_error() -> None:
    with pytest.raises(UnresolvableUrl, match="does not resolve"):
        outbound_url_check("http://no-such-host.invalid/")


@pytest.mark.usefixtures("nothing_allowed")
def test_public_addresses_pass_and_are_pinned() -> None:
    target = outbound_url_check("https://8.8.8.8/hook?x=1")
    assert target.addresses == (ipaddress.ip_address("8.8.8.8"),)
    assert outbound_url_check("http://[2606:4700:4700::1111]:8080").addresses == (
        ipaddress.ip_address("2606:4700:4700::1111"),
    )
    # The transport sends a request to the approved address, the name kept in Host and for TLS.
    request = httpx.Request("GET", "https://docs.example.com:8443/a?b=1")
    pinned = _pinned(request, ipaddress.ip_address("93.184.216.34"))
    assert str(pinned.url) == "https://93.184.216.34:8443/a?b=1"
    assert pinned.headers["Host"] == "docs.example.com:8443"
    assert pinned.extensions["sni_hostname"] == "docs.example.com"
    assert outbound_url_check("http://[::ffff:8.8.8.8]/").addresses == (ipaddress.ip_address("::ffff:8.8.8.8"),)


def test_the_operator_opens_networks_and_only_those(settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8", "10.0.5.0/24"]
    assert outbound_url_check("http://localhost:9997").port == 9997
    assert outbound_url_check("http://[::ffff:127.0.0.1]/").host == "::ffff:127.0.0.1"
    assert outbound_url_check("http://10.0.5.7/").addresses == (ipaddress.ip_address("10.0.5.7"),)
    for url in ("http://10.0.6.7/", "http://169.254.169.254/", "http://[::1]/"):
        with pytest.raises(UnsafeUrl):
            outbound_url_check(url)
    settings.OUTBOUND_ALLOWED_NETWORKS = ["not-a-network"]
    with pytest.raises(ImproperlyConfigured, match="OUTBOUND_ALLOWED_NETWORKS"):
        outbound_url_check("http://127.0.0.1/")


# --- provider endpoints through the API -------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("nothing_allowed")
def test_provider_endpoints_from_the_api_are_checked_on_create_and_update(team) -> None:
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    for endpoint in ("http://169.254.169.254", "http://127.0.0.1:9997", "http://[::1]:9997", "http://10.0.0.8:8000"):
        refused = admin.post(
            "/api/v1/providers/", {"name": "p", "kind": "xinference", "endpoint": endpoint}, format="json"
        )
        assert refused.status_code == 400, endpoint
        assert refused.json()["error"]["code"] == "unsafe_url"
        assert "OUTBOUND_ALLOWED_NETWORKS" in refused.json()["error"]["message"]
    assert not Provider.objects.filter(team=team).exists()

    created = admin.post(
        "/api/v1/providers/",
        {"name": "p", "kind": "openai_compatible", "endpoint": "http://8.8.8.8:8000"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    path = f"/api/v1/providers/{created.json()['id']}/"
    moved = admin.patch(path, {"endpoint": "http://169.254.169.254/latest"}, format="json")
    assert moved.status_code == 400
    assert moved.json()["error"]["code"] == "unsafe_url"
    assert Provider.objects.get(pk=created.json()["id"]).endpoint == "http://8.8.8.8:8000"
    renamed = admin.patch(path, {"name": "renamed"}, format="json")
    assert renamed.status_code == 200


@pytest.mark.django_db
def test_an_allowed_network_lets_the_api_register_a_provider_there(team, settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    created = admin.post(
        "/api/v1/providers/", {"name": "lan", "kind": "xinference", "endpoint": "http://127.0.0.1:9997"}, format="json"
    )
    assert created.status_code == 201, created.json()


@pytest.mark.django_db
@pytest.mark.usefixtures("nothing_allowed")
def test_operator_configured_providers_are_not_checked(team, xinference_venv) -> None:
    embedded_models_bootstrap(team=team, endpoint="http://127.0.0.1:9997", venv_dir=xinference_venv)
    assert Provider.objects.get(team=team, is_embedded=True).endpoint == "http://127.0.0.1:9997"
    # Services are the operator's and the tests' path: saving is not judged (calls are, except
    # the embedded Xinference's; see test_provider_outbound.py).
    assert provider_create(team=team, name="svc", kind="xinference", endpoint="http://127.0.0.1:1").pk
    # Editing such a provider through the API without touching its endpoint still works.
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    embedded = Provider.objects.get(team=team, is_embedded=True)
    assert admin.patch(f"/api/v1/providers/{embedded.pk}/", {"name": "local"}, format="json").status_code == 200


# --- what of an error answer reaches users ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_type", "body", "reason"),
    [
        (
            400,
            "application/json",
            b'{"detail": "[address=0.0.0.0:4123, pid=9] Model not found, uid: m"}',
            "Model not found, uid: m",
        ),
        (
            500,
            "application/json",
            b'{"error": {"message": "see http://10.0.0.5:9997/admin or 10.0.0.5:9997"}}',
            "see <url> or <address>",
        ),
        (404, "text/html", b"<html><p>internal dashboard</p></html>", "Not Found"),
        (502, "application/json", b'{"secrets": "not a message field"}', "Bad Gateway"),
        (400, "text/plain", "tab\there\u202e\u200bzero\x00width\nsecond line".encode(), "tab here zero width"),
        (400, "text/plain", b"word " * 60, "word " * 19 + "word..."),
        (
            301,
            "text/html",
            b"<a href='http://169.254.169.254/'>moved</a>",
            "the server redirected elsewhere (301), which is not followed: "
            "set the endpoint to the address it redirects to",
        ),
    ],
)
def test_an_upstream_error_is_cut_to_a_short_sanitised_reason(
    status: int, content_type: str, body: bytes, reason: str
) -> None:
    assert upstream_reason(status, body, content_type) == reason
