"""Evaluation end to end: sets imported through the API, runs scored by the real worker with the
real embedding model (all-MiniLM-L6-v2 on Xinference) and checked against ranks computed here from
the search API, the rebuild gate (held when it ranks worse, swapped when not), kb_eval's exit
code, runs after a large import, and bad imports refused with the line."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db.models import Sum
from rest_framework.test import APIClient

from accounts.models import Role, Usage
from chat.models import Message
from chat.services import assistant_create, conversation_create
from evaluation.drafting import parse_draft
from evaluation.metrics import answer_found, first_rank, ndcg, percentile
from evaluation.models import EvaluationRun, RunTrigger
from integrations.models import Webhook, WebhookDelivery
from kb.models import Document, KnowledgeBase
from models_registry.models import ModelRegistration, Provider
from models_registry.services import registration_launch, team_defaults_set
from realservices.offline_models import register_offline_llm
from tests.conftest import bearer_client, member_of
from tests.test_kb import all_settled, embedding_model, upload, wait_until

PAGES = {
    "lighthouse.txt": "The lighthouse keeper of Vardø feeds seventeen cats every morning at dawn. "
    "The lamp is lit at dusk and the fog horn sounds when visibility falls below one nautical mile.",
    "sourdough.txt": "A sourdough starter is flour and water fermented by wild yeast. Feed the starter "
    "twice a day and bake when it has doubled; proof the shaped loaf overnight in the fridge.",
    "bicycle.txt": "To fix a flat tyre, lever the tyre off the rim, find the puncture by pumping the "
    "tube under water, roughen the rubber and press on a patch with vulcanising glue.",
    "tides.txt": "Spring tides happen at new and full moon, when the sun and the moon pull in line; "
    "neap tides come at the quarter moons and have the smallest range between high and low water.",
    "taxes.txt": "Freelancers file the annual return by the end of April and pay the balance due; "
    "keep receipts for seven years in case the tax office asks for them.",
    "orchids.txt": "Water a moth orchid once a week by soaking the pot for ten minutes, let it drain, "
    "and keep it in bright indirect light; never let water stand in the crown of the leaves.",
}
QUESTIONS: list[dict[str, Any]] = [
    {"question": "how many cats does the man at the light tower look after?", "expected_document": "lighthouse.txt"},
    {"question": "my bread starter, how often should I give it food", "expected_document": "sourdough.txt"},
    {"question": "got a puncture on my bike, what do I do", "expected_document": "bicycle.txt"},
    {
        "question": "why are some high waters bigger than others",
        "expected_document": "tides.txt",
        "expected_answer": "new and full moon",
    },
    {
        "question": "how long must I hold on to my expense slips?",
        "expected_document": "taxes.txt",
        "expected_answer": "seven years",
    },
    {"question": "watering schedule for phalaenopsis", "expected_document": ["orchids.txt"]},
]
MODES = ["hybrid", "vector", "fulltext"]

pytestmark = pytest.mark.django_db(transaction=True)


def jsonl(rows: list[dict]) -> io.BytesIO:
    handle = io.BytesIO("\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode())
    handle.name = "questions.jsonl"
    return handle


@pytest.fixture
def world(team, xinference, celery_worker):
    """A knowledge base of the pages above, ingested by the worker, with an imported set."""
    model = embedding_model(team, xinference.endpoint)
    admin = member_of(team, Role.ADMIN)
    client = bearer_client(admin, team)
    created = client.post("/api/v1/knowledge-bases/", {"name": "Household", "embedding_model": model.pk}, format="json")
    kb = KnowledgeBase.objects.get(pk=created.json()["id"])
    ids = [item["id"] for item in upload(client, kb, {n: t.encode() for n, t in PAGES.items()}).json()["documents"]]
    wait_until(lambda: all_settled(ids))
    evaluation_set = client.post(f"/api/v1/knowledge-bases/{kb.pk}/evaluation-sets/", {"name": "Asked"}, format="json")
    assert evaluation_set.status_code == 201, evaluation_set.json()
    set_id = evaluation_set.json()["id"]
    imported = client.post(f"/api/v1/evaluation-sets/{set_id}/items/", {"file": jsonl(QUESTIONS)}, format="multipart")
    assert imported.status_code == 201, imported.json()
    assert len(imported.json()) == len(QUESTIONS)
    return client, kb, set_id


def finished_run(client: APIClient, run_id: int, timeout: float = 180) -> dict:
    wait_until(lambda: client.get(f"/api/v1/evaluation-runs/{run_id}/").json()["status"] in ("done", "failed"), timeout)
    run = client.get(f"/api/v1/evaluation-runs/{run_id}/").json()
    assert run["status"] == "done", run
    return run


def start_run(client: APIClient, set_id: int, **body: object) -> dict:
    response = client.post(f"/api/v1/evaluation-sets/{set_id}/runs/", body or {"modes": MODES}, format="json")
    assert response.status_code == 202, response.json()
    return finished_run(client, response.json()["id"])


def test_a_run_scores_every_mode_as_the_search_api_ranks_the_same_questions(world) -> None:
    client, kb, set_id = world
    run = start_run(client, set_id, modes=MODES, top_k=10)
    assert (run["progress"], run["trigger"], set(run["metrics"])) == (100, "manual", set(MODES))
    assert [item["question"] for item in run["items"]] == [row["question"] for row in QUESTIONS]
    for mode in MODES:
        ranks, found = [], []
        for row, item in zip(QUESTIONS, run["items"], strict=True):
            hits = client.post(
                f"/api/v1/knowledge-bases/{kb.pk}/search/",
                {"query": row["question"], "mode": mode, "top_k": 10},
                format="json",
            ).json()["results"]
            names = list(dict.fromkeys(hit["document_name"] for hit in hits))
            expected = row["expected_document"]
            expected = [expected] if isinstance(expected, str) else expected
            rank = next((index for index, name in enumerate(names, 1) if name in expected), None)
            assert item["ranks"][mode] == rank, (mode, row["question"])
            ranks.append(rank)
            if row.get("expected_answer"):
                found.append(any(row["expected_answer"] in hit["text"] for hit in hits[:5]))
        metrics = run["metrics"][mode]
        assert metrics["recall@1"] == pytest.approx(sum(rank == 1 for rank in ranks) / len(ranks), abs=1e-4)
        assert metrics["recall@5"] == pytest.approx(
            sum(bool(rank and rank <= 5) for rank in ranks) / len(ranks), abs=1e-4
        )
        mrr = sum(1 / rank for rank in ranks if rank and rank <= 10) / len(ranks)
        assert metrics["mrr@10"] == pytest.approx(mrr, abs=1e-4)
        assert metrics["answer_in_chunk@5"] == pytest.approx(sum(found) / len(found), abs=1e-4)
        assert metrics["latency_p95_ms"] >= metrics["latency_p50_ms"] > 0
    # Natural questions on six distinct pages: meaning search finds most of them first.
    assert run["metrics"]["vector"]["recall@5"] >= 0.8

    # kb_eval runs in the foreground; nothing changed, so nothing regressed: exit 0, the table printed.
    out = io.StringIO()
    call_command("kb_eval", str(kb.pk), "--mode", "vector", stdout=out, stderr=io.StringIO())
    assert "| vector |" in out.getvalue()
    assert "recall@5" in out.getvalue()

    # A page deleted: its question is no longer found, recall falls past the threshold, exit 1.
    lighthouse = Document.objects.get(knowledge_base=kb, original_name="lighthouse.txt")
    assert client.delete(f"/api/v1/documents/{lighthouse.pk}/").status_code == 204
    errors = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("kb_eval", str(kb.pk), "--mode", "vector", stdout=io.StringIO(), stderr=errors)
    assert exited.value.code == 1
    assert "REGRESSED" in errors.getvalue()
    assert "recall@5 (vector)" in errors.getvalue()

    # The per-question diff names the question that got worse, with the chunks each run returned.
    runs = client.get(f"/api/v1/evaluation-sets/{set_id}/runs/").json()["results"]
    latest, before = runs[0]["id"], runs[1]["id"]
    diff = client.get(f"/api/v1/evaluation-runs/{latest}/diff/?against={before}&mode=vector").json()["changes"]
    assert diff[0]["question"] == QUESTIONS[0]["question"]
    assert diff[0]["worse"] is True
    assert diff[0]["rank_after"] is None
    assert diff[0]["retrieved_before"][0]["document"] == "lighthouse.txt"


def test_a_rebuild_that_ranks_worse_is_held_and_one_that_does_not_is_swapped(world) -> None:
    client, kb, set_id = world
    hook = Webhook.objects.create(
        team=kb.team, url="https://hooks.example.com/eval", secret="s", events=["evaluation.regressed"]
    )
    # Nothing changes but the chunk size: same pages, same ranks, swapped after its gate run.
    assert (
        client.post(f"/api/v1/knowledge-bases/{kb.pk}/rebuild/", {"chunk_size": 700}, format="json").status_code == 202
    )
    wait_until(lambda: KnowledgeBase.objects.get(pk=kb.pk).generation == 2)
    gate_run = EvaluationRun.objects.get(evaluation_set_id=set_id)
    assert (gate_run.trigger, gate_run.candidate_generation, gate_run.regressed) == (RunTrigger.SETTINGS, 2, False)
    assert gate_run.baseline_metrics is not None
    assert gate_run.baseline_metrics["hybrid"]["recall@5"] == gate_run.metrics["hybrid"]["recall@5"]

    # A rebuild that loses a page (its file is gone, so it fails to build) ranks worse: held.
    tides = Document.objects.get(knowledge_base=kb, original_name="tides.txt")
    default_storage.delete(str(tides.file.name))
    assert client.post(f"/api/v1/knowledge-bases/{kb.pk}/rebuild/", {}, format="json").status_code == 202
    wait_until(lambda: client.get(f"/api/v1/knowledge-bases/{kb.pk}/").json()["rebuild_gate"] == "held")
    shown = client.get(f"/api/v1/knowledge-bases/{kb.pk}/").json()
    assert (shown["generation"], shown["rebuilding"]) == (2, True)
    assert "recall@5 (hybrid) fell" in shown["rebuild_gate_reason"]
    # Search still reads the live generation, where the page is.
    hits = client.post(
        f"/api/v1/knowledge-bases/{kb.pk}/search/",
        {"query": "neap tides quarter moon", "mode": "fulltext"},
        format="json",
    ).json()["results"]
    assert hits[0]["document_name"] == "tides.txt"
    assert WebhookDelivery.objects.filter(webhook=hook, event="evaluation.regressed").exists()
    # A member cannot decide; an admin keeps the live generation.
    member = bearer_client(member_of(kb.team, Role.MEMBER), kb.team)
    decide = f"/api/v1/knowledge-bases/{kb.pk}/rebuild-decision/"
    assert member.post(decide, {"decision": "swap"}, format="json").status_code == 403
    kept = client.post(decide, {"decision": "keep"}, format="json")
    assert kept.status_code == 200, kept.json()
    assert (kept.json()["generation"], kept.json()["rebuilding"], kept.json()["rebuild_gate"]) == (2, False, "")
    assert client.post(decide, {"decision": "keep"}, format="json").status_code == 400


def test_an_import_that_grows_the_knowledge_base_runs_the_sets_again(world) -> None:
    client, kb, set_id = world
    first = start_run(client, set_id, modes=["vector"])
    more = {
        f"extra-{index}.txt": f"Note {index}: the recycling bin goes out on day {index}.".encode() for index in range(3)
    }
    ids = [item["id"] for item in upload(client, kb, more).json()["documents"]]
    wait_until(lambda: all_settled(ids))
    wait_until(lambda: EvaluationRun.objects.filter(evaluation_set_id=set_id, trigger=RunTrigger.IMPORT).exists())
    rerun = EvaluationRun.objects.get(evaluation_set_id=set_id, trigger=RunTrigger.IMPORT)
    assert rerun.modes == ["vector"]
    assert rerun.pk > first["id"]
    assert finished_run(client, rerun.pk)["metrics"]["vector"]["recall@1"] is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"question": "a?", "expected_document": "tides.txt"}\n{"question": "b?"}\n',
            "line 2: expected_document is missing",
        ),
        (b'{"question": "a?", "expected_document": "nowhere.pdf"}\n', "line 1: unknown document 'nowhere.pdf'"),
        (
            b'{"question": "a?", "expected_document": "tides.txt"}\n{"question": "b?", "expected_document": '
            + b'"x' * 5_000_000
            + b'"}\n',
            "line 2: longer than",
        ),
        (b'{"question": "a?", "expected_document": "tides.txt"}\n{not json}\n', "line 2: not JSON"),
        (b"question,expected_document\nhow?,missing.txt\n", "line 2: unknown document"),
    ],
    ids=["missing field", "unknown document", "10 MB line", "not JSON", "CSV unknown document"],
)
def test_bad_imports_answer_400_with_the_line_and_add_nothing(team, content: bytes, message: str) -> None:
    provider = Provider.objects.create(team=team, name="p", kind="openai_compatible", endpoint="http://127.0.0.1:9")
    model = ModelRegistration.objects.create(
        team=team, provider=provider, kind="embedding", name="e", provider_model_uid="e", dimensions=384
    )
    kb = KnowledgeBase.objects.create(team=team, name="K", embedding_model=model)
    Document.objects.create(
        knowledge_base=kb,
        team=team,
        original_name="tides.txt",
        sha256="0" * 64,
        size_bytes=1,
        content_type="text/plain",
    )
    client = bearer_client(member_of(team, Role.ADMIN), team)
    set_id = client.post(f"/api/v1/knowledge-bases/{kb.pk}/evaluation-sets/", {"name": "S"}, format="json").json()["id"]
    handle = io.BytesIO(content)
    handle.name = "items.csv" if content.startswith(b"question,") else "items.jsonl"
    response = client.post(f"/api/v1/evaluation-sets/{set_id}/items/", {"file": handle}, format="multipart")
    assert response.status_code == 400
    assert message in json.dumps(response.json())
    assert client.get(f"/api/v1/evaluation-sets/{set_id}/").json()["item_count"] == 0
    # A good CSV with several documents in a cell goes in whole.
    good = io.BytesIO(b"question,expected_document,expected_answer\nwhen is high water?,tides.txt|tides.txt,moon\n")
    good.name = "items.csv"
    added = client.post(f"/api/v1/evaluation-sets/{set_id}/items/", {"file": good}, format="multipart")
    assert added.status_code == 201, added.json()
    assert added.json()[0]["expected_document"] == ["tides.txt"]
    # Runs need accepted questions; members run, viewers may not.
    viewer = bearer_client(member_of(team, Role.VIEWER), team)
    assert viewer.post(f"/api/v1/evaluation-sets/{set_id}/runs/", {}, format="json").status_code == 403


def test_a_good_answer_becomes_a_question_expecting_the_documents_it_cites(team) -> None:
    provider = Provider.objects.create(team=team, name="p", kind="openai_compatible", endpoint="http://127.0.0.1:9")
    llm = ModelRegistration.objects.create(team=team, provider=provider, kind="llm", name="l", provider_model_uid="l")
    embedding = ModelRegistration.objects.create(
        team=team, provider=provider, kind="embedding", name="e", provider_model_uid="e", dimensions=384
    )
    kb = KnowledgeBase.objects.create(team=team, name="K", embedding_model=embedding)
    Document.objects.create(
        knowledge_base=kb,
        team=team,
        original_name="tides.txt",
        sha256="0" * 64,
        size_bytes=1,
        content_type="text/plain",
    )
    admin = member_of(team, Role.ADMIN)
    client = bearer_client(admin, team)
    set_id = client.post(f"/api/v1/knowledge-bases/{kb.pk}/evaluation-sets/", {"name": "S"}, format="json").json()["id"]
    conversation = conversation_create(team=team, owner=admin, assistant=assistant_create(team=team, name="A", llm=llm))
    Message.objects.create(conversation=conversation, role="user", author=admin, content="when are tides biggest?")
    citation = {"index": 1, "document_name": "tides.txt", "knowledge_base_id": kb.pk, "chunk_id": 1}
    answer = Message.objects.create(
        conversation=conversation, role="assistant", content="At full moon [1].", citations=[citation]
    )
    url = f"/api/v1/evaluation-sets/{set_id}/from-message/"
    refused = client.post(url, {"message": answer.pk}, format="json")
    assert refused.status_code == 400
    assert "marked good" in json.dumps(refused.json())
    Message.objects.filter(pk=answer.pk).update(feedback=1)
    added = client.post(url, {"message": answer.pk}, format="json")
    assert added.status_code == 201, added.json()
    assert (added.json()["question"], added.json()["expected_document"], added.json()["source"]) == (
        "when are tides biggest?",
        ["tides.txt"],
        "chat",
    )


def test_metrics_follow_the_written_definitions() -> None:
    chunks = ["a", "a", "b", "c", "a", "d"]  # distinct documents: a, b, c, d
    assert first_rank(chunks, ["c"]) == 3
    assert first_rank(chunks, ["z"]) is None
    assert ndcg(chunks, ["b"]) == pytest.approx(1 / math.log2(3))
    assert ndcg(chunks, ["a", "b"]) == pytest.approx(1.0)
    assert percentile([5, 1, 4, 2, 3], 0.5) == 3
    assert percentile([1, 2, 3, 4, 100], 0.95) == 100
    assert answer_found(["x", "the  seven\nyears rule"], "seven years") is True
    assert answer_found(["x"] * 5 + ["seven years"], "seven years") is False
    assert answer_found(["x"], "") is None


def test_a_drafted_question_keeps_only_an_answer_really_in_the_passage() -> None:
    passage = "Feed the starter twice a day and bake when it has doubled."
    assert parse_draft('Sure! {"question": "how often do I feed it?", "answer": "twice a day"}', passage) == (
        "how often do I feed it?",
        "twice a day",
    )
    assert parse_draft('{"question": "how often?", "answer": "two times daily"}', passage) == ("how often?", "")
    assert parse_draft("", passage) is None


def test_answer_scoring_has_the_teams_model_answer_and_judge_each_question(world) -> None:
    client, kb, _set_id = world
    set_id = client.post(
        f"/api/v1/knowledge-bases/{kb.pk}/evaluation-sets/", {"name": "Answers"}, format="json"
    ).json()["id"]
    answered = [row for row in QUESTIONS if row.get("expected_answer")]
    imported = client.post(f"/api/v1/evaluation-sets/{set_id}/items/", {"file": jsonl(answered)}, format="multipart")
    assert imported.status_code == 201, imported.json()
    # Without a default chat model the option is refused, saying what is missing.
    refused = client.post(f"/api/v1/evaluation-sets/{set_id}/runs/", {"answer_scoring": True}, format="json")
    assert refused.status_code == 400
    assert "chat model" in json.dumps(refused.json())
    llm = registration_launch(registration=register_offline_llm(kb.embedding_model.provider))
    team_defaults_set(team=kb.team, llm=llm)
    requests_before = Usage.objects.filter(team=kb.team).aggregate(n=Sum("requests"))["n"] or 0
    started = client.post(
        f"/api/v1/evaluation-sets/{set_id}/runs/", {"modes": ["vector"], "answer_scoring": True}, format="json"
    )
    assert started.status_code == 202, started.json()
    run = finished_run(client, started.json()["id"], timeout=600)
    judged = run["metrics"]["answers (model-judged)"]
    assert set(judged) == {"answer_contains", "cites_expected_document", "faithfulness"}
    assert all(value is not None and 0 <= value <= 1 for value in judged.values())
    assert all(item["answer"]["text"] for item in run["items"])
    # Two model calls per question (the answer, the judgement), metered to the team.
    requests_after = Usage.objects.filter(team=kb.team).aggregate(n=Sum("requests"))["n"]
    assert requests_after - requests_before == 2 * len(answered)
