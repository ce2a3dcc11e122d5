"""GET /healthz: every component checked for real, 200 when all are ok, else 503."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from workers.celery import app as celery_app

CHECK_TIMEOUT_S = 2.0
Component = dict[str, Any]


def check_database() -> Component:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version')")
        (version,) = cursor.fetchone()
    return {"status": "ok", "version": version}


def check_pgvector() -> Component:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    if row is None:
        return {"status": "error", "error": "the vector extension is not installed: run `python manage.py migrate`"}
    return {"status": "ok", "version": row[0]}


def check_broker() -> Component:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=CHECK_TIMEOUT_S)
    try:
        client.ping()
        return {"status": "ok", "version": client.info("server")["redis_version"]}
    finally:
        client.close()


def check_workers() -> Component:
    # limit=1 returns as soon as one worker answers; the timeout bounds the wait when none does.
    replies = celery_app.control.ping(timeout=CHECK_TIMEOUT_S / 2, limit=1)
    if not replies:
        return {"status": "error", "error": "no Celery worker answered a ping: start one with `make run`"}
    return {"status": "ok", "workers": sorted(name for reply in replies for name in reply)}


def check_xinference() -> Component:
    """The configured Xinference answers, and every model the platform keeps running on it runs."""
    from models_registry.selectors import kept_running_uids

    endpoint = settings.XINFERENCE_ENDPOINT
    if not endpoint:
        return {"status": "ok", "detail": "not configured (XINFERENCE_ENDPOINT is unset)"}
    headers = {"Authorization": f"Bearer {settings.XINFERENCE_API_KEY}"} if settings.XINFERENCE_API_KEY else {}
    response = httpx.get(f"{endpoint.rstrip('/')}/v1/models", headers=headers, timeout=CHECK_TIMEOUT_S)
    response.raise_for_status()
    running = {model["id"] for model in response.json().get("data", [])}
    expected = kept_running_uids(endpoint=endpoint)
    models = {uid: "running" if uid in running else "not running" for uid in sorted(running | expected)}
    missing = sorted(expected - running)
    result: Component = {"status": "error" if missing else "ok", "endpoint": endpoint, "models": models}
    if missing:
        result["error"] = f"not running yet: {', '.join(missing)} (relaunched automatically; see the admin console)"
    return result


CHECKS: dict[str, Callable[[], Component]] = {
    "database": check_database,
    "pgvector": check_pgvector,
    "broker": check_broker,
    "workers": check_workers,
    "xinference": check_xinference,
}


def run_check(check: Callable[[], Component]) -> Component:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as exc:  # a health check reports every failure rather than raising it
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    components = {name: run_check(check) for name, check in CHECKS.items()}
    healthy = all(component["status"] == "ok" for component in components.values())
    return JsonResponse(
        {"status": "ok" if healthy else "degraded", "components": components}, status=200 if healthy else 503
    )
