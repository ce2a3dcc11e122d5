"""GET /healthz against the real database, broker and worker."""

from __future__ import annotations

import socket

import pytest
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_healthy_when_every_component_is(celery_worker_process: str) -> None:
    response = Client().get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["components"]) == {"database", "pgvector", "broker", "workers", "xinference"}
    assert body["components"]["database"]["version"].startswith("18")
    assert body["components"]["pgvector"]["version"].startswith("0.8")
    assert celery_worker_process in body["components"]["workers"]["workers"]


def test_degraded_with_503_when_xinference_is_unreachable(celery_worker_process: str) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with override_settings(XINFERENCE_ENDPOINT=endpoint):
        response = Client().get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "degraded"
    assert body["components"]["xinference"]["status"] == "error"
    assert body["components"]["database"]["status"] == "ok"


def test_only_get_is_allowed() -> None:
    assert Client().post("/healthz").status_code == 405
