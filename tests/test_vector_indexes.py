"""The per-dimension HNSW indexes on the shared chunk table: built by a worker, CONCURRENTLY, for
the size a real embedding call returns, never in a request and never for a number a tenant
typed. Real PostgreSQL, the real Celery worker and the real all-MiniLM-L6-v2 on Xinference.

The embedded model's 384 is the only size a real model here returns, and migration 0003 builds
its index; the tests that need a new dimension drop that index first (and build it back after),
so 384 is new to the table as any other size would be."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import openai
import psycopg
import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Role, Team
from kb.models import Document, KnowledgeBase, VectorIndex
from kb.services import kb_index_vectors, vector_index_ensure
from kb.vector_indexes import embedding_expression, index_name, index_predicate, vector_index_build
from models_registry import embedded_xinference
from models_registry.models import ModelEvent, ModelKind, ModelRegistration, Provider, ProviderKind
from realservices.workers import WorkerProcess, database_url_of
from realservices.xinference import XinferenceServer, free_port
from tests.conftest import bearer_client, member_of

pytestmark = pytest.mark.django_db(transaction=True)
DIMS = 384  # what all-MiniLM-L6-v2 returns
TIMEOUT_S = 90


@pytest.fixture
def without_384_index() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {index_name(DIMS)}")
    yield
    vector_index_build(DIMS)  # back as migrations leave it, for the tests after (a no-op when valid)


def index_state(dims: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [index_name(dims)])
        row = cursor.fetchone()
    return "missing" if row is None else ("valid" if row[0] else "invalid")


def concurrent_builds() -> list[str]:
    """The index builds running on the chunk table, as pg_stat_progress_create_index shows them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT command || ': ' || phase FROM pg_stat_progress_create_index WHERE relid = 'kb_chunk'::regclass"
        )
        return [row[0] for row in cursor.fetchall()]


def wait_until(condition: Callable[[], object], timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def raw_connection(*, autocommit: bool) -> psycopg.Connection:
    """A session of its own, as another team's worker or web process would have."""
    return psycopg.connect(database_url_of(connection.settings_dict), autocommit=autocommit)


def document_of(team: Team, endpoint: str, name: str = "theirs") -> Document:
    """A knowledge base and a document for chunks to hang on, written straight: the rows a test
    starts from, with nothing scheduled for them."""
    provider = Provider.objects.create(team=team, name=name, kind=ProviderKind.XINFERENCE, endpoint=endpoint)
    model = ModelRegistration.objects.create(
        team=team,
        provider=provider,
        kind=ModelKind.EMBEDDING,
        name=name,
        provider_model_uid=embedded_xinference.EMBEDDING_UID,
        dimensions=DIMS,
        keep_running=False,
    )
    kb = KnowledgeBase.objects.create(team=team, name=name, embedding_model=model)
    return Document.objects.create(
        knowledge_base=kb,
        team=team,
        original_name="a.txt",
        sha256="a" * 64,
        size_bytes=1,
        content_type="text/plain",
        status="ready",
        file=ContentFile(b"x", name="a.txt"),
    )


def insert_chunk(session: psycopg.Connection, document: Document, ordinal: int) -> None:
    session.execute(
        "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, embedding, "
        "search_vector) VALUES (%s, %s, 0, %s, 'passage', '{}'::jsonb, %s, %s::vector, to_tsvector('simple', 'x'))",
        [document.knowledge_base_id, document.pk, ordinal, DIMS, str([0.5] * DIMS)],
    )


def register_through_the_api(client, team: Team, endpoint: str, *, name: str, dimensions: int) -> int:
    provider = client.post(
        "/api/v1/providers/", {"name": name, "kind": "xinference", "endpoint": endpoint}, format="json"
    )
    assert provider.status_code == 201, provider.json()
    model = client.post(
        "/api/v1/models/",
        {
            "provider": provider.json()["id"],
            "kind": "embedding",
            "name": name,
            "keep_running": False,
            "provider_model_uid": embedded_xinference.EMBEDDING_UID,
            "dimensions": dimensions,
        },
        format="json",
    )
    assert model.status_code == 201, model.json()
    return int(model.json()["id"])


INDEX_DDL = re.compile(r"\b(CREATE|DROP)\s+(UNIQUE\s+)?INDEX\b|\bREINDEX\b", re.IGNORECASE)


def ddl_in(queries: CaptureQueriesContext) -> list[str]:
    return [query["sql"] for query in queries.captured_queries if INDEX_DDL.search(query["sql"])]


def test_a_new_dimension_is_built_by_the_worker_concurrently_while_other_teams_insert(
    team, other_team, xinference: XinferenceServer, celery_worker: WorkerProcess, without_384_index: None
) -> None:
    theirs = document_of(other_team, xinference.endpoint)
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    # Another team's store is in flight (an open transaction that inserted chunks): a plain
    # CREATE INDEX would queue for its SHARE lock behind it, and every insert after behind that.
    in_flight = raw_connection(autocommit=False)
    inserter = raw_connection(autocommit=True)
    try:
        insert_chunk(in_flight, theirs, ordinal=0)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")  # DDL in the request would fail here, not hang
        try:
            with CaptureQueriesContext(connection) as queries:
                model_id = register_through_the_api(admin, team, xinference.endpoint, name="minilm", dimensions=DIMS)
                created = admin.post(
                    "/api/v1/knowledge-bases/", {"name": "Handbook", "embedding_model": model_id}, format="json"
                )
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        assert created.status_code == 201, created.json()
        assert ddl_in(queries) == []  # no CREATE INDEX (nor anything else on an index) in either request

        # The worker probed the model (a real embedding call) and builds the index for what it returned.
        wait_until(concurrent_builds)
        assert concurrent_builds()[0].startswith("CREATE INDEX CONCURRENTLY")
        assert ModelEvent.objects.filter(
            registration_id=model_id, kind=ModelEvent.Kind.TESTED, message=f"returned a {DIMS}-dimensional embedding"
        ).exists()
        # While it runs, another team's insert goes through at once.
        inserter.execute("SET lock_timeout = '2s'")
        started = time.perf_counter()
        insert_chunk(inserter, theirs, ordinal=1)
        insert_s = time.perf_counter() - started
        assert concurrent_builds(), "the build should still be waiting for the store in flight"
        assert index_state(DIMS) == "invalid"  # not used by queries until it is complete
        print(f"\ninsert during the concurrent build: {insert_s * 1000:.1f} ms")

        in_flight.commit()  # the store ends; the build can finish
        wait_until(lambda: index_state(DIMS) == "valid")
    finally:
        in_flight.close()
        inserter.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [index_name(DIMS)])
        (definition,) = cursor.fetchone()
    assert "USING hnsw" in definition
    assert f"vector({DIMS})" in definition
    assert "in_vector_index" in definition


def test_a_claimed_dimension_the_model_does_not_return_creates_no_index(
    team, xinference: XinferenceServer, celery_worker: WorkerProcess
) -> None:
    claimed = 768  # what the tenant typed; the model returns 384
    assert index_state(claimed) == "missing"
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    with CaptureQueriesContext(connection) as queries:
        model_id = register_through_the_api(admin, team, xinference.endpoint, name="claims", dimensions=claimed)
        body = {"name": "Claimed", "embedding_model": model_id}
        created = admin.post("/api/v1/knowledge-bases/", body, format="json")
    assert created.status_code == 201, created.json()
    assert ddl_in(queries) == []
    # Both asks (the registration, the knowledge base) probed the real model and built nothing.
    mismatch = (
        f"failed: returned a {DIMS}-dimensional embedding, but it is registered with {claimed}: correct its dimensions"
    )
    probes = ModelEvent.objects.filter(registration_id=model_id, kind=ModelEvent.Kind.TESTED, message=mismatch)
    wait_until(lambda: probes.count() == 2)
    assert index_state(claimed) == "missing"
    assert concurrent_builds() == []

    # A model nobody can reach is never probed, so its claim builds nothing either.
    unreachable = ModelRegistration.objects.create(
        team=team,
        provider=Provider.objects.create(
            team=team, name="gone", kind=ProviderKind.XINFERENCE, endpoint=f"http://127.0.0.1:{free_port()}"
        ),
        kind=ModelKind.EMBEDDING,
        name="gone",
        provider_model_uid="gone",
        dimensions=1024,
        keep_running=False,
    )
    with pytest.raises(openai.APIConnectionError):
        vector_index_ensure(model=unreachable)
    assert index_state(1024) == "missing"


def test_indexing_a_knowledge_base_waits_for_its_index_and_replaces_a_killed_build(
    team, xinference: XinferenceServer, without_384_index: None
) -> None:
    # With its model unreachable, nothing can say which size to build: the knowledge base stays
    # NONE (searched exactly) instead of being marked ready for an index that does not exist.
    unreachable = document_of(team, f"http://127.0.0.1:{free_port()}", name="unreachable").knowledge_base
    kb_index_vectors(kb_id=unreachable.pk)
    assert KnowledgeBase.objects.get(pk=unreachable.pk).vector_index == VectorIndex.NONE
    assert index_state(DIMS) == "missing"

    document = document_of(team, xinference.endpoint)
    kb = document.knowledge_base

    # A worker killed during CREATE INDEX CONCURRENTLY leaves an invalid index behind.
    in_flight = raw_connection(autocommit=False)
    builder = raw_connection(autocommit=True)
    builder_pid = builder.info.backend_pid
    failures: list[BaseException] = []

    def build() -> None:
        try:
            builder.execute(
                f"CREATE INDEX CONCURRENTLY {index_name(DIMS)} ON kb_chunk USING hnsw "
                f"({embedding_expression(DIMS)} vector_cosine_ops) WHERE {index_predicate(DIMS)}"
            )
        except psycopg.Error as exc:
            failures.append(exc)

    thread = threading.Thread(target=build)
    try:
        insert_chunk(in_flight, document, ordinal=0)  # the build waits for this store
        thread.start()
        wait_until(lambda: index_state(DIMS) == "invalid")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [builder_pid])
        thread.join(timeout=30)
    finally:
        in_flight.rollback()
        in_flight.close()
        builder.close()
    assert failures, "the build should have been killed"
    assert index_state(DIMS) == "invalid"

    kb_index_vectors(kb_id=kb.pk)  # what the kb.index_vectors task runs
    assert index_state(DIMS) == "valid"
    assert KnowledgeBase.objects.get(pk=kb.pk).vector_index == VectorIndex.READY
