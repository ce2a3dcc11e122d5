"""Fixtures: real PostgreSQL and Redis (the embedded ones under this process's var/ unless
DATABASE_URL and REDIS_URL are set; tests/session_services.py), a real Celery worker process
against the test database, a real Xinference."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import connection, connections
from django.test import TransactionTestCase
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.services import api_key_create, membership_set
from realservices.workers import WorkerProcess, database_url_of
from realservices.xinference import XinferenceServer, installed_venv
from tests.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.factories import TeamFactory, UserFactory
from workers.celery import app as celery_app

BASE_DIR = Path(__file__).resolve().parent.parent


WORKER_LEASE_S = 15  # short, so the dead-worker test need not wait two minutes
# The test model servers (Xinference) and webhook receivers listen on loopback, which the SSRF
# guard refuses by default; tests of the guard itself set OUTBOUND_ALLOWED_NETWORKS = [].
TEST_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]


@pytest.fixture(autouse=True)
def _outbound_loopback_allowed(settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = list(TEST_ALLOWED_NETWORKS)


# pytest-xdist (--dist loadfile) hands the files out in collection order, and a long file picked
# up last keeps one process busy after the others are done: the longest files (the durations of
# a clean-clone run) start first.
LONGEST_FILES_FIRST = (
    "test_supervisor.py",
    "test_chat.py",
    "test_kb_legacy_formats.py",
    "test_drills.py",
    "test_evaluation.py",
    "test_kb_hostile.py",
    "test_models_registry.py",
    "test_kb.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FILES_FIRST.index(name) if name in LONGEST_FILES_FIRST else len(LONGEST_FILES_FIRST)

    items.sort(key=rank)  # stable: the order inside a file and among the rest stays


FLUSH_METHOD = "_fixture_teardown"  # Django's TransactionTestCase empties the tables here


def _is_deadlock(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, psycopg.errors.DeadlockDetected):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@pytest.fixture(scope="session", autouse=True)
def _flush_retries_a_deadlock() -> Iterator[None]:
    """After each transactional test Django empties every table with one TRUNCATE. The real
    Celery worker may still be finishing a task the test caused (a title and its metering, a
    vector-index check) and PostgreSQL may choose the TRUNCATE as the victim of a deadlock (seen
    in a clean-clone run); the worker's transaction ends within moments, so the flush is tried
    again instead of failing the test that had passed."""
    original = getattr(TransactionTestCase, FLUSH_METHOD)

    def teardown_retrying(self: TransactionTestCase) -> None:
        for attempt in range(5):
            try:
                original(self)
                return
            except CommandError as exc:
                if attempt == 4 or not _is_deadlock(exc):
                    raise
                time.sleep(0.5 * (attempt + 1))

    setattr(TransactionTestCase, FLUSH_METHOD, teardown_retrying)
    try:
        yield
    finally:
        setattr(TransactionTestCase, FLUSH_METHOD, original)


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: None, django_db_blocker: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "CHATPLATFORM_VAR_DIR": str(settings.VAR_DIR),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "KB_INGEST_LEASE_S": str(WORKER_LEASE_S),
        # Webhook receivers in the tests listen on loopback; retries should not take minutes.
        "OUTBOUND_ALLOWED_NETWORKS": ",".join(TEST_ALLOWED_NETWORKS),
        "WEBHOOK_RETRY_BASE_S": "0.5",
        # Web sources' test sites (tests/test_kb_web_sources.py) need no pause between requests.
        "KB_WEB_HOST_DELAY_S": "0",
    }
    # Drop messages a previous, interrupted run may have left so this run starts clean.
    celery_app.control.purge()
    worker = WorkerProcess(env)
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def celery_worker_process(celery_worker: WorkerProcess) -> str:
    """The worker's node name, for tests that only need one running."""
    return celery_worker.node_name


@pytest.fixture
def team():
    return TeamFactory.create()


@pytest.fixture
def other_team():
    return TeamFactory.create()


def member_of(team, role: Role = Role.MEMBER):
    user = UserFactory.create()
    membership_set(team=team, user=user, role=role)
    return user


@pytest.fixture
def member(team):
    return member_of(team)


@pytest.fixture
def outsider(other_team):
    return member_of(other_team, Role.OWNER)


def bearer_client(user, team, scopes: list[str] | None = None) -> APIClient:
    _key, secret = api_key_create(user=user, team=team, name="test", scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture(scope="session")
def xinference_venv() -> Path:
    """For tests that read the offline models' files (specs, tokenizer) without a running server."""
    return installed_venv()


@pytest.fixture(scope="session")
def xinference(xinference_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[XinferenceServer]:
    """A real Xinference serving the two offline models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)."""
    server = XinferenceServer(home=tmp_path_factory.mktemp("xinference-home"))
    try:
        server.start()
        server.launch_default_models()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def live_asgi_url(django_db_setup: None) -> Iterator[str]:
    """The platform's ASGI app (HTTP and the rooms' WebSockets) under a real uvicorn on a free
    port, in a thread of this process (so it uses the test database): for clients that speak HTTP
    themselves (openai, LangChain) and for the browser tests."""
    import threading

    # Each request's thread closes its connection when the request ends (no persistent
    # connections left behind in server threads, which would keep the test database from
    # being dropped). The dict is shared by every thread's connection to the alias.
    connection.settings_dict["CONN_MAX_AGE"] = 0

    import uvicorn

    from chatplatform.asgi import application
    from realservices.xinference import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="live-asgi", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start for the live ASGI server")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Debian's Chromium (installed by `make test`), driven by Playwright. Per test: Playwright's
    sync API keeps an event loop running in this thread while it is open, and later tests that
    call async code synchronously (async_to_sync, asyncio.run) cannot run beside it."""
    from playwright.sync_api import sync_playwright

    # The ORM calls the tests make between browser steps are plain synchronous calls; Django
    # sees Playwright's loop and would refuse them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        # With Playwright's loop running, Django keeps this thread's connection in a context
        # variable that outlives the test (a second connection beside the thread's own): open a
        # fresh one per test and close it after, so that a PostgreSQL restart between browser
        # tests (the drills) leaves nothing dead behind and nothing holds the test database.
        connections.close_all()
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()
            connections.close_all()
