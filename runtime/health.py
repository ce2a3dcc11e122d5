"""GET /healthz: every component checked for real, 200 when all are ok, else 503.

Anyone may ask (load balancers, Docker, the supervisor), so anonymous callers get each
component's status only; versions, worker host names, model uids and errors go to staff sessions
and to `Authorization: Bearer <HEALTHZ_TOKEN>`."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis
from django.conf import settings
from django.core.cache import cache
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


WORKER_PING_CACHE_KEY = "chatplatform:healthz:workers"
WORKER_PING_LOCK_KEY = "chatplatform:healthz:workers-lock"
# A ping nobody answered costs the workers nothing, so a failure is kept for a second only: the
# supervisor and load balancers see workers come back without waiting out HEALTHZ_PING_CACHE_S.
FAILED_PING_CACHE_S = 1
PING_LOCK_S = 3  # longer than one ping takes; a web process that dies mid-ping frees it by expiring


def ping_workers() -> Component:
    # limit=1 returns as soon as one worker answers; the timeout bounds the wait when none does.
    replies = celery_app.control.ping(timeout=CHECK_TIMEOUT_S / 2, limit=1)
    if not replies:
        return {"status": "error", "error": "no Celery worker answered a ping: start one with `make run`"}
    return {"status": "ok", "workers": sorted(name for reply in replies for name in reply)}


def check_workers() -> Component:
    """The last ping's answer while it is fresh, else one new ping for every web process together.

    A ping is a broadcast that every worker answers, and /healthz is open to anyone: a flood of
    requests must not turn into a flood of broadcasts. The cache is Redis, shared by all web
    processes; the lock lets one request ping while the others wait for its answer."""
    cached: Component | None = cache.get(WORKER_PING_CACHE_KEY)
    if cached is not None:
        return cached
    if not cache.add(WORKER_PING_LOCK_KEY, 1, timeout=PING_LOCK_S):
        deadline = time.monotonic() + CHECK_TIMEOUT_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
            cached = cache.get(WORKER_PING_CACHE_KEY)
            if cached is not None:
                return cached
        return {"status": "error", "error": "the worker ping another request started did not finish: try again"}
    try:
        result = ping_workers()
        fresh_for = settings.HEALTHZ_PING_CACHE_S if result["status"] == "ok" else FAILED_PING_CACHE_S
        cache.set(WORKER_PING_CACHE_KEY, result, timeout=fresh_for)
    finally:
        cache.delete(WORKER_PING_LOCK_KEY)
    return result


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


def bearer_token(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    token = bearer_token(request)
    configured = settings.HEALTHZ_TOKEN
    if token is not None and not (configured and hmac.compare_digest(token.encode(), configured.encode())):
        # A caller that sends a token wants the details: say why it gets none rather than
        # quietly answering the short form.
        why = "is not the server's HEALTHZ_TOKEN" if configured else "was sent, but the server sets no HEALTHZ_TOKEN"
        message = (
            f"the bearer token {why}: send HEALTHZ_TOKEN, sign in as staff, "
            "or send no Authorization header to get the status alone"
        )
        refused = JsonResponse({"error": {"code": "invalid_token", "message": message, "details": {}}}, status=401)
        refused["WWW-Authenticate"] = 'Bearer realm="healthz"'
        return refused
    detailed = token is not None or bool(getattr(request.user, "is_staff", False))
    components = {name: run_check(check) for name, check in CHECKS.items()}
    healthy = all(component["status"] == "ok" for component in components.values())
    if not detailed:
        components = {name: {"status": component["status"]} for name, component in components.items()}
    return JsonResponse(
        {"status": "ok" if healthy else "degraded", "components": components}, status=200 if healthy else 503
    )
