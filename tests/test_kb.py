"""Knowledge bases end to end: the API, the real Celery worker and the real embedding model
(all-MiniLM-L6-v2 on Xinference). Upload, progress to ready, search in every mode, bad input
file by file, a worker SIGKILLed mid-document, dedupe, rebuild, fairness, cross-team access."""

from __future__ import annotations

import io
import itertools
import json
import random
import string
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Role
from kb import fulltext
from kb.ingestion import documents_dispatch
from kb.models import Chunk, Document, DocumentStatus, KnowledgeBase, VectorIndex
from kb.services import kb_create
from kb.tasks import dispatch
from models_registry.langchain_models import embeddings_for
from models_registry.models import ModelRegistration, Provider
from models_registry.services import registration_create, registration_launch
from realservices.offline_models import offline_embedding_on
from realservices.workers import WorkerProcess
from realservices.xinference import XinferenceServer, free_port
from tests.conftest import bearer_client, member_of
from tests.documents import FACT_EN, FACT_ZH, pdf_bytes, samples, zip_bytes

pytestmark = pytest.mark.django_db(transaction=True)
INGEST_TIMEOUT_S = 180


def embedding_model(team, endpoint: str, *, launch: bool = True) -> ModelRegistration:
    registration = offline_embedding_on(team, endpoint)
    return registration_launch(registration=registration) if launch else registration


@pytest.fixture
def setup(team, xinference: XinferenceServer, celery_worker: WorkerProcess):
    model = embedding_model(team, xinference.endpoint)
    admin = member_of(team, Role.ADMIN)
    client = bearer_client(admin, team)
    created = client.post("/api/v1/knowledge-bases/", {"name": "Handbook", "embedding_model": model.pk}, format="json")
    assert created.status_code == 201, created.json()
    return client, KnowledgeBase.objects.get(pk=created.json()["id"]), model


def upload(client: APIClient, kb: KnowledgeBase, files: dict[str, bytes]):
    handles = []
    for name, data in files.items():
        handle = io.BytesIO(data)
        handle.name = name
        handles.append(handle)
    return client.post(f"/api/v1/knowledge-bases/{kb.pk}/documents/", {"file": handles}, format="multipart")


def wait_until(condition: Callable[[], bool], timeout: float = INGEST_TIMEOUT_S, poke: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if poke:
            dispatch.delay()  # what beat does every few seconds
        time.sleep(1)
    raise AssertionError("condition not met in time")


def all_settled(document_ids: list[int]) -> bool:
    return not Document.objects.filter(pk__in=document_ids, status__in=["queued", "parsing", "embedding"]).exists()


HNSW_DISTANCE = "(c.embedding::vector(384)) <=>"  # the indexed expression; exact search uses the bare column


def index_through_the_worker(client: APIClient, kb: KnowledgeBase) -> None:
    """A knowledge base no larger than KB_EXACT_SEARCH_MAX_CHUNKS stays out of the HNSW index (the
    caller has lowered it): the first search past it is still exact and has the worker index it."""
    assert not Chunk.objects.filter(knowledge_base=kb, in_vector_index=True).exists()
    with CaptureQueriesContext(connection) as queries:
        assert search(client, kb, FACT_EN, mode="vector", top_k=3)
    assert not any(HNSW_DISTANCE in query["sql"] for query in queries.captured_queries)
    wait_until(lambda: client.get(f"/api/v1/knowledge-bases/{kb.pk}/").json()["vector_index"] == VectorIndex.READY)
    assert not Chunk.objects.filter(knowledge_base=kb, in_vector_index=False).exists()


def search(client: APIClient, kb: KnowledgeBase, query: str, **options: object) -> list[dict]:
    response = client.post(f"/api/v1/knowledge-bases/{kb.pk}/search/", {"query": query, **options}, format="json")
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def test_every_format_is_ingested_and_found(setup, settings) -> None:
    client, kb, _model = setup
    response = upload(client, kb, samples())
    assert response.status_code == 201, response.json()
    ids = [document["id"] for document in response.json()["documents"]]
    assert len(ids) == len(samples())
    wait_until(lambda: all_settled(ids))
    documents = Document.objects.filter(pk__in=ids)
    failed = {document.original_name: document.error for document in documents if document.status != "ready"}
    assert failed == {}
    for document in documents:
        assert document.progress == 100
        assert document.chunk_count == Chunk.objects.filter(document=document).count() > 0
        assert {"parse_s", "split_s", "embed_s", "store_s"} <= set(document.stage_timings)
    detail = client.get(f"/api/v1/documents/{ids[0]}/").json()
    assert (detail["status"], detail["progress"]) == ("ready", 100)

    for mode in ("vector", "fulltext", "hybrid"):
        results = search(client, kb, "How many cats does the lighthouse keeper feed at dawn?", mode=mode, top_k=5)
        assert results, mode
        assert "seventeen cats" in results[0]["text"] or "17" in results[0]["text"], (mode, results[0])
        assert set(results[0]) == {"chunk_id", "document_id", "document_name", "text", "score", "metadata"}
    chinese = search(client, kb, "啤酒节在哪里举行", mode="fulltext", top_k=3)
    assert chinese[0]["document_name"] == "中文.txt"
    assert FACT_ZH in chinese[0]["text"]
    pdf_ids = [document.pk for document in documents if document.original_name == "report.pdf"]
    # Vector search is exact over a few chunks and uses the HNSW index (iterative scans) above
    # KB_EXACT_SEARCH_MAX_CHUNKS: both ways find the same passages, filtered ones included. Several
    # formats hold FACT_EN alone in a chunk, and equal texts embed equally: when more of them tie
    # than top_k keeps, either way may keep any of them, so passages compare by score and text.
    by_way, used_hnsw = {}, {}
    for exact_max in (20_000, 0):
        settings.KB_EXACT_SEARCH_MAX_CHUNKS = exact_max
        if exact_max == 0:
            index_through_the_worker(client, kb)
        with CaptureQueriesContext(connection) as queries:
            pdf_hit = search(client, kb, FACT_EN, mode="vector", top_k=20, document_ids=pdf_ids)
            assert {hit["document_name"] for hit in pdf_hit} == {"report.pdf"}
            assert pdf_hit[0]["metadata"]["page"] == 2
            by_way[exact_max] = [
                (round(hit["score"], 6), hit["text"]) for hit in search(client, kb, FACT_EN, mode="vector", top_k=3)
            ]
        used_hnsw[exact_max] = any(HNSW_DISTANCE in query["sql"] for query in queries.captured_queries)
    assert by_way[20_000] == by_way[0]
    assert used_hnsw == {20_000: False, 0: True}
    ranked = search(client, kb, FACT_EN, mode="vector", top_k=10)
    ties = [(a, b) for a, b in itertools.pairwise(ranked) if a["score"] == b["score"]]
    assert all(a["chunk_id"] < b["chunk_id"] for a, b in ties), ranked  # equal scores in chunk order
    # Once indexed, a knowledge base's new chunks go into the index as they are stored.
    later = upload(client, kb, {"later.txt": b"The vault key hangs behind the harbour clock."})
    later_id = later.json()["documents"][0]["id"]
    wait_until(lambda: all_settled([later_id]))
    assert Chunk.objects.filter(document_id=later_id, in_vector_index=True).count() == 1
    settings.KB_EXACT_SEARCH_MAX_CHUNKS = 20_000
    diverse = search(client, kb, FACT_EN, mode="vector", top_k=4, mmr=True, mmr_lambda=0.3)
    assert len({hit["chunk_id"] for hit in diverse}) == 4
    high = search(client, kb, FACT_EN, mode="vector", top_k=10, score_threshold=0.99)
    assert all(hit["score"] >= 0.99 for hit in high)


def test_a_reupload_is_a_duplicate_that_adds_nothing(setup) -> None:
    client, kb, _model = setup
    first = upload(client, kb, {"notes.txt": samples()["notes.txt"]}).json()["documents"][0]
    wait_until(lambda: all_settled([first["id"]]))
    chunks_before = Chunk.objects.count()
    again = upload(client, kb, {"renamed.txt": samples()["notes.txt"]})
    assert again.status_code == 201
    assert again.json()["documents"] == []
    assert [document["id"] for document in again.json()["duplicates"]] == [first["id"]]
    assert Document.objects.filter(knowledge_base=kb).count() == 1
    listed = client.get(f"/api/v1/knowledge-bases/{kb.pk}/documents/")
    assert listed.status_code == 200
    assert [document["id"] for document in listed.json()["results"]] == [first["id"]]
    assert Chunk.objects.count() == chunks_before
    assert Document.objects.get(pk=first["id"]).attempts == 1  # no second ingestion, no embedding call


def test_each_chunk_keeps_its_own_vector_when_requests_group_chunks_by_length(setup) -> None:
    client, kb, model = setup
    # Sections of very different lengths, English and Chinese: the worker embeds them longest
    # first in requests of similar length, then must put every vector back on its own chunk.
    sections = [
        f"# Part {number}\n\n" + (f"{FACT_EN} " * (number * 2) if number % 2 else FACT_ZH * (number * 3))
        for number in range(1, 16)
    ]
    response = upload(client, kb, {"mixed.md": "\n\n".join(sections).encode()})
    document_id = response.json()["documents"][0]["id"]
    wait_until(lambda: all_settled([document_id]))
    assert Document.objects.get(pk=document_id).status == DocumentStatus.READY
    chunks = list(Chunk.objects.filter(document_id=document_id).order_by("ordinal"))
    assert len({len(chunk.text) for chunk in chunks}) > 5
    direct = embeddings_for(model).embed_documents([chunk.text for chunk in chunks])
    for chunk, expected in zip(chunks, direct, strict=True):
        stored = np.asarray(chunk.embedding, dtype=float)
        cosine = float(stored @ np.asarray(expected)) / (np.linalg.norm(stored) * np.linalg.norm(expected))
        assert cosine > 0.999, (chunk.ordinal, chunk.text[:60], cosine)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.txt", b"", "is empty"),
        ("binary.txt", bytes(range(256)) * 8, "binary data"),
        ("photo.pdf", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "PNG image"),
        ("huge.txt", b"a" * 5000, "larger than the limit"),
    ],
)
def test_bad_files_are_refused_at_upload(setup, name: str, data: bytes, reason: str) -> None:
    client, kb, _model = setup
    with override_settings(KB_MAX_UPLOAD_BYTES=4096):
        response = upload(client, kb, {name: data})
    assert response.status_code == 400
    assert reason in response.json()["error"]["message"]
    assert not Document.objects.exists()


def test_archives_are_expanded_with_guards(setup) -> None:
    client, kb, _model = setup
    archive = zip_bytes(
        {
            "docs/guide.md": samples()["guide.md"],
            "../../escape/notes.txt": samples()["notes.txt"],
            "inner.zip": zip_bytes({"a.txt": b"nested"}),
            "bomb.txt": b"0" * 2_000_000,
            "picture.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        }
    )
    response = upload(client, kb, {"bundle.zip": archive})
    assert response.status_code == 201, response.json()
    assert sorted(document["original_name"] for document in response.json()["documents"]) == ["guide.md", "notes.txt"]
    reasons = {item["name"]: item["reason"] for item in response.json()["rejected"]}
    assert "archive inside an archive" in reasons["bundle.zip/inner.zip"]
    assert "zip bombs" in reasons["bundle.zip/bomb.txt"]
    assert "PNG image" in reasons["bundle.zip/picture.png"]
    stored = Document.objects.get(original_name="notes.txt").file.path
    assert "escape" not in stored
    assert Path(stored).resolve().is_relative_to(Path(kb.documents.first().file.storage.location).resolve())


def test_broken_documents_fail_with_a_reason_and_the_worker_goes_on(setup) -> None:
    client, kb, _model = setup
    response = upload(
        client,
        kb,
        {
            "corrupt.pdf": b"%PDF-1.7\n" + b"garbage " * 300,
            "locked.pdf": pdf_bytes([FACT_EN], password="s3cret"),
            "scan.pdf": pdf_bytes([""]),
        },
    )
    ids = [document["id"] for document in response.json()["documents"]]
    wait_until(lambda: all_settled(ids))
    errors = {document.original_name: document.error for document in Document.objects.filter(pk__in=ids)}
    assert set(Document.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"failed"}
    assert "not a readable PDF" in errors["corrupt.pdf"]
    assert "encrypted" in errors["locked.pdf"]
    assert "no text" in errors["scan.pdf"]
    good = upload(client, kb, {"notes.txt": samples()["notes.txt"]}).json()["documents"][0]["id"]
    wait_until(lambda: all_settled([good]))
    assert Document.objects.get(pk=good).status == DocumentStatus.READY


def test_a_worker_killed_mid_document_loses_nothing_and_duplicates_nothing(setup, celery_worker: WorkerProcess) -> None:
    client, kb, _model = setup
    paragraphs = [f"Paragraph {n}: the harbour log records ship number {n} arriving with cargo." for n in range(1500)]
    response = upload(client, kb, {"harbour-log.txt": "\n\n".join(paragraphs).encode()})
    document_id = response.json()["documents"][0]["id"]
    wait_until(lambda: Document.objects.get(pk=document_id).status == "embedding", timeout=60)
    celery_worker.kill()
    assert Document.objects.get(pk=document_id).status in ("embedding", "parsing")
    celery_worker.start()
    wait_until(lambda: Document.objects.get(pk=document_id).status == "ready", poke=True)
    document = Document.objects.get(pk=document_id)
    ordinals = list(Chunk.objects.filter(document=document).values_list("ordinal", flat=True))
    assert len(ordinals) == document.chunk_count
    assert sorted(ordinals) == list(range(document.chunk_count))
    assert document.attempts >= 2
    assert search(client, kb, "ship number 1234 arriving", mode="fulltext", top_k=1)[0]["document_id"] == document_id


def test_ingestion_waits_and_retries_while_the_embedding_model_is_unreachable(team, celery_worker) -> None:
    model = embedding_model(team, f"http://127.0.0.1:{free_port()}", launch=False)
    kb = kb_create(team=team, name="Offline", embedding_model=model)
    client = bearer_client(member_of(team, Role.MEMBER), team)
    document_id = upload(client, kb, {"notes.txt": samples()["notes.txt"]}).json()["documents"][0]["id"]
    wait_until(lambda: "waiting to retry" in Document.objects.get(pk=document_id).error, timeout=60)
    document = Document.objects.get(pk=document_id)
    assert document.status == DocumentStatus.QUEUED
    assert "unreachable" in document.error


def test_rebuild_swaps_generations_without_downtime(setup) -> None:
    client, kb, _model = setup
    ids = [
        item["id"]
        for item in upload(client, kb, {n: samples()[n] for n in ("notes.txt", "guide.md")}).json()["documents"]
    ]
    wait_until(lambda: all_settled(ids))
    response = client.post(f"/api/v1/knowledge-bases/{kb.pk}/rebuild/", {"chunk_size": 300}, format="json")
    assert response.status_code == 202
    assert response.json()["rebuilding"] is True
    # Search keeps answering from the current generation while the next one is built.
    assert search(client, kb, "lighthouse keeper cats", mode="fulltext")
    wait_until(lambda: not KnowledgeBase.objects.get(pk=kb.pk).rebuilding)
    kb.refresh_from_db()
    assert (kb.generation, kb.chunk_size) == (2, 300)
    assert set(Chunk.objects.filter(knowledge_base=kb).values_list("generation", flat=True)) == {2}
    assert search(client, kb, "lighthouse keeper cats", mode="hybrid")


def test_delete_removes_chunks_and_files(setup) -> None:
    client, kb, _model = setup
    document_id = upload(client, kb, {"notes.txt": samples()["notes.txt"]}).json()["documents"][0]["id"]
    wait_until(lambda: all_settled([document_id]))
    path = Path(Document.objects.get(pk=document_id).file.path)
    assert path.exists()
    assert client.delete(f"/api/v1/documents/{document_id}/").status_code == 204
    assert not Chunk.objects.filter(document_id=document_id).exists()
    assert not path.exists()


def test_kb_import_command_ingests_a_folder_with_a_progress_bar(setup, tmp_path: Path) -> None:
    _client, kb, _model = setup
    for name in ("notes.txt", "guide.md", "page.html"):
        (tmp_path / name).write_bytes(samples()[name])
    out, err = io.StringIO(), io.StringIO()
    call_command("kb_import", str(kb.pk), str(tmp_path), stdout=out, stderr=err)
    assert "3 new, 0 already present, 0 rejected" in out.getvalue()
    assert "3 ready, 0 failed" in out.getvalue()
    assert "ingest" in err.getvalue()
    assert "100%" in err.getvalue()


def queued(for_team, count: int, name: str = "kb", port: int = 1) -> list[int]:
    """Queued documents in a new knowledge base whose model server (on `port`) is unreachable."""
    model = embedding_model(for_team, f"http://127.0.0.1:{port}", launch=False)
    kb = KnowledgeBase.objects.create(team=for_team, name=f"{name}-{for_team.pk}", embedding_model=model)
    return [
        Document.objects.create(
            knowledge_base=kb,
            team=for_team,
            original_name=f"{n}.txt",
            file=f"x/{n}",
            sha256=f"{for_team.pk}-{name}-{n}",
            size_bytes=1,
            content_type="text",
        ).pk
        for n in range(count)
    ]


def test_the_knowledge_base_list_counts_documents_in_one_query_whatever_its_length(team) -> None:
    client = bearer_client(member_of(team), team)
    client.get("/api/v1/knowledge-bases/")  # the key's first use also writes its last_used_at
    queued(team, 3, name="first", port=1)
    with CaptureQueriesContext(connection) as one_row:
        first = client.get("/api/v1/knowledge-bases/").json()["results"]
    queued(team, 2, name="second", port=2)
    queued(team, 0, name="third", port=3)
    with CaptureQueriesContext(connection) as three_rows:
        rows = client.get("/api/v1/knowledge-bases/").json()["results"]
    assert [row["document_count"] for row in first] == [3]
    assert sorted(row["document_count"] for row in rows) == [0, 2, 3]
    assert len(three_rows.captured_queries) == len(one_row.captured_queries)
    detail = client.get(f"/api/v1/knowledge-bases/{rows[0]['id']}/").json()
    assert detail["document_count"] == rows[0]["document_count"]


def test_dispatch_is_fair_between_teams(team, other_team) -> None:
    busy = queued(team, 50)
    small = queued(other_team, 1)
    with override_settings(KB_INGEST_MAX_IN_FLIGHT=2):
        first_round = [document_id for document_id, _token in documents_dispatch()]
        assert documents_dispatch() == []  # both slots taken
    assert first_round == [busy[0], small[0]]


def test_documents_waiting_to_retry_go_behind_their_teams_fresh_uploads(team) -> None:
    """A knowledge base whose model server went away keeps failing and retrying; the team's
    later uploads to another knowledge base go first instead of waiting for its retries to run out."""
    retrying = queued(team, 3, name="down")
    Document.objects.filter(pk__in=retrying).update(attempts=1)
    fresh = queued(team, 2, name="fresh", port=2)
    with override_settings(KB_INGEST_MAX_IN_FLIGHT=2):
        assert [document_id for document_id, _token in documents_dispatch()] == fresh


def test_nobody_reaches_another_teams_knowledge_base(setup, other_team, outsider) -> None:
    client, kb, _model = setup
    document_id = upload(client, kb, {"notes.txt": samples()["notes.txt"]}).json()["documents"][0]["id"]
    stranger = bearer_client(outsider, other_team)
    assert stranger.get("/api/v1/knowledge-bases/").json()["results"] == []
    assert stranger.get("/api/v1/documents/").json()["results"] == []
    for method, path, body in [
        ("get", f"/api/v1/knowledge-bases/{kb.pk}/", None),
        ("patch", f"/api/v1/knowledge-bases/{kb.pk}/", {"name": "mine"}),
        ("delete", f"/api/v1/knowledge-bases/{kb.pk}/", None),
        ("get", f"/api/v1/knowledge-bases/{kb.pk}/documents/", None),
        ("post", f"/api/v1/knowledge-bases/{kb.pk}/search/", {"query": "cats"}),
        ("post", f"/api/v1/knowledge-bases/{kb.pk}/rebuild/", {}),
        ("get", f"/api/v1/documents/{document_id}/", None),
        ("delete", f"/api/v1/documents/{document_id}/", None),
        ("post", f"/api/v1/documents/{document_id}/reindex/", None),
    ]:
        assert getattr(stranger, method)(path, body, format="json").status_code == 404, (method, path)
    assert upload(stranger, kb, {"x.txt": b"sneaky upload"}).status_code == 404
    viewer = bearer_client(member_of(kb.team, Role.VIEWER), kb.team)
    assert upload(viewer, kb, {"x.txt": b"viewer upload"}).status_code == 403
    assert viewer.post(f"/api/v1/knowledge-bases/{kb.pk}/search/", {"query": "cats"}, format="json").status_code == 200
    assert Document.objects.count() == 1


def test_search_requests_are_validated(setup) -> None:
    client, kb, _model = setup
    url = f"/api/v1/knowledge-bases/{kb.pk}/search/"
    cases = [
        ({"query": "x", "mode": "magic"}, "mode"),
        ({"query": ""}, "query"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "colour": "red"}, "unknown"),
    ]
    for body, field in cases:
        response = client.post(url, body, format="json")
        assert response.status_code == 400, body
        assert field in str(response.json()["error"]), body


def test_search_while_the_embedding_model_is_down_is_a_503_that_says_so(team) -> None:
    dead = embedding_model(team, f"http://127.0.0.1:{free_port()}", launch=False)
    kb = kb_create(team=team, name="Down", embedding_model=dead)
    client = bearer_client(member_of(team, Role.MEMBER), team)
    url = f"/api/v1/knowledge-bases/{kb.pk}/search/"
    for mode in ("vector", "hybrid"):
        response = client.post(url, {"query": "where is the vault key?", "mode": mode}, format="json")
        assert response.status_code == 503, (mode, response.content)
        assert response.json()["error"]["code"] == "model_unavailable"
        assert f"the embedding model {dead.name} did not answer" in response.json()["error"]["message"]
    # Full-text search needs no model and still answers.
    assert client.post(url, {"query": "vault", "mode": "fulltext"}, format="json").status_code == 200


def test_a_knowledge_base_only_takes_its_teams_embedding_models(team, other_team) -> None:
    from kb.services import KnowledgeBaseError

    foreign = embedding_model(other_team, "http://127.0.0.1:1", launch=False)
    with pytest.raises(KnowledgeBaseError, match=r"no embedding model with id \d+ in this team"):
        kb_create(team=team, name="x", embedding_model=foreign)
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'kb_chunk_embedding_384_hnsw'")
        definition = cursor.fetchone()[0]
    assert "hnsw" in definition
    assert "in_vector_index" in definition  # only large knowledge bases' chunks are in it


def test_admins_upload_several_files_in_the_admin_console(team) -> None:
    from django.test import Client

    from accounts.models import User

    kb = kb_create(team=team, name="Console", embedding_model=embedding_model(team, "http://127.0.0.1:1", launch=False))
    client = Client()
    client.force_login(User.objects.create_superuser("console-admin", "", "pw-console-1"))
    page = client.get(f"/admin/kb/knowledgebase/{kb.pk}/upload/")
    assert page.status_code == 200
    assert b"multiple" in page.content
    files = [io.BytesIO(samples()[name]) for name in ("notes.txt", "guide.md")]
    for handle, name in zip(files, ("notes.txt", "guide.md"), strict=True):
        handle.name = name
    bad = io.BytesIO(b"")
    bad.name = "empty.txt"
    response = client.post(f"/admin/kb/knowledgebase/{kb.pk}/upload/", {"upload": [*files, bad]}, follow=True)
    assert response.status_code == 200
    assert sorted(kb.documents.values_list("original_name", flat=True)) == ["guide.md", "notes.txt"]
    assert b"Refused empty.txt" in response.content


def test_search_can_rerank_with_a_rerank_registration(setup, tmp_path: Path) -> None:
    from models_registry.services import registration_terminate
    from realservices.xinference import TINY_RERANKER_UID, build_tiny_reranker

    client, kb, model = setup
    files = {name: samples()[name] for name in ("notes.txt", "guide.md")}
    ids = [item["id"] for item in upload(client, kb, files).json()["documents"]]
    wait_until(lambda: all_settled(ids))
    spec, launch = build_tiny_reranker(tmp_path / "reranker")
    reranker = registration_launch(
        registration=registration_create(
            provider=model.provider,
            kind="rerank",
            name="tiny",
            provider_model_uid=TINY_RERANKER_UID,
            launch_spec=launch,
            custom_spec=spec,
        )
    )
    try:
        plain = search(client, kb, "lighthouse cats", mode="hybrid", top_k=3)
        reranked = search(client, kb, "lighthouse cats", mode="hybrid", top_k=3, rerank_model=reranker.pk)
        # The tiny model's scores mean nothing; what matters is that they come from it.
        assert {hit["chunk_id"] for hit in reranked} <= {
            hit["chunk_id"] for hit in search(client, kb, "lighthouse cats", mode="hybrid", top_k=12)
        }
        assert [hit["score"] for hit in reranked] != [hit["score"] for hit in plain]
        foreign = client.post(
            f"/api/v1/knowledge-bases/{kb.pk}/search/", {"query": "x", "rerank_model": model.pk}, format="json"
        )
        assert foreign.status_code == 400
    finally:
        registration_terminate(registration=reranker)


def test_indexing_resumes_where_a_killed_worker_stopped_and_touches_no_other_knowledge_base(
    team, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.files.base import ContentFile

    from kb import services as kb_services
    from kb.services import kb_index_vectors

    model = embedding_model(team, "http://127.0.0.1:1", launch=False)
    rng = np.random.default_rng(3)
    kbs = {}
    for name in ("Big", "Small"):
        kbs[name] = kb = kb_create(team=team, name=name, embedding_model=model)
        document = Document.objects.create(
            knowledge_base=kb,
            team=team,
            original_name="a.txt",
            sha256=name[0] * 64,
            size_bytes=1,
            content_type="text/plain",
            status="ready",
            file=ContentFile(b"x", name="a.txt"),
        )
        for ordinal in range(12):
            Chunk.objects.create(
                knowledge_base=kb,
                document=document,
                generation=kb.generation,
                ordinal=ordinal,
                text=f"passage {ordinal}",
                dims=384,
                embedding=rng.standard_normal(384).tolist(),
            )
    big = kbs["Big"]
    # What a worker killed part-way leaves: the switch made, the first batch marked.
    KnowledgeBase.objects.filter(pk=big.pk).update(vector_index=VectorIndex.BUILDING)
    Chunk.objects.filter(knowledge_base=big, ordinal__lt=5).update(in_vector_index=True)
    monkeypatch.setattr(kb_services, "VECTOR_INDEX_BATCH", 4)
    kb_index_vectors(kb_id=big.pk)
    kb_index_vectors(kb_id=big.pk)  # run again (a redelivered task): nothing changes
    assert KnowledgeBase.objects.get(pk=big.pk).vector_index == VectorIndex.READY
    assert not Chunk.objects.filter(knowledge_base=big, in_vector_index=False).exists()
    assert not Chunk.objects.filter(knowledge_base=kbs["Small"], in_vector_index=True).exists()
    assert KnowledgeBase.objects.get(pk=kbs["Small"].pk).vector_index == VectorIndex.NONE

    target = Chunk.objects.get(knowledge_base=big, ordinal=9)
    vector = json.dumps([float(value) for value in target.embedding])
    query = (
        "SELECT id FROM kb_chunk c WHERE c.dims = 384 AND c.in_vector_index AND c.knowledge_base_id = %s "
        "ORDER BY (c.embedding::vector(384)) <=> %s::vector(384) LIMIT 1"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # Only the HNSW index returns rows in distance order without a sort, whatever the
        # planner thinks of the few rows here.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN " + query, [big.pk, vector])
        assert "kb_chunk_embedding_384_hnsw" in " ".join(row[0] for row in cursor.fetchall())
        cursor.execute(query, [big.pk, vector])
        assert cursor.fetchone()[0] == target.pk  # found through the index


def full_text_knowledge_base(team, documents: dict[str, list[str]]) -> KnowledgeBase:
    """A knowledge base whose documents (name: chunk texts) are stored as ingestion stores them,
    search terms included, with a placeholder vector: for full-text searches."""
    provider = Provider.objects.create(team=team, name="p", kind="openai_compatible", endpoint="http://127.0.0.1:9")
    model = ModelRegistration.objects.create(
        team=team, provider=provider, kind="embedding", name="e", provider_model_uid="e", dimensions=3
    )
    kb = kb_create(team=team, name="Docs", embedding_model=model)
    store_full_text_documents(kb, documents)
    return kb


def store_full_text_documents(kb: KnowledgeBase, documents: dict[str, list[str]]) -> None:
    for name, texts in documents.items():
        document = Document.objects.create(
            knowledge_base=kb,
            team=kb.team,
            original_name=name,
            sha256=name.ljust(64, "0"),
            size_bytes=1,
            content_type="text/plain",
            status="ready",
            chunk_count=len(texts),
        )
        with connection.cursor() as cursor:
            for ordinal, text in enumerate(texts):
                cursor.execute(
                    "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, "
                    "dims, embedding, search_vector) VALUES (%s, %s, %s, %s, %s, '{}', 3, '[1,0,0]', "
                    "to_tsvector('simple', %s))",
                    [kb.pk, document.pk, kb.generation, ordinal, text, fulltext.index_text(text)],
                )


def test_full_text_weighs_a_rare_term_over_common_ones(team) -> None:
    """BM25's IDF: a question's rare word finds the one passage that has it, even when other
    passages repeat the question's common words many times (without the IDF they won)."""
    common = "python function call python function python install " * 3
    documents = {f"common-{index}.txt": [common] for index in range(8)}
    documents["cache.txt"] = ["Decorate the function with lru_cache to memoise its results."]
    kb = full_text_knowledge_base(team, documents)
    client = bearer_client(member_of(team, Role.VIEWER), team)
    hits = search(client, kb, "how do I cache a python function call?", mode="fulltext", top_k=3)
    assert hits[0]["document_name"] == "cache.txt"
    assert search(client, kb, "zebra", mode="fulltext") == []


def test_in_a_large_knowledge_base_only_a_questions_rarer_terms_pick_full_text_candidates(team, monkeypatch) -> None:
    """Past RARE_TERMS_MIN_CHUNKS a term in more than COMMON_TERM_SHARE of the chunks still counts
    in the score but no longer makes a chunk a candidate: ranking every chunk that holds a common
    word is what made full text slow at 100k chunks."""
    from kb import retrieval

    texts = [f"python install notes number {index}" for index in range(38)]
    texts += ["python lru_cache memoises a function", "python lru_cache python install python"]
    kb = full_text_knowledge_base(team, {"notes.txt": texts})
    client = bearer_client(member_of(team, Role.VIEWER), team)

    def found(query: str) -> list[str]:
        return [hit["text"] for hit in search(client, kb, query, mode="fulltext", top_k=10)]

    # 40 chunks, below the size: every term picks candidates.
    assert len(found("python lru_cache")) == 10
    monkeypatch.setattr(retrieval, "RARE_TERMS_MIN_CHUNKS", 40)
    monkeypatch.setattr(retrieval, "COMMON_TERM_SHARE", 0.05)
    # lru_cache is in 2 of 40 chunks (5%): only its chunks are candidates.
    assert sorted(found("python lru_cache")) == sorted(texts[38:])
    # A question of common words only still finds chunks: its rarest word's.
    common_only = found("python install")
    assert len(common_only) == 10
    assert all("install" in text for text in common_only)


def test_term_counts_are_kept_until_a_document_comes_goes_or_changes(team, monkeypatch, settings) -> None:
    """Each term's chunk count is kept in Redis (counting a common term reads every chunk that
    holds it); a document added or changed (its row's updated_at, which a chunk edit moves too)
    starts new counts. With Redis down the search still answers, counting as it goes."""
    from kb import retrieval

    # The rare-terms rule from 40 chunks, so that the hits are exactly the lru_cache chunks.
    monkeypatch.setattr(retrieval, "RARE_TERMS_MIN_CHUNKS", 40)
    monkeypatch.setattr(retrieval, "COMMON_TERM_SHARE", 0.05)
    texts = [f"python install notes number {index}" for index in range(38)]
    texts += ["python lru_cache memoises a function", "python lru_cache python install python"]
    kb = full_text_knowledge_base(team, {"notes.txt": texts})
    client = bearer_client(member_of(team, Role.VIEWER), team)

    def search_counting(query: str) -> tuple[list[str], bool]:
        with CaptureQueriesContext(connection) as queries:
            hits = search(client, kb, query, mode="fulltext", top_k=10)
        counted = any("SELECT u.term, (SELECT count(*)" in query["sql"] for query in queries.captured_queries)
        return sorted(hit["text"] for hit in hits), counted

    first = sorted(texts[38:])
    assert search_counting("python lru_cache") == (first, True)
    assert search_counting("python lru_cache") == (first, False)
    # A new term is counted; the remembered ones are not counted again.
    with CaptureQueriesContext(connection) as queries:
        search(client, kb, "python memoises", mode="fulltext")
    (count_query,) = [query["sql"] for query in queries.captured_queries if "SELECT u.term" in query["sql"]]
    assert ("memoises" in count_query, "python" in count_query) == (True, False)

    Document.objects.filter(knowledge_base=kb).update(updated_at=timezone.now())
    assert search_counting("python lru_cache") == (first, True)
    assert search_counting("python lru_cache") == (first, False)

    store_full_text_documents(kb, {"more.txt": ["zebra lru_cache", "another lru_cache note"]})
    after = sorted([*texts[38:], "zebra lru_cache", "another lru_cache note"])
    assert search_counting("python lru_cache") == (after, True)

    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}
    assert search_counting("python lru_cache") == (after, True)


def test_a_chunk_row_keeps_its_vector_and_search_terms_inline(team) -> None:
    """kb/0011: a chunk's row of a 1,000-character passage and a 384-float vector (about 4.5 kB)
    keeps both in the row, where an exact vector scan and full-text ranking read them; past
    PostgreSQL's default 2 kB they went out to the TOAST table, fetched one by one per search."""
    provider = Provider.objects.create(team=team, name="p", kind="openai_compatible", endpoint="http://127.0.0.1:9")
    model = ModelRegistration.objects.create(
        team=team, provider=provider, kind="embedding", name="e", provider_model_uid="e", dimensions=384
    )
    kb = kb_create(team=team, name="Docs", embedding_model=model)
    document = Document.objects.create(
        knowledge_base=kb, team=team, original_name="long.txt", sha256="1" * 64, size_bytes=1, status="ready"
    )
    rng = random.Random(11)  # noqa: S311
    text = " ".join("".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(125))
    vector = str([round(rng.uniform(-1, 1), 6) for _ in range(384)])
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, "
            "embedding, search_vector) VALUES (%s, %s, %s, 0, %s, '{}', 384, %s::vector, to_tsvector('simple', %s)) "
            "RETURNING pg_column_toast_chunk_id(embedding), pg_column_toast_chunk_id(search_vector), "
            "pg_column_size(embedding) + pg_column_size(search_vector) + pg_column_size(text)",
            [kb.pk, document.pk, kb.generation, text, vector, fulltext.index_text(text)],
        )
        vector_toast, terms_toast, row_values = cursor.fetchone()
    assert row_values > 4000  # well past the 2 kB at which PostgreSQL would move values out
    assert (vector_toast, terms_toast) == (None, None)
