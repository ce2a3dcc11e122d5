"""The evaluation pages: a knowledge base's sets, runs, drafts and forms, a set's history chart and
per-question diff, the held-rebuild banner, questions from hit testing and from a good chat
answer. Roles and team isolation with the Django test client; one Chromium run over a knowledge
base ingested by the real worker and scored with the real MiniLM on Xinference."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import Role, Team
from chat.models import Message
from chat.services import assistant_create, conversation_create
from evaluation.models import (
    EvaluationItem,
    EvaluationResult,
    EvaluationRun,
    EvaluationSet,
    ItemSource,
    ItemStatus,
    RunStatus,
)
from evaluation.services import evaluation_set_create, item_create, run_create, run_execute
from kb.models import Document, DocumentStatus, KnowledgeBase, RebuildGate
from kb.services import document_delete, documents_upload, kb_create
from models_registry.models import ModelKind, ModelRegistration
from realservices.offline_models import offline_models_on
from realservices.xinference import XinferenceServer, free_port
from tests.browser import screenshot, signed_in_context
from tests.conftest import member_of
from tests.test_kb import all_settled, embedding_model, wait_until
from tests.test_web_kb import client_for, csp_violations

TIDES_Q = "when are the tides biggest?"
ORCHID_Q = "how often should I water an orchid?"
HOSTILE = "<script>window.__xss=1</script>"


def ready_document(kb: KnowledgeBase, name: str) -> Document:
    """A document row only: these pages read names, nothing here searches."""
    return Document.objects.create(
        knowledge_base=kb,
        team_id=kb.team_id,
        original_name=name,
        sha256=hashlib.sha256(f"{kb.pk}/{name}".encode()).hexdigest(),
        size_bytes=1,
        content_type="text/plain",
        status=DocumentStatus.READY,
    )


def handbook_of(team: Team, name: str = "Handbook") -> KnowledgeBase:
    """A knowledge base on models nothing calls, with two ready documents."""
    _llm, embedding = offline_models_on(team, f"http://127.0.0.1:{free_port()}")
    kb = kb_create(team=team, name=name, embedding_model=embedding)
    ready_document(kb, "tides.txt")
    ready_document(kb, "orchids.txt")
    return kb


def asked_set(kb: KnowledgeBase, name: str = "Asked") -> EvaluationSet:
    evaluation_set = evaluation_set_create(kb=kb, name=name)
    item_create(evaluation_set=evaluation_set, data={"question": TIDES_Q, "expected_document": "tides.txt"})
    item_create(evaluation_set=evaluation_set, data={"question": ORCHID_Q, "expected_document": "orchids.txt"})
    return evaluation_set


def figures(recall_at_5: float) -> dict[str, float | None]:
    return {
        "recall@1": recall_at_5 / 2,
        "recall@5": recall_at_5,
        "recall@10": recall_at_5,
        "mrr@10": recall_at_5 * 0.75,
        "ndcg@10": recall_at_5 * 0.8,
        "answer_in_chunk@5": None,
        "latency_p50_ms": 12.0,
        "latency_p95_ms": 30.0,
    }


def finished_run(evaluation_set: EvaluationSet, recall_at_5: float, ranks: dict[str, int | None]) -> EvaluationRun:
    """A run as the worker leaves it, written directly (the Chromium test scores real ones)."""
    run = EvaluationRun.objects.create(
        team_id=evaluation_set.team_id,
        evaluation_set=evaluation_set,
        knowledge_base=evaluation_set.knowledge_base,
        status=RunStatus.DONE,
        progress=100,
        modes=["hybrid", "vector"],
        generation=1,
        metrics={"hybrid": figures(recall_at_5), "vector": figures(recall_at_5)},
        finished_at=timezone.now(),
    )
    for question, rank in ranks.items():
        expected = "tides.txt" if question == TIDES_Q else "orchids.txt"
        found = [{"document": expected, "chunk_id": 1, "text": f"The passage on {expected}."}] if rank else []
        noise = [{"document": f"{HOSTILE}.txt", "chunk_id": 2, "text": f"Noise {HOSTILE} here."}]
        EvaluationResult.objects.create(
            run=run,
            question=question,
            expected_documents=[expected],
            ranks={"hybrid": rank, "vector": rank},
            answer_found={"hybrid": None, "vector": None},
            retrieved={"hybrid": noise + found if rank and rank > 1 else found + noise, "vector": found},
        )
    return run


def good_answer(team: Team, kb: KnowledgeBase, owner: Any, *, feedback: int = 1, is_room: bool = False) -> Message:
    """A question and an answer citing tides.txt of `kb`, marked good unless told otherwise."""
    llm = ModelRegistration.objects.get(team=team, kind=ModelKind.LLM)  # handbook_of registered it
    assistant = assistant_create(team=team, name=f"Bot of {owner.username}", llm=llm)
    conversation = conversation_create(team=team, owner=owner, assistant=assistant, is_room=is_room)
    Message.objects.create(conversation=conversation, role="user", author=owner, content=TIDES_Q)
    citation = {"index": 1, "document_name": "tides.txt", "knowledge_base_id": kb.pk, "chunk_id": 1, "score": 0.9}
    return Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="At new and full moon [1].",
        citations=[citation],
        feedback=feedback,
    )


def held(kb: KnowledgeBase, reason: str) -> None:
    KnowledgeBase.objects.filter(pk=kb.pk).update(
        rebuild_gate=RebuildGate.HELD,
        rebuild_gate_reason=reason,
        rebuild_settings={
            "embedding_model_id": kb.embedding_model_id,
            "splitter": kb.splitter,
            "chunk_size": 700,
            "chunk_overlap": kb.chunk_overlap,
        },
    )


def jsonl_file(rows: list[dict[str, Any]], name: str = "questions.jsonl") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, "\n".join(json.dumps(row) for row in rows).encode(), "application/jsonl")


def flashes(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def evaluation_url(kb: KnowledgeBase, name: str = "web:kb-evaluation", *args: int) -> str:
    return reverse(name, args=[kb.pk, *args])


@pytest.fixture
def handbook(team) -> KnowledgeBase:
    return handbook_of(team)


@pytest.fixture
def asked(handbook) -> EvaluationSet:
    return asked_set(handbook)


# --- roles ------------------------------------------------------------------------------------

ADMIN_FORMS = ('data-testid="set-form"', 'data-testid="import-form"', 'data-testid="draft-form"')


@pytest.mark.django_db
def test_a_viewer_reads_every_page_but_gets_no_form(team, handbook, asked) -> None:
    finished_run(asked, 0.5, {TIDES_Q: None, ORCHID_Q: 1})
    finished_run(asked, 1.0, {TIDES_Q: 2, ORCHID_Q: 1})
    EvaluationItem.objects.create(
        team=team, evaluation_set=asked, question="drafted?", expected_documents=["tides.txt"], status=ItemStatus.DRAFT
    )
    viewer = client_for(member_of(team, Role.VIEWER))
    page = viewer.get(evaluation_url(handbook))
    assert page.status_code == 200
    html = page.content.decode()
    row = html.split('data-testid="eval-set-row"', 1)[1].split("</tr>", 1)[0]
    assert "Asked" in row
    assert 'data-testid="eval-set-accepted">2</td>' in row
    assert 'data-testid="eval-set-drafts">1</td>' in row
    assert "Hybrid <strong>1.000</strong>" in row
    assert 'data-testid="metric-chart"' in html
    assert "drafted?" in html
    for form in (*ADMIN_FORMS, 'data-testid="run-form"', 'data-testid="draft-accept"'):
        assert form not in html, form
    set_page = viewer.get(evaluation_url(handbook, "web:evaluation-set", asked.pk))
    assert set_page.status_code == 200
    assert b'data-testid="diff-change"' in set_page.content
    assert b'data-testid="item-delete"' not in set_page.content
    kb_page = viewer.get(reverse("web:kb-detail", args=[handbook.pk])).content.decode()
    assert f'href="{evaluation_url(handbook)}"' in kb_page
    assert "eval-add-template" not in kb_page
    # What the page does not offer, a crafted request cannot do either.
    assert (
        viewer.post(evaluation_url(handbook, "web:evaluation-run-start"), {"evaluation_set": asked.pk}).status_code
        == 403
    )
    assert viewer.post(evaluation_url(handbook, "web:evaluation-set-create"), {"name": "Mine"}).status_code == 403
    assert EvaluationRun.objects.filter(status=RunStatus.QUEUED).count() == 0
    assert not EvaluationSet.objects.filter(name="Mine").exists()

    member_html = client_for(member_of(team, Role.MEMBER)).get(evaluation_url(handbook)).content.decode()
    assert 'data-testid="run-form"' in member_html
    assert not any(form in member_html for form in ADMIN_FORMS)
    admin = client_for(member_of(team, Role.ADMIN))
    admin_html = admin.get(evaluation_url(handbook)).content.decode()
    assert all(form in admin_html for form in ADMIN_FORMS)
    assert 'data-testid="draft-accept"' in admin_html
    assert "eval-add-template" in admin.get(reverse("web:kb-detail", args=[handbook.pk])).content.decode()


@pytest.mark.django_db
def test_another_teams_ids_are_not_found_in_any_url_or_field(team, other_team, handbook, asked) -> None:
    victim_item = asked.items.get(question=TIDES_Q)
    victim_run = finished_run(asked, 1.0, {TIDES_Q: 1})
    victim_answer = good_answer(team, handbook, member_of(team, Role.ADMIN))
    held(handbook, "held for a reason")
    outsider = member_of(other_team, Role.OWNER)
    theirs = handbook_of(other_team, "Theirs")
    mine = asked_set(theirs, "Mine")
    my_item = mine.items.first()
    assert my_item is not None
    my_runs = [finished_run(mine, 1.0, {TIDES_Q: 1}), finished_run(mine, 1.0, {TIDES_Q: 1})]
    my_answer = good_answer(other_team, theirs, outsider)
    victim_document = handbook.documents.get(original_name="tides.txt")
    my_document = theirs.documents.get(original_name="tides.txt")
    client = client_for(outsider)

    def upload() -> SimpleUploadedFile:
        return jsonl_file([{"question": "q?", "expected_document": "tides.txt"}])

    gets = [
        evaluation_url(handbook),
        evaluation_url(handbook, "web:evaluation-set", asked.pk),
        evaluation_url(theirs, "web:evaluation-set", asked.pk),
        evaluation_url(theirs, "web:evaluation-set", mine.pk) + f"?before={victim_run.pk}&after={my_runs[1].pk}",
        evaluation_url(theirs, "web:evaluation-set", mine.pk) + f"?before={my_runs[0].pk}&after={victim_run.pk}",
    ]
    for url in gets:
        assert client.get(url).status_code == 404, url
    posts: list[tuple[str, dict[str, Any]]] = [
        (evaluation_url(handbook, "web:evaluation-set-create"), {"name": "Planted"}),
        (reverse("web:kb-rebuild-decision", args=[handbook.pk]), {"decision": "keep"}),
        (evaluation_url(handbook, "web:evaluation-import"), {"evaluation_set": mine.pk, "file": upload()}),
        (evaluation_url(theirs, "web:evaluation-import"), {"evaluation_set": asked.pk, "file": upload()}),
        (evaluation_url(handbook, "web:evaluation-run-start"), {"evaluation_set": asked.pk, "modes": ["hybrid"]}),
        (evaluation_url(theirs, "web:evaluation-run-start"), {"evaluation_set": asked.pk, "modes": ["hybrid"]}),
        (evaluation_url(handbook, "web:evaluation-draft"), {"evaluation_set": asked.pk, "documents": [my_document.pk]}),
        (evaluation_url(theirs, "web:evaluation-draft"), {"evaluation_set": asked.pk, "documents": [my_document.pk]}),
        (
            evaluation_url(theirs, "web:evaluation-draft"),
            {"evaluation_set": mine.pk, "documents": [victim_document.pk]},
        ),
        (
            evaluation_url(handbook, "web:evaluation-from-hit"),
            {"evaluation_set": asked.pk, "question": "q?", "expected_document": "tides.txt"},
        ),
        (
            evaluation_url(theirs, "web:evaluation-from-hit"),
            {"evaluation_set": asked.pk, "question": "q?", "expected_document": "tides.txt"},
        ),
        (evaluation_url(handbook, "web:evaluation-item-accept", victim_item.pk), {}),
        (evaluation_url(handbook, "web:evaluation-item-delete", victim_item.pk), {}),
        (evaluation_url(theirs, "web:evaluation-item-accept", victim_item.pk), {}),
        (evaluation_url(theirs, "web:evaluation-item-delete", victim_item.pk), {}),
        (evaluation_url(handbook, "web:evaluation-item-delete", my_item.pk), {}),
        (reverse("web:message-evaluation", args=[victim_answer.pk]), {"evaluation_set": mine.pk}),
        (reverse("web:message-evaluation", args=[my_answer.pk]), {"evaluation_set": asked.pk}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 404, (url, data)
    assert sorted(asked.items.values_list("question", flat=True)) == sorted([TIDES_Q, ORCHID_Q])
    assert sorted(mine.items.values_list("question", flat=True)) == sorted([TIDES_Q, ORCHID_Q])
    assert not EvaluationSet.objects.filter(name="Planted").exists()
    assert not EvaluationRun.objects.exclude(status=RunStatus.DONE).exists()
    assert KnowledgeBase.objects.get(pk=handbook.pk).rebuild_gate == RebuildGate.HELD
    assert EvaluationItem.objects.filter(pk=my_item.pk).exists()

    anonymous = Client()
    for url in gets[:2]:
        assert anonymous.get(url)["Location"].startswith(reverse("web:login"))


# --- sets, imports, runs, drafts --------------------------------------------------------------


@pytest.mark.django_db
def test_an_admin_creates_a_set_and_imports_questions_through_the_page(team, handbook) -> None:
    client = client_for(member_of(team, Role.ADMIN))
    created = client.post(
        evaluation_url(handbook, "web:evaluation-set-create"),
        {"name": "Support", "description": "What customers ask.", "gate_threshold": "0.05"},
        follow=True,
    )
    support = EvaluationSet.objects.get(knowledge_base=handbook, name="Support")
    assert (support.description, support.gate_threshold) == ("What customers ask.", 0.05)
    assert created.redirect_chain[-1][0] == evaluation_url(handbook) + f"#set-{support.pk}"
    assert "Evaluation set Support created: import or add questions." in flashes(created)
    again = client.post(evaluation_url(handbook, "web:evaluation-set-create"), {"name": "Support"}, follow=True)
    assert again.status_code == 200
    assert any("already has a set named 'Support'" in text for text in flashes(again))
    assert "already has a set named" in again.content.decode()
    odd = client.post(evaluation_url(handbook, "web:evaluation-set-create"), {"name": "X", "gate_threshold": "a lot"})
    assert odd.status_code == 302
    assert not EvaluationSet.objects.filter(name="X").exists()

    rows: list[dict[str, Any]] = [
        {"question": TIDES_Q, "expected_document": "tides.txt", "expected_answer": "full moon"},
        {"question": ORCHID_Q, "expected_document": ["orchids.txt"]},
    ]
    imported = client.post(
        evaluation_url(handbook, "web:evaluation-import"),
        {"evaluation_set": support.pk, "file": jsonl_file(rows)},
        follow=True,
    )
    assert "2 questions imported into Support." in flashes(imported)
    assert list(support.items.order_by("pk").values_list("question", "source")) == [
        (TIDES_Q, ItemSource.IMPORT),
        (ORCHID_Q, ItemSource.IMPORT),
    ]
    assert 'data-testid="eval-set-accepted">2</td>' in imported.content.decode()

    bad = [
        {"question": "and this?", "expected_document": "tides.txt"},
        {"question": "b?", "expected_document": "x.pdf"},
    ]
    refused = client.post(
        evaluation_url(handbook, "web:evaluation-import"),
        {"evaluation_set": support.pk, "file": jsonl_file(bad)},
        follow=True,
    )
    assert refused.status_code == 200
    assert any("line 2: unknown document 'x.pdf'" in text for text in flashes(refused))
    assert support.items.count() == 2
    csv = SimpleUploadedFile("more.csv", b"question,expected_document\nwhich plant needs light?,orchids.txt\n")
    client.post(evaluation_url(handbook, "web:evaluation-import"), {"evaluation_set": support.pk, "file": csv})
    assert support.items.count() == 3
    missing = client.post(
        evaluation_url(handbook, "web:evaluation-import"), {"evaluation_set": support.pk}, follow=True
    )
    assert "Choose a JSONL or CSV file of questions to import." in flashes(missing)


@pytest.mark.django_db
def test_a_member_starts_a_run_and_an_admin_reviews_the_drafts(team, handbook, asked) -> None:
    member = client_for(member_of(team, Role.MEMBER))
    started = member.post(
        evaluation_url(handbook, "web:evaluation-run-start"),
        {"evaluation_set": asked.pk, "modes": ["hybrid", "vector"], "top_k": "5"},
        follow=True,
    )
    run = EvaluationRun.objects.get(evaluation_set=asked)
    assert (run.status, run.modes, run.top_k, run.trigger) == (RunStatus.QUEUED, ["hybrid", "vector"], 5, "manual")
    assert f"Run #{run.pk} of Asked is queued." in flashes(started)
    html = started.content.decode()
    run_row = html.split(f'data-run-id="{run.pk}"', 1)[1].split("</tr>", 1)[0]
    assert 'data-active="1"' in run_row
    assert ">Queued</span>" in run_row
    assert ">0%</span>" in run_row
    none = member.post(evaluation_url(handbook, "web:evaluation-run-start"), {"evaluation_set": asked.pk}, follow=True)
    assert any("modes: choose one or more" in text for text in flashes(none))
    assert EvaluationRun.objects.count() == 1

    drafts = [
        EvaluationItem.objects.create(
            team=team,
            evaluation_set=asked,
            question=question,
            expected_documents=["tides.txt"],
            status=ItemStatus.DRAFT,
            source=ItemSource.DRAFTED,
        )
        for question in ("is the tide high at noon?", f"{HOSTILE} odd draft")
    ]
    accept = evaluation_url(handbook, "web:evaluation-item-accept", drafts[0].pk)
    assert member.post(accept).status_code == 403
    admin = client_for(member_of(team, Role.ADMIN))
    page = admin.get(evaluation_url(handbook)).content.decode()
    assert page.count('data-testid="eval-draft"') == 2
    assert HOSTILE not in page
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt; odd draft" in page
    assert admin.post(accept).status_code == 302
    assert EvaluationItem.objects.get(pk=drafts[0].pk).status == ItemStatus.ACCEPTED
    deleted = admin.post(evaluation_url(handbook, "web:evaluation-item-delete", drafts[1].pk), follow=True)
    assert "The question was deleted." in flashes(deleted)
    assert not EvaluationItem.objects.filter(pk=drafts[1].pk).exists()
    assert 'data-testid="eval-drafts-empty"' in deleted.content.decode()

    # Drafting needs the team's default chat model; without one the page says so.
    tides = handbook.documents.get(original_name="tides.txt")
    drafting = admin.post(
        evaluation_url(handbook, "web:evaluation-draft"),
        {"evaluation_set": asked.pk, "documents": [tides.pk], "per_document": "2"},
        follow=True,
    )
    assert any("no default chat model" in text for text in flashes(drafting))


# --- the set's page: history and diff ---------------------------------------------------------


@pytest.mark.django_db
def test_the_set_page_charts_the_history_and_diffs_two_runs_worse_first(team, handbook, asked) -> None:
    first = finished_run(asked, 0.5, {TIDES_Q: 1, ORCHID_Q: 3})
    second = finished_run(asked, 0.5, {TIDES_Q: None, ORCHID_Q: 1})
    client = client_for(member_of(team, Role.VIEWER))
    response = client.get(evaluation_url(handbook, "web:evaluation-set", asked.pk))
    html = response.content.decode()
    chart = html.split('data-testid="metric-chart"', 1)[1].split("</svg>", 1)[0]
    for metric in ("recall@1", "recall@5", "mrr@10", "ndcg@10", "answer_in_chunk@5 (not measured)"):
        assert metric in chart
    assert chart.count("<polyline") == 4  # answer_in_chunk@5 was not measured
    assert ">1</text>" in chart
    assert ">0</text>" in chart
    diff = response.context["diff"]
    assert (diff["before"], diff["after"], diff["mode"]) == (first, second, "hybrid")
    questions = [change.question for change in diff["changes"]]
    assert questions == [TIDES_Q, ORCHID_Q]  # worse first
    first_change = html.split('data-testid="diff-change"', 1)[1].split('data-testid="diff-change"', 1)[0]
    assert first_change.startswith(' data-worse="1"')
    assert 'data-testid="diff-worse"' in first_change
    assert '<span data-testid="diff-rank-before">1</span>' in first_change
    assert '<span data-testid="diff-rank-after">not found</span>' in first_change
    assert "The passage on tides.txt." in first_change
    assert HOSTILE not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;.txt" in html

    swapped = client.get(
        evaluation_url(handbook, "web:evaluation-set", asked.pk) + f"?before={second.pk}&after={first.pk}&mode=vector"
    )
    assert swapped.context["diff"]["mode"] == "vector"
    assert [change.worse for change in swapped.context["diff"]["changes"]] == [True, False]
    assert swapped.context["diff"]["changes"][0].question == ORCHID_Q
    unknown = evaluation_url(handbook, "web:evaluation-set", asked.pk) + f"?before={second.pk + 100}"
    assert client.get(unknown).status_code == 404


# --- the held rebuild -------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_held_rebuild_shows_its_reason_and_an_admin_keeps_the_live_generation(team, handbook) -> None:
    held(handbook, "<b>recall@5 (hybrid) fell from 0.900 to 0.500</b> against the live generation")
    detail = reverse("web:kb-detail", args=[handbook.pk])
    decide = reverse("web:kb-rebuild-decision", args=[handbook.pk])
    viewer_html = client_for(member_of(team, Role.VIEWER)).get(detail).content.decode()
    assert 'data-testid="rebuild-held"' in viewer_html
    assert "&lt;b&gt;recall@5 (hybrid) fell from 0.900 to 0.500&lt;/b&gt;" in viewer_html
    assert 'data-testid="rebuild-decision"' not in viewer_html
    member = client_for(member_of(team, Role.MEMBER))
    assert 'data-testid="rebuild-held"' in member.get(evaluation_url(handbook)).content.decode()
    assert member.post(decide, {"decision": "keep"}).status_code == 403

    admin = client_for(member_of(team, Role.ADMIN))
    admin_html = admin.get(detail).content.decode()
    assert 'data-testid="rebuild-swap"' in admin_html
    assert 'data-testid="rebuild-keep"' in admin_html
    # Decided from the evaluation page's banner: back there.
    kept = admin.post(decide, {"decision": "keep", "next": evaluation_url(handbook)}, follow=True)
    assert kept.redirect_chain[-1][0] == evaluation_url(handbook)
    assert "The live generation stays; the rebuild was dropped." in flashes(kept)
    assert 'data-testid="rebuild-held"' not in kept.content.decode()
    kb = KnowledgeBase.objects.get(pk=handbook.pk)
    assert (kb.rebuild_gate, kb.rebuild_gate_reason, kb.rebuilding, kb.generation) == ("", "", False, 1)
    again = admin.post(decide, {"decision": "keep"}, follow=True)
    assert again.status_code == 200
    assert any("no rebuild of this knowledge base is held" in text for text in flashes(again))
    outside = admin.post(decide, {"decision": "keep", "next": "https://elsewhere.example/"})
    assert outside["Location"] == detail


# --- questions from hit testing and from chat ----------------------------------------------


@pytest.mark.django_db
def test_an_admin_adds_a_hit_testing_result_to_a_set(team, handbook, asked) -> None:
    url = evaluation_url(handbook, "web:evaluation-from-hit")
    data = {
        "evaluation_set": asked.pk,
        "question": "  which moon makes spring tides? ",
        "expected_document": "tides.txt",
    }
    member = client_for(member_of(team, Role.MEMBER))
    assert member.post(url, data, headers={"Accept": "application/json"}).status_code == 403
    admin = client_for(member_of(team, Role.ADMIN))
    template = admin.get(reverse("web:kb-detail", args=[handbook.pk])).content.decode().split("eval-add-template", 1)[1]
    assert f'<option value="{asked.pk}">Asked</option>' in template
    added = admin.post(url, data, headers={"Accept": "application/json"})
    assert added.status_code == 201
    assert added.json()["message"] == "Added to Asked."
    item = EvaluationItem.objects.get(pk=added.json()["item"])
    assert (item.question, item.expected_documents, item.source, item.status) == (
        "which moon makes spring tides?",
        ["tides.txt"],
        ItemSource.HIT_TEST,
        ItemStatus.ACCEPTED,
    )
    unknown = admin.post(url, {**data, "expected_document": "gone.txt"}, headers={"Accept": "application/json"})
    assert unknown.status_code == 400
    assert "unknown document 'gone.txt'" in unknown.json()["error"]["message"]
    plain = admin.post(url, {**data, "question": "and without script?"}, follow=True)
    assert plain.redirect_chain[-1][0] == reverse("web:kb-detail", args=[handbook.pk]) + "#hit-testing"
    assert "Added to Asked." in flashes(plain)
    assert asked.items.filter(source=ItemSource.HIT_TEST).count() == 2


@pytest.mark.django_db
def test_an_admin_adds_a_good_chat_answer_to_a_set_of_a_knowledge_base_it_cites(team, handbook, asked) -> None:
    admin_user = member_of(team, Role.ADMIN)
    answer = good_answer(team, handbook, admin_user, feedback=0, is_room=True)
    page_url = reverse("web:conversation", args=[answer.conversation_id])
    admin = client_for(admin_user)
    control = admin.get(page_url).content.decode().split('data-testid="eval-add-message"', 1)[1].split("</form>")[0]
    assert control.startswith(" hidden>")  # shown by chat.js once the answer is marked good
    assert f'<option value="{asked.pk}">Handbook · Asked</option>' in control
    add = reverse("web:message-evaluation", args=[answer.pk])
    refused = admin.post(add, {"evaluation_set": asked.pk}, follow=True)
    assert any("marked good" in text for text in flashes(refused))

    Message.objects.filter(pk=answer.pk).update(feedback=1)
    fragment = admin.get(reverse("web:message", args=[answer.pk])).content.decode()
    assert 'data-testid="eval-add-message">' in fragment
    member = member_of(team, Role.MEMBER)
    assert 'data-testid="eval-add-message"' not in client_for(member).get(page_url).content.decode()
    assert client_for(member).post(add, {"evaluation_set": asked.pk}).status_code == 403
    added = admin.post(add, {"evaluation_set": asked.pk}, follow=True)
    assert added.redirect_chain[-1][0] == f"{page_url}#message-{answer.pk}"
    assert "The question behind this answer was added to Asked." in flashes(added)
    item = asked.items.get(source=ItemSource.CHAT)
    assert (item.question, item.expected_documents) == (TIDES_Q, ["tides.txt"])


# --- Chromium: a real run, read as a person reads it ------------------------------------------

browser_db = pytest.mark.django_db(transaction=True)

PAGES = {
    "lighthouse.txt": "The lighthouse keeper of Vardø feeds seventeen cats every morning at dawn.",
    "sourdough.txt": "A sourdough starter is flour and water fermented by wild yeast; feed it twice a day.",
    "tides.txt": "Spring tides happen at new and full moon, when the sun and the moon pull in line.",
}
QUESTIONS = [
    ("how many cats does the man at the light tower look after?", "lighthouse.txt", "seventeen cats"),
    ("my bread starter, how often should I give it food", "sourdough.txt", "twice a day"),
    ("why are some high waters bigger than others", "tides.txt", "new and full moon"),
]


@pytest.fixture
def scored(team, xinference: XinferenceServer, celery_worker_process: str) -> dict[str, Any]:
    """Three small pages ingested by the worker, a set of three questions, and two real runs:
    the second after the lighthouse page was deleted, so its question got worse."""
    kb = kb_create(team=team, name="Household", embedding_model=embedding_model(team, xinference.endpoint))
    documents_upload(kb=kb, uploads=[(io.BytesIO(text.encode()), name) for name, text in PAGES.items()])
    wait_until(lambda: all_settled(list(kb.documents.values_list("pk", flat=True))))
    assert kb.documents.filter(status=DocumentStatus.READY).count() == len(PAGES)
    evaluation_set = evaluation_set_create(kb=kb, name="Household questions")
    for question, document, answer in QUESTIONS:
        item_create(
            evaluation_set=evaluation_set,
            data={"question": question, "expected_document": document, "expected_answer": answer},
        )
    modes = ["hybrid", "vector", "fulltext"]
    first = run_execute(run_id=run_create(evaluation_set=evaluation_set, modes=modes, top_k=10).pk)
    document_delete(document=kb.documents.get(original_name="lighthouse.txt"))
    second = run_execute(run_id=run_create(evaluation_set=evaluation_set, modes=modes, top_k=10).pk)
    for run in (first, second):
        assert run is not None
        assert run.status == RunStatus.DONE, run.error
    return {"kb": kb, "set": evaluation_set, "runs": [first, second]}


@browser_db
def test_the_evaluation_page_after_real_runs_reads_as_figures_and_a_chart(
    team, scored: dict[str, Any], live_asgi_url: str, browser: Any
) -> None:
    kb, evaluation_set, (first, second) = scored["kb"], scored["set"], scored["runs"]
    admin = member_of(team, Role.ADMIN)
    context = signed_in_context(browser, live_asgi_url, admin)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"/kb/{kb.pk}/")
    page.get_by_test_id("evaluation-link").click()
    page.get_by_test_id("evaluation-title").wait_for()
    page.reload()
    page.get_by_test_id("eval-runs").wait_for()

    chart = page.get_by_test_id("metric-chart")
    assert chart.count() == 1
    chart_text = chart.text_content() or ""
    for metric in ("recall@1", "recall@5", "mrr@10", "ndcg@10", "answer_in_chunk@5"):
        assert metric in chart_text
    assert chart.locator("polyline").count() == 5
    assert chart.locator("circle").count() == 10  # two runs, five metrics

    rows = page.get_by_test_id("eval-run")
    assert rows.count() == 2
    latest = rows.first
    assert latest.get_attribute("data-run-id") == str(second.pk)
    assert latest.get_by_test_id("run-status").inner_text() == "Done"
    for mode in ("hybrid", "vector", "fulltext"):
        cells = latest.locator(f"tr[data-mode={mode}] td").all_inner_texts()
        shown = dict(zip(["recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"], cells, strict=False))
        for metric, text in shown.items():
            assert text == f"{second.metrics[mode][metric]:.3f}", (mode, metric, text)
    set_row = page.get_by_test_id("eval-set-row")
    assert set_row.get_by_test_id("eval-set-accepted").inner_text() == "3"
    assert (
        f"Hybrid {second.metrics['hybrid']['recall@5']:.3f}" in set_row.get_by_test_id("eval-set-recall").inner_text()
    )
    # The lighthouse page is gone: its question is no longer found, and the run says it regressed.
    assert second.metrics["hybrid"]["recall@5"] < first.metrics["hybrid"]["recall@5"]
    assert latest.get_by_test_id("run-regressed").is_visible()
    screenshot(page, "evaluation")

    page.get_by_test_id("eval-set-link").click()
    page.get_by_test_id("set-title").wait_for()
    page_url_of_set = f"/kb/{kb.pk}/evaluation/sets/{evaluation_set.pk}/"
    assert page.url.endswith(page_url_of_set)
    change = page.get_by_test_id("diff-change").first
    assert change.get_by_test_id("diff-question").inner_text() == QUESTIONS[0][0]
    assert change.get_by_test_id("diff-worse").is_visible()
    assert change.get_by_test_id("diff-rank-after").inner_text() == "not found"
    assert "lighthouse.txt" in change.get_by_test_id("diff-before-chunks").inner_text()
    assert page.get_by_test_id("diff-before").input_value() == str(first.pk)
    screenshot(page, "evaluation-set")

    # Hit testing on the knowledge base's page adds a result to the set.
    page.goto(f"/kb/{kb.pk}/")
    page.fill("[data-testid=search-query]", "when do spring tides come?")
    page.get_by_test_id("search-submit").click()
    hit = page.locator("[data-testid=hit]", has_text="Spring tides").first
    hit.get_by_test_id("eval-add-submit").click()
    expect(hit.get_by_test_id("eval-add-status")).to_have_text(f"Added to {evaluation_set.name}.")
    screenshot(page, "kb-hit-added-to-set")
    added = evaluation_set.items.get(source=ItemSource.HIT_TEST)
    assert (added.question, added.expected_documents) == ("when do spring tides come?", ["tides.txt"])

    # A run in progress: the page follows it and shows its figures once the worker is done.
    queued = run_create(evaluation_set=evaluation_set, modes=["fulltext"], top_k=5)
    page.goto(f"/kb/{kb.pk}/evaluation/")
    row = page.locator(f'[data-testid=eval-run][data-run-id="{queued.pk}"]')
    assert row.get_by_test_id("run-status").inner_text() == "Queued"
    assert row.get_by_test_id("run-percent").inner_text() == "0%"
    run_execute(run_id=queued.pk)  # what the worker does, here in the foreground
    expect(row.get_by_test_id("run-status")).to_have_text("Done", timeout=30_000)
    expect(row.locator("tr[data-mode=fulltext] td").first).not_to_be_empty()
    assert row.get_by_test_id("run-percent").count() == 0
    assert csp_violations(console) == []
    context.close()

    phone = signed_in_context(browser, live_asgi_url, admin, phone=True)
    page = phone.new_page()
    for path, name in ((f"/kb/{kb.pk}/evaluation/", "evaluation-phone"), (page_url_of_set, "evaluation-set-phone")):
        page.goto(path)
        page.get_by_test_id("eval-runs").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
        screenshot(page, name)
    phone.close()
