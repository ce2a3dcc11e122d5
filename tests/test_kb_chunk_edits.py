"""A member disables or corrects a chunk (kb.chunk_edits): search follows in every mode, the edit
holds through rebuilds, an edit whose original the splitter no longer makes is listed as not
applied, the model down changes nothing, and only the team's members may edit. Against the real
worker and MiniLM on Xinference; the document page in Chromium."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Role
from kb import fulltext
from kb.chunk_edits import CHUNK_TEXT_MAX_CHARS, text_sha256
from kb.ingestion import _replace_chunks
from kb.models import Chunk, ChunkEdit, Document, DocumentStatus, KnowledgeBase
from kb.services import documents_upload, kb_create
from kb.splitting import ChunkDraft
from kb.tasks import dispatch
from models_registry.langchain_models import embeddings_for
from models_registry.models import ModelRegistration, Provider
from models_registry.services import registration_launch
from realservices.offline_models import offline_embedding_on
from realservices.workers import WorkerProcess
from realservices.xinference import XinferenceServer, free_port
from tests.browser import screenshot, signed_in_context
from tests.conftest import bearer_client, member_of
from tests.documents import FACT_ZH

pytestmark = pytest.mark.django_db(transaction=True)
INGEST_TIMEOUT_S = 180

LIGHTHOUSE = "The lighthouse keeper of Varnholm feeds seventeen cats every morning at dawn, before the ferry docks."
BAKERY = "The bakery on Quay Street sells cardamom buns only on Thursdays; the baker Ingrid Solberg lights the ovens."
MUSEUM = "The museum keeps a copper telescope donated in 1911 by the astronomer Halvard Brekke, aimed at the north."
HANDBOOK = f"# Harbour guide\n\n## Lighthouse\n\n{LIGHTHOUSE}\n\n## Bakery\n\n{BAKERY}\n\n## Museum\n\n{MUSEUM}\n"
# The heading-aware splitter starts each chunk with its heading path: part of the original text.
BAKERY_CHUNK = f"Harbour guide > Bakery\n\n{BAKERY}"
CORRECTED = f"Harbour guide > Bakery\n\nThe bakery on Quay Street now sells saffron pretzels on Mondays.\n\n{FACT_ZH}"
MODES = ("hybrid", "vector", "fulltext")


def wait_until(condition: Callable[[], bool], timeout: float = INGEST_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        dispatch.delay()  # what beat does every few seconds
        time.sleep(1)
    raise AssertionError("condition not met in time")


def ingested(kb: KnowledgeBase, name: str, data: bytes) -> Document:
    result = documents_upload(kb=kb, uploads=[(io.BytesIO(data), name)])
    document = result.created[0]
    wait_until(lambda: Document.objects.get(pk=document.pk).status == DocumentStatus.READY)
    return Document.objects.get(pk=document.pk)


def rebuilt(client: APIClient, kb: KnowledgeBase, **settings: Any) -> KnowledgeBase:
    response = client.post(f"/api/v1/knowledge-bases/{kb.pk}/rebuild/", settings, format="json")
    assert response.status_code == 202, response.json()
    wait_until(lambda: not KnowledgeBase.objects.get(pk=kb.pk).rebuilding)
    return KnowledgeBase.objects.get(pk=kb.pk)


def search(client: APIClient, kb: KnowledgeBase, query: str, mode: str, top_k: int = 10) -> list[dict[str, Any]]:
    response = client.post(
        f"/api/v1/knowledge-bases/{kb.pk}/search/", {"query": query, "mode": mode, "top_k": top_k}, format="json"
    )
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def chunks_of(client: APIClient, document: Document) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/documents/{document.pk}/chunks/")
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def chunk_with(chunks: list[dict[str, Any]], words: str) -> dict[str, Any]:
    (found,) = [chunk for chunk in chunks if words in chunk["text"]]
    return found


def edits_of(client: APIClient, document: Document) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/documents/{document.pk}/chunk-edits/")
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def cosine(first: Any, second: Any) -> float:
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def stored_terms(chunk_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT search_vector::text FROM kb_chunk WHERE id = %s", [chunk_id])
        (terms,) = cursor.fetchone()
    return terms


def expected_terms(text: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_tsvector('simple', %s)::text", [fulltext.index_text(text)])
        (terms,) = cursor.fetchone()
    return terms


@pytest.fixture
def harbour(team, xinference: XinferenceServer, celery_worker: WorkerProcess):
    """A knowledge base of three facts, one chunk each (heading-aware), and a member's client."""
    model = registration_launch(registration=offline_embedding_on(team, xinference.endpoint))
    kb = kb_create(
        team=team, name="Harbour", embedding_model=model, splitter="headings", chunk_size=300, chunk_overlap=0
    )
    document = ingested(kb, "harbour.md", HANDBOOK.encode())
    return bearer_client(member_of(team, Role.MEMBER), team), kb, document, model


def test_a_disabled_and_a_corrected_chunk_are_searched_as_edited_and_stay_so_through_rebuilds(harbour, team) -> None:
    member, kb, document, model = harbour
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    chunks = chunks_of(member, document)
    assert [chunk["ordinal"] for chunk in chunks] == [0, 1, 2]
    lighthouse, bakery = chunk_with(chunks, "seventeen cats"), chunk_with(chunks, "cardamom")
    assert bakery["text"] == BAKERY_CHUNK
    assert bakery["metadata"]["heading_path"] == ["Harbour guide", "Bakery"]
    assert (bakery["disabled"], bakery["edited"], bakery["original_text"]) == (False, False, None)
    for mode in MODES:
        assert search(member, kb, "Who feeds the cats at the lighthouse?", mode)[0]["chunk_id"] == lighthouse["id"]

    # Disabled: kept, listed, never retrieved, in any mode.
    response = member.patch(f"/api/v1/chunks/{lighthouse['id']}/", {"disabled": True}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["disabled"], response.json()["edited"], response.json()["text"]) == (
        True,
        False,
        lighthouse["text"],
    )
    for mode in MODES:
        hits = search(member, kb, "Who feeds the cats at the lighthouse?", mode)
        assert lighthouse["id"] not in [hit["chunk_id"] for hit in hits], mode
    assert search(member, kb, "lighthouse cats", "fulltext") == []
    assert len(search(member, kb, "Who feeds the cats at the lighthouse?", "vector")) == 2  # the other two

    # Corrected: embedded again and indexed by its new words (jieba's for the Chinese sentence).
    # Searched before, they were in no chunk: the search's kept term counts must not hide them after.
    assert search(member, kb, "saffron pretzels on Mondays", "fulltext") == []
    response = member.patch(f"/api/v1/chunks/{bakery['id']}/", {"text": CORRECTED}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["text"], body["edited"], body["original_text"], body["disabled"]) == (
        CORRECTED,
        True,
        BAKERY_CHUNK,
        False,
    )
    for mode in MODES:
        assert search(member, kb, "saffron pretzels on Mondays", mode)[0]["chunk_id"] == bakery["id"], mode
    assert search(member, kb, "啤酒节在哪里举行", "fulltext")[0]["chunk_id"] == bakery["id"]
    assert search(member, kb, "cardamom buns Solberg", "fulltext") == []
    stored = Chunk.objects.get(pk=bakery["id"])
    new_vector, old_vector = embeddings_for(model).embed_documents([CORRECTED, BAKERY_CHUNK])
    assert cosine(stored.embedding, new_vector) > 0.999
    assert cosine(stored.embedding, old_vector) < 0.99
    assert stored_terms(bakery["id"]) == expected_terms(CORRECTED)
    assert "啤酒节" in fulltext.index_text(CORRECTED).split()
    recorded = ChunkEdit.objects.get(document=document, text=CORRECTED)
    assert (recorded.original_text, recorded.team_id) == (BAKERY_CHUNK, team.pk)

    # A rebuild (the next generation, built beside the live one) keeps both.
    kb = rebuilt(admin, kb, chunk_size=400)
    assert kb.generation == 2
    chunks = chunks_of(member, document)
    assert {chunk["id"] for chunk in chunks}.isdisjoint({lighthouse["id"], bakery["id"]})
    assert chunk_with(chunks, "seventeen cats")["disabled"] is True
    bakery = chunk_with(chunks, "saffron pretzels")
    assert (bakery["edited"], bakery["original_text"]) == (True, BAKERY_CHUNK)
    assert cosine(Chunk.objects.get(pk=bakery["id"]).embedding, new_vector) > 0.999
    assert stored_terms(bakery["id"]) == expected_terms(CORRECTED)
    for mode in MODES:
        hits = search(member, kb, "Who feeds the cats at the lighthouse?", mode)
        assert not any("seventeen cats" in hit["text"] for hit in hits), mode
        assert search(member, kb, "saffron pretzels on Mondays", mode)[0]["chunk_id"] == bakery["id"], mode
    assert search(member, kb, "cardamom buns Solberg", "fulltext") == []
    assert [edit["applied"] for edit in edits_of(member, document)] == [True, True]

    # Other chunk settings: without the heading path in front, no chunk has the originals any more.
    kb = rebuilt(admin, kb, splitter="recursive", chunk_size=120, chunk_headers=False)
    chunks = chunks_of(member, document)
    assert not any(chunk["disabled"] or chunk["edited"] for chunk in chunks)
    assert chunk_with(chunks, "cardamom")["text"] == BAKERY
    assert search(member, kb, "lighthouse cats", "fulltext")[0]["text"] == LIGHTHOUSE
    edits = edits_of(member, document)
    assert [(edit["applied"], edit["disabled"], edit["text"]) for edit in edits] == [  # newest first
        (False, False, CORRECTED),
        (False, True, ""),
    ]
    assert edits[0]["original_text"] == BAKERY_CHUNK
    assert edits[0]["edited_by"] is not None
    for edit in edits:
        assert member.delete(f"/api/v1/chunk-edits/{edit['id']}/").status_code == 204
    assert edits_of(member, document) == []
    assert chunk_with(chunks_of(member, document), "cardamom")["text"] == BAKERY  # nothing to restore


def test_corrections_are_checked_and_revert_to_the_original(harbour) -> None:
    member, _kb, document, _model = harbour
    chunks = chunks_of(member, document)
    museum, bakery = chunk_with(chunks, "telescope"), chunk_with(chunks, "cardamom")
    url = f"/api/v1/chunks/{museum['id']}/"
    for body, says in [
        ({"text": ""}, "empty"),
        ({"text": "   \n "}, "empty"),
        ({"text": "x" * (CHUNK_TEXT_MAX_CHARS + 1)}, "more than a chunk may hold"),
        ({}, "nothing to change"),
        ({"text": "Another text.", "revert": True}, "not both"),
        ({"colour": "red"}, "Unknown field"),
        ({"disabled": "maybe"}, "disabled"),
        ({"text": bakery["text"]}, "another chunk of this document reads exactly like this"),
    ]:
        response = member.patch(url, body, format="json")
        assert response.status_code == 400, (body, response.json())
        assert says in response.json()["error"]["message"], (body, response.json())
    assert not ChunkEdit.objects.exists()
    assert Chunk.objects.get(pk=museum["id"]).text == museum["text"]

    # The original text again (a browser's line ends, trailing blanks) is no correction.
    response = member.patch(url, {"text": museum["text"].replace("\n", "\r\n") + "  \n"}, format="json")
    assert response.status_code == 200
    assert (response.json()["edited"], response.json()["text"]) == (False, museum["text"])
    assert not ChunkEdit.objects.exists()

    corrected = museum["text"] + " It was restored in 2020."
    assert member.patch(url, {"text": corrected}, format="json").json()["edited"] is True
    assert member.patch(url, {"disabled": True}, format="json").json()["text"] == corrected  # the text stays
    reverted = member.patch(url, {"revert": True}, format="json").json()
    assert (reverted["text"], reverted["edited"], reverted["disabled"]) == (museum["text"], False, True)
    assert ChunkEdit.objects.get().text == ""  # only the disable is left
    assert member.patch(url, {"disabled": False}, format="json").json()["disabled"] is False
    assert not ChunkEdit.objects.exists()
    assert search(member, _kb, "copper telescope Brekke", "fulltext")[0]["chunk_id"] == museum["id"]

    # Deleting an applied edit gives the chunk its original text back, searchable again.
    member.patch(url, {"text": corrected, "disabled": True}, format="json")
    (edit,) = edits_of(member, document)
    assert edit["applied"] is True
    assert member.delete(f"/api/v1/chunk-edits/{edit['id']}/").status_code == 204
    restored = chunk_with(chunks_of(member, document), "telescope")
    assert (restored["text"], restored["disabled"], restored["edited"]) == (museum["text"], False, False)
    assert stored_terms(museum["id"]) == expected_terms(museum["text"])


def test_with_the_model_server_down_an_edit_is_a_503_and_changes_nothing(harbour) -> None:
    member, kb, document, model = harbour
    chunks = chunks_of(member, document)
    bakery, museum = chunk_with(chunks, "cardamom"), chunk_with(chunks, "telescope")
    assert member.patch(f"/api/v1/chunks/{bakery['id']}/", {"text": CORRECTED}, format="json").status_code == 200
    before = {
        chunk.pk: (chunk.text, chunk.disabled, [float(value) for value in chunk.embedding])
        for chunk in Chunk.objects.all()
    }
    edits_before = list(ChunkEdit.objects.values())
    # The registration now points at a closed port (the cache of model clients follows the edit).
    Provider.objects.filter(pk=model.provider_id).update(
        endpoint=f"http://127.0.0.1:{free_port()}", updated_at=timezone.now()
    )

    for method, url, body in [
        ("patch", f"/api/v1/chunks/{museum['id']}/", {"text": museum["text"] + " Restored in 2020."}),
        ("patch", f"/api/v1/chunks/{bakery['id']}/", {"revert": True}),
        ("delete", f"/api/v1/chunk-edits/{ChunkEdit.objects.get().pk}/", None),
    ]:
        response = getattr(member, method)(url, body, format="json")
        assert response.status_code == 503, (url, response.content)
        error = response.json()["error"]
        assert error["code"] == "model_unavailable"
        assert f"the embedding model {model.name} did not answer" in error["message"]
        assert "nothing was changed" in error["message"]
    after = {
        chunk.pk: (chunk.text, chunk.disabled, [float(value) for value in chunk.embedding])
        for chunk in Chunk.objects.all()
    }
    assert after == before
    assert list(ChunkEdit.objects.values()) == edits_before
    # Disabling needs no embedding: it still works.
    response = member.patch(f"/api/v1/chunks/{museum['id']}/", {"disabled": True}, format="json")
    assert response.status_code == 200
    assert search(member, kb, "copper telescope", "fulltext") == []


def test_an_edit_reaches_a_rebuild_under_way_and_a_build_storing_meanwhile(harbour) -> None:
    """A rebuild's generation built already takes a change too; a build that embedded before an
    edit was made stores the edit, embedded again under the document's lock."""
    member, kb, document, model = harbour
    KnowledgeBase.objects.filter(pk=kb.pk).update(
        rebuild_settings={
            "embedding_model_id": model.pk,
            "splitter": "headings",
            "chunk_size": 300,
            "chunk_overlap": 0,
            "chunk_headers": True,
        }
    )
    with connection.cursor() as cursor:  # the rebuild built this document already
        cursor.execute(
            "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, "
            "embedding, search_vector) SELECT knowledge_base_id, document_id, 2, ordinal, text, metadata, dims, "
            "embedding, search_vector FROM kb_chunk WHERE document_id = %s",
            [document.pk],
        )
    bakery = chunk_with(chunks_of(member, document), "cardamom")
    assert member.patch(f"/api/v1/chunks/{bakery['id']}/", {"text": CORRECTED}, format="json").status_code == 200
    next_bakery = Chunk.objects.get(document=document, generation=2, ordinal=bakery["ordinal"])
    (corrected_vector,) = embeddings_for(model).embed_documents([CORRECTED])
    assert next_bakery.text == CORRECTED
    assert cosine(next_bakery.embedding, corrected_vector) > 0.999
    assert stored_terms(next_bakery.pk) == expected_terms(CORRECTED)

    # A build embedded the museum's original; a member corrects it before the build stores.
    museum = Chunk.objects.get(document=document, generation=2, text__contains="telescope")
    drafts = [ChunkDraft(chunk.text, chunk.metadata) for chunk in Chunk.objects.filter(document=document, generation=1)]
    drafts.sort(key=lambda draft: draft.text != museum.text)  # any order: the museum's first
    vectors = embeddings_for(model).embed_documents([draft.text for draft in drafts])
    museum_corrected = museum.text + " Since 2020 it points south."
    ChunkEdit.objects.create(
        document=document,
        team=document.team,
        original_sha256=text_sha256(museum.text),
        original_text=museum.text,
        text=museum_corrected,
        disabled=True,
    )
    Document.objects.filter(pk=document.pk).update(dispatch_token=uuid.uuid4())
    _replace_chunks(Document.objects.get(pk=document.pk), 2, model, drafts, drafts, vectors)
    stored = Chunk.objects.get(document=document, generation=2, ordinal=0)
    (museum_vector,) = embeddings_for(model).embed_documents([museum_corrected])
    assert (stored.text, stored.disabled) == (museum_corrected, True)
    assert cosine(stored.embedding, museum_vector) > 0.999
    assert stored_terms(stored.pk) == expected_terms(museum_corrected)
    # The bakery's draft was embedded with its original text too: stored corrected, embedded again.
    assert (
        cosine(Chunk.objects.get(document=document, generation=2, text=CORRECTED).embedding, corrected_vector) > 0.999
    )


# --- who may: no model needed, the chunks are written directly ----------------------------------


def stored_chunk(document: Document, ordinal: int, text: str, metadata: dict[str, Any] | None = None) -> Chunk:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO kb_chunk (knowledge_base_id, document_id, generation, ordinal, text, metadata, dims, "
            "embedding, search_vector) VALUES (%s, %s, 1, %s, %s, %s::jsonb, 384, %s::vector, "
            "to_tsvector('simple', %s)) RETURNING id",
            [
                document.knowledge_base_id,
                document.pk,
                ordinal,
                text,
                json.dumps(metadata or {}),
                json.dumps([0.01] * 384),
                fulltext.index_text(text),
            ],
        )
        (chunk_id,) = cursor.fetchone()
    return Chunk.objects.get(pk=chunk_id)


@pytest.fixture
def stored(team) -> tuple[KnowledgeBase, Document, list[Chunk], ChunkEdit]:
    """A ready document of two chunks, one disabled by a member; its model is not running."""
    model = offline_embedding_on(team, f"http://127.0.0.1:{free_port()}")
    kb = kb_create(team=team, name="Stored", embedding_model=model)
    document = Document.objects.create(
        knowledge_base=kb,
        team=team,
        original_name="notes.txt",
        file="x/notes.txt",
        sha256="1" * 64,
        size_bytes=1,
        content_type="text",
        status=DocumentStatus.READY,
        chunk_count=2,
        built_generation=1,
    )
    chunks = [
        stored_chunk(document, 0, "Scanned: <script>window.__xss=1</script> the vault key.", {"page": 1, "ocr": True}),
        stored_chunk(document, 1, "The harbour clock runs four minutes fast.", {"page": 2}),
    ]
    Chunk.objects.filter(pk=chunks[1].pk).update(disabled=True)
    edit = ChunkEdit.objects.create(
        document=document,
        team=team,
        original_sha256=text_sha256(chunks[1].text),
        original_text=chunks[1].text,
        disabled=True,
    )
    return kb, document, chunks, edit


@pytest.mark.django_db
def test_another_team_finds_nothing_and_a_viewer_reads_but_cannot_edit(stored, team, other_team, outsider) -> None:
    _kb, document, chunks, edit = stored
    reads = [
        f"/api/v1/documents/{document.pk}/chunks/",
        f"/api/v1/documents/{document.pk}/chunk-edits/",
        f"/api/v1/chunks/{chunks[0].pk}/",
    ]
    writes = [
        ("patch", f"/api/v1/chunks/{chunks[0].pk}/", {"disabled": True}),
        ("patch", f"/api/v1/chunks/{chunks[1].pk}/", {"text": "Planted."}),
        ("delete", f"/api/v1/chunk-edits/{edit.pk}/", None),
    ]
    stranger = bearer_client(outsider, other_team)
    for url in reads:
        assert stranger.get(url).status_code == 404, url
    for method, url, body in writes:
        assert getattr(stranger, method)(url, body, format="json").status_code == 404, url

    viewer = bearer_client(member_of(team, Role.VIEWER), team)
    listed = viewer.get(reads[0]).json()["results"]
    assert [(chunk["ordinal"], chunk["disabled"]) for chunk in listed] == [(0, False), (1, True)]
    assert listed[0]["metadata"] == {"page": 1, "ocr": True}
    assert viewer.get(reads[1]).json()["results"][0]["applied"] is True
    assert viewer.get(reads[2]).json()["text"] == chunks[0].text
    for method, url, body in writes:
        response = getattr(viewer, method)(url, body, format="json")
        assert response.status_code == 403, url
        assert "members" in response.json()["error"]["message"]
    assert list(Chunk.objects.order_by("pk").values_list("text", "disabled")) == [
        (chunks[0].text, False),
        (chunks[1].text, True),
    ]
    assert ChunkEdit.objects.count() == 1


@pytest.mark.django_db
def test_the_document_page_shows_sections_escaped_text_and_forms_only_to_editors(
    stored, team, other_team, outsider
) -> None:
    kb, document, chunks, edit = stored
    url = f"/kb/{kb.pk}/documents/{document.pk}/"
    viewer = Client()
    viewer.force_login(member_of(team, Role.VIEWER))
    page = viewer.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "<script>window.__xss" not in html
    assert html.count('data-testid="section-place"') == 2  # page 1 and page 2
    assert 'data-testid="badge-ocr"' in html
    assert 'data-testid="badge-disabled"' in html
    assert 'data-testid="chunk-disable"' not in html
    assert 'data-testid="chunk-edit-save"' not in html
    post = viewer.post(f"{url}chunks/{chunks[0].pk}/", {"action": "disable"})
    assert post.status_code == 403
    assert viewer.post(f"{url}edits/{edit.pk}/delete/").status_code == 403
    assert not Chunk.objects.get(pk=chunks[0].pk).disabled

    editor = Client()
    editor.force_login(member_of(team, Role.MEMBER))
    html = editor.get(url).content.decode()
    assert 'data-testid="chunk-enable"' in html
    assert 'data-testid="chunk-disable"' in html
    # The documents table names each document with a link to this page.
    assert f'href="{url}"' in editor.get(f"/kb/{kb.pk}/").content.decode()
    response = editor.post(f"{url}chunks/{chunks[1].pk}/", {"action": "enable"})
    assert response.status_code == 302
    assert response["Location"].endswith(f"#chunk-{chunks[1].pk}")
    assert not Chunk.objects.get(pk=chunks[1].pk).disabled
    assert not ChunkEdit.objects.exists()
    # A correction needs the model, which is down here: said on the page, nothing changed.
    response = editor.post(f"{url}chunks/{chunks[0].pk}/", {"action": "save", "text": "The vault key."}, follow=True)
    assert "Nothing was changed: the embedding model" in response.content.decode()
    assert Chunk.objects.get(pk=chunks[0].pk).text == chunks[0].text

    stranger = Client()
    stranger.force_login(outsider)
    assert stranger.get(url).status_code == 404
    assert stranger.post(f"{url}chunks/{chunks[0].pk}/", {"action": "disable"}).status_code == 404
    assert stranger.post(f"{url}edits/{edit.pk}/delete/").status_code == 404
    assert not Chunk.objects.get(pk=chunks[0].pk).disabled


# --- the page in Chromium -------------------------------------------------------------------


def test_a_member_disables_and_corrects_chunks_on_the_document_page(
    team, xinference: XinferenceServer, celery_worker_process: str, live_asgi_url: str, browser: Any
) -> None:
    model: ModelRegistration = registration_launch(registration=offline_embedding_on(team, xinference.endpoint))
    kb = kb_create(
        team=team, name="Harbour", embedding_model=model, splitter="headings", chunk_size=300, chunk_overlap=0
    )
    document = ingested(kb, "harbour.md", HANDBOOK.encode())
    member = member_of(team, Role.MEMBER)
    context = signed_in_context(browser, live_asgi_url, member)
    page = context.new_page()

    page.goto(f"/kb/{kb.pk}/")
    page.get_by_test_id("document-name").click()
    page.get_by_test_id("document-title").wait_for()
    assert page.url.endswith(f"/kb/{kb.pk}/documents/{document.pk}/")
    assert page.get_by_test_id("chunk-total").inner_text() == "3"
    places = page.get_by_test_id("section-place").all_inner_texts()
    assert places == ["Harbour guide › Lighthouse", "Harbour guide › Bakery", "Harbour guide › Museum"]

    page.locator("[data-testid=chunk]", has_text="seventeen cats").get_by_test_id("chunk-disable").click()
    page.get_by_text("disabled: search no longer returns it").wait_for()
    bakery = page.locator("[data-testid=chunk]", has_text="cardamom")
    bakery.get_by_test_id("chunk-edit-open").click()
    correction = "Harbour guide > Bakery\n\nSaffron pretzels on Mondays, <b>fresh</b> from the oven."
    bakery.get_by_test_id("chunk-edit-text").fill(correction)
    bakery.get_by_test_id("chunk-edit-save").click()
    page.get_by_text("search finds it by its new text").wait_for()

    page.reload()
    lighthouse = page.locator("[data-testid=chunk]", has_text="seventeen cats")
    assert lighthouse.get_by_test_id("badge-disabled").is_visible()
    assert lighthouse.get_by_test_id("chunk-enable").is_visible()
    bakery = page.locator("[data-testid=chunk]", has_text="Saffron pretzels")
    assert bakery.get_by_test_id("chunk-text").inner_text() == correction
    assert bakery.locator("b").count() == 0  # shown as text, never as markup
    assert bakery.get_by_test_id("badge-edited").is_visible()
    assert not bakery.get_by_test_id("badge-disabled").is_visible()
    bakery.locator("summary", has_text="Original text").click()
    assert "cardamom buns" in bakery.get_by_test_id("chunk-original").inner_text()
    assert page.get_by_test_id("disabled-total").inner_text() == "1"
    assert page.get_by_test_id("applied-edits").inner_text() == "2"
    screenshot(page, "kb-document-chunks", markup_expected=True)
    hits = search(bearer_client(member, team), kb, "saffron pretzels", "hybrid")
    assert "Saffron pretzels" in hits[0]["text"]
    context.close()

    # At phone width nothing is wider than the screen.
    phone = signed_in_context(browser, live_asgi_url, member, phone=True)
    page = phone.new_page()
    page.goto(f"/kb/{kb.pk}/documents/{document.pk}/")
    page.get_by_test_id("chunk").first.wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "kb-document-chunks-phone", markup_expected=True)
    phone.close()
