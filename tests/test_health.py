"""GET /healthz against the real database, broker and worker."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test import Client, override_settings

from runtime.health import WORKER_PING_CACHE_KEY, WORKER_PING_LOCK_KEY
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

COMPONENTS = {"database", "pgvector", "broker", "workers", "xinference"}
TOKEN = "healthz-token-for-the-tests-0123456789"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def staff_client() -> Client:
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    return client


def test_healthy_when_every_component_is(celery_worker_process: str) -> None:
    response = staff_client().get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["components"]) == COMPONENTS
    assert body["components"]["database"]["version"].startswith("18")
    assert body["components"]["pgvector"]["version"].startswith("0.8")
    assert celery_worker_process in body["components"]["workers"]["workers"]


def test_anonymous_callers_get_each_components_status_only(celery_worker_process: str) -> None:
    """Versions, worker host names and model uids help an attacker, not a load balancer."""
    signed_in_member = Client()
    signed_in_member.force_login(UserFactory.create())
    for client in (Client(), signed_in_member):
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "components": {name: {"status": "ok"} for name in COMPONENTS}}
        text = response.content.decode()
        assert celery_worker_process not in text
        assert "version" not in text


def test_staff_and_the_healthz_token_get_the_details(celery_worker_process: str) -> None:
    with override_settings(HEALTHZ_TOKEN=TOKEN):
        by_token = Client(headers={"Authorization": f"Bearer {TOKEN}"}).get("/healthz")
        by_staff = staff_client().get("/healthz")
    for response in (by_token, by_staff):
        assert response.status_code == 200
        components = response.json()["components"]
        assert components["broker"]["version"]
        assert celery_worker_process in components["workers"]["workers"]


def test_a_wrong_or_unconfigured_token_is_refused_with_what_to_do() -> None:
    with override_settings(HEALTHZ_TOKEN=TOKEN):
        wrong = Client(headers={"Authorization": "Bearer not-the-token"}).get("/healthz")
    assert wrong.status_code == 401
    assert "is not the server's HEALTHZ_TOKEN" in wrong.json()["error"]["message"]
    assert "send no Authorization header" in wrong.json()["error"]["message"]
    # With no token configured, no token opens the details (an empty one included).
    for header in (f"Bearer {TOKEN}", "Bearer "):
        unset = Client(headers={"Authorization": header}).get("/healthz")
        assert unset.status_code == 401
        assert "sets no HEALTHZ_TOKEN" in unset.json()["error"]["message"]


def broadcast_pings(during: Callable[[], None]) -> int:
    """How many Celery pings went out on the real broker while `during` ran: a ping is a
    broadcast published on the pidbox fanout channel, which this subscriber sees like a worker."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    subscriber = client.pubsub()
    try:
        subscriber.psubscribe("*celery.pidbox*")
        assert subscriber.get_message(timeout=2)["type"] == "psubscribe"
        during()
        tickets = set()
        while (message := subscriber.get_message(timeout=0.5)) is not None:
            if message["type"] != "pmessage":
                continue
            body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            if body["method"] == "ping":
                tickets.add(body["ticket"])  # kombu may publish one broadcast on two channel names
        return len(tickets)
    finally:
        subscriber.close()
        client.close()


def test_a_flood_of_healthz_makes_one_worker_ping(celery_worker_process: str, settings) -> None:
    settings.HEALTHZ_PING_CACHE_S = 2
    cache.delete_many([WORKER_PING_CACHE_KEY, WORKER_PING_LOCK_KEY])
    statuses: list[int] = []

    def get() -> None:
        statuses.append(Client().get("/healthz").status_code)

    def get_in_thread() -> None:
        get()
        connection.close()  # the thread's own connection, so that none holds the test database

    def flood() -> None:
        # Concurrent requests on a cold cache: one pings, the others wait for its answer.
        threads = [threading.Thread(target=get_in_thread) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for _ in range(4):  # and in a row, from the cache
            get()

    assert broadcast_pings(flood) == 1
    assert statuses == [200] * 10
    time.sleep(settings.HEALTHZ_PING_CACHE_S + 0.5)
    assert broadcast_pings(get) == 1  # the cached answer expired: one new ping


def test_degraded_with_503_when_xinference_is_unreachable(celery_worker_process: str) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with override_settings(XINFERENCE_ENDPOINT=endpoint):
        response = Client().get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "degraded"
    assert body["components"]["xinference"] == {"status": "error"}
    assert body["components"]["database"] == {"status": "ok"}


def test_only_get_is_allowed() -> None:
    assert Client().post("/healthz").status_code == 405
