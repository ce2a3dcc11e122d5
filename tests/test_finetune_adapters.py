"""The loop closed: a dataset built with held-back conversations, a LoRA adapter trained on its
zip (peft, in the Xinference environment), registered on its base model through the API,
launched by the real Xinference's transformers engine, and compared with the base by the real
worker: held-back questions answered by both and scored, and an evaluation set run once per model.

The base is a two-layer Llama with random weights (realservices.xinference.build_tiny_chat_model):
the only causal model with LoRA support that runs here (the offline SmolLM2 is a GGUF on llama.cpp,
which loads no adapters). Its answers are gibberish, so the tests check that the adapter is
applied (its answers differ from the base's) and that the scores are computed from the answers,
never which model wins."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import Role
from chat.services import assistant_create, conversation_create
from evaluation.answers import ANSWER_METRICS_KEY
from finetune.adapters import overlap_scores, summarize, tokens
from finetune.building import HELD_BACK_FILE, dataset_build, is_held_back
from finetune.models import Adapter, Comparison, Dataset
from finetune.services import DatasetError, dataset_start
from kb.models import KnowledgeBase
from models_registry.models import ModelRegistration, Provider
from models_registry.services import registration_create, registration_launch
from realservices.offline_models import offline_models_on
from realservices.xinference import XinferenceServer, build_tiny_chat_model, train_tiny_lora
from tests.conftest import bearer_client, member_of
from tests.test_finetune import build_world, exchange, sentence
from tests.test_kb import all_settled, upload, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# Twenty-four one-question conversations: with half held back by a hash of each conversation's id,
# both files get rows unless 24 fair coins all land alike (1 in 8 million).
TOPICS = [
    ("restart the ingest worker", "Run make restart-ingest and watch the health page."),
    ("change the upload limit", "Set KB_MAX_UPLOAD_MB and restart the web process."),
    ("add a teammate", "An admin invites them from the team page with their e-mail."),
    ("rotate an API key", "Create a new key, switch clients to it, then revoke the old one."),
    ("see token usage", "The usage page lists tokens per model and per person."),
    ("export a conversation", "Open the conversation menu and choose export as Markdown."),
]
PAGES = {
    "ops.txt": "To restart the ingest worker run make restart-ingest; the health page shows it back within a minute.",
    "keys.txt": "API keys are rotated by creating a new key, moving clients over, and revoking the old key.",
}
QUESTIONS = [
    {"question": "how do I bring the ingest worker back", "expected_document": "ops.txt"},
    {"question": "steps to replace an api key", "expected_document": "keys.txt"},
]


def finished(client: APIClient, url: str, timeout: float = 300) -> dict[str, Any]:
    wait_until(lambda: client.get(url).json()["status"] in ("done", "failed"), timeout)
    return client.get(url).json()


@pytest.fixture
def tiny_base(team, xinference: XinferenceServer, tmp_path: Path, settings) -> dict[str, Any]:
    """The team's local Xinference (the embedded provider: adapters must lie under
    FINETUNE_ADAPTER_DIR) with the offline models and the tiny LoRA-capable base, launched."""
    settings.FINETUNE_ADAPTER_DIR = tmp_path / "adapters"
    settings.FINETUNE_ADAPTER_DIR.mkdir()
    gguf_llm, embedding = offline_models_on(team, xinference.endpoint)
    provider = gguf_llm.provider
    Provider.objects.filter(pk=provider.pk).update(is_embedded=True)
    base_dir = tmp_path / "tiny-base"
    spec, launch = build_tiny_chat_model(base_dir)
    base = registration_create(
        provider=Provider.objects.get(pk=provider.pk),
        kind="llm",
        name="Tiny base",
        provider_model_uid="platform-test-lora-base",
        launch_spec=launch,
        custom_spec=spec,
    )
    registration_launch(registration=base)
    registration_launch(registration=embedding)
    return {"base": base, "gguf_llm": gguf_llm, "embedding": embedding, "base_dir": base_dir}


def test_an_adapter_trained_on_a_dataset_is_registered_served_and_compared_with_its_base(
    team, tiny_base, celery_worker, tmp_path: Path
) -> None:
    admin = member_of(team, Role.ADMIN)
    client = bearer_client(admin, team)
    base: ModelRegistration = tiny_base["base"]

    # A knowledge base with an evaluation set, answered by an assistant on the base model.
    created = client.post(
        "/api/v1/knowledge-bases/", {"name": "Ops", "embedding_model": tiny_base["embedding"].pk}, format="json"
    )
    kb = KnowledgeBase.objects.get(pk=created.json()["id"])
    ids = [row["id"] for row in upload(client, kb, {n: t.encode() for n, t in PAGES.items()}).json()["documents"]]
    wait_until(lambda: all_settled(ids))
    set_id = client.post(f"/api/v1/knowledge-bases/{kb.pk}/evaluation-sets/", {"name": "Asked"}, format="json").json()[
        "id"
    ]
    for row in QUESTIONS:
        added = client.post(f"/api/v1/evaluation-sets/{set_id}/items/", row, format="json")
        assert added.status_code == 201, added.json()
    assistant = assistant_create(team=team, name="Ops helper", llm=base, system_prompt="You help the ops team.")
    assistant.knowledge_bases.add(kb)
    rng = random.Random(3)  # noqa: S311  # reproducible text, not a secret
    for index in range(24):
        topic, answer = TOPICS[index % len(TOPICS)]
        chat = conversation_create(team=team, owner=admin, assistant=assistant)
        # Made-up words make each answer its own (near duplicates would be dropped).
        detail = sentence(rng, 12)
        exchange(chat, f"How do I {topic} for {sentence(rng, 3)}?", f"{answer} Also: {detail}.", feedback=1)

    # Built with half the conversations held back: the training file never holds their questions.
    response = client.post(
        "/api/v1/datasets/",
        {"name": "Ops answers", "format": "alpaca", "holdout": 50, "filters": {"assistant": assistant.pk}},
        format="json",
    )
    assert response.status_code == 202, response.json()
    dataset = finished_dataset(client, response.json()["id"])
    counts = dataset["counts"]
    assert counts["kept"] + counts["held_back"] == 24
    assert counts["kept"]
    assert counts["held_back"]
    stored = Dataset.objects.get(pk=dataset["id"])
    with stored.file.open("rb") as handle, zipfile.ZipFile(handle) as archive:
        training = [json.loads(line) for line in archive.read("alpaca.jsonl").decode().splitlines()]
        held_back = [json.loads(line) for line in archive.read(HELD_BACK_FILE).decode().splitlines()]
    assert len(training) == counts["kept"]
    assert len(held_back) == counts["held_back"]
    assert not {row["instruction"] for row in training} & {row["question"] for row in held_back}
    assert {row["system"] for row in held_back} == {"You help the ops team."}
    assert all(row["reference"].startswith(tuple(answer for _topic, answer in TOPICS)) for row in held_back)

    # The adapter, trained on the training file as LLaMA-Factory would read it.
    rows_file = tmp_path / "alpaca.jsonl"
    rows_file.write_text("\n".join(json.dumps(row) for row in training), encoding="utf-8")
    adapter_dir = Path(tiny_base["base_dir"]).parent / "adapters" / "ops-v1"
    train_tiny_lora(Path(tiny_base["base_dir"]), rows_file, adapter_dir)

    url = f"/api/v1/datasets/{stored.pk}/adapters/"
    body = {"name": "Ops answers v1", "base_model": base.pk, "path": str(adapter_dir)}
    # Refusals first, each saying what to do, nothing registered.
    refusals = [
        ({"base_model": tiny_base["gguf_llm"].pk}, "transformers or vLLM engine"),
        ({"base_model": tiny_base["embedding"].pk}, "goes on a chat model"),
        ({"path": "relative/ops-v1"}, "absolute path"),
        ({"path": f"{adapter_dir}/../../etc"}, "without '..'"),
        ({"path": str(tmp_path / "tiny-base")}, "loads adapters from"),
    ]
    pickled = adapter_dir.parent / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    refusals.append(({"path": str(pickled)}, "runs code when loaded"))
    for change, message in refusals:
        refused = client.post(url, {**body, **change}, format="json")
        assert refused.status_code == 400, (change, refused.json())
        assert message in refused.json()["error"]["message"], (change, refused.json())
    member = bearer_client(member_of(team), team)
    assert member.post(url, body, format="json").status_code in (403, 404)
    assert not Adapter.objects.exists()

    registered = client.post(url, body, format="json")
    assert registered.status_code == 201, registered.json()
    adapter = Adapter.objects.select_related("registration").get(pk=registered.json()["id"])
    assert adapter.registration.launch_spec["lora_adapters"] == [{"name": "ops-answers-v1", "path": str(adapter_dir)}]
    assert adapter.registration.launch_spec["model_engine"] == "transformers"
    assert client.get(url).json()[0]["id"] == adapter.pk

    started = client.post(f"/api/v1/adapters/{adapter.pk}/comparisons/", {"rows": 3}, format="json")
    assert started.status_code == 202, started.json()
    comparison = finished(client, f"/api/v1/comparisons/{started.json()['id']}/")
    assert comparison["status"] == "done", comparison
    rows = comparison["rows"]
    assert len(rows) == min(3, counts["held_back"])
    assert [row["question"] for row in rows] == [row["question"] for row in held_back[: len(rows)]]
    for row in rows:
        assert row["base"]
        assert row["adapter"]
        for side in ("base", "adapter"):
            assert row[f"{side}_scores"] == overlap_scores(row[side], row["reference"]).as_json()
    # The adapter is loaded: greedy answers to the same prompts differ from the base's.
    assert any(row["base"] != row["adapter"] for row in rows)
    assert comparison["metrics"] == summarize(rows)

    # The evaluation set of the assistant's knowledge base, once per model, side by side.
    [pair] = comparison["evaluation_runs"]
    assert pair["evaluation_set"] == set_id
    base_run = finished(client, f"/api/v1/evaluation-runs/{pair['base']['id']}/")
    adapter_run = finished(client, f"/api/v1/evaluation-runs/{pair['adapter']['id']}/")
    assert (base_run["answer_model"], adapter_run["answer_model"]) == (base.pk, adapter.registration_id)
    for run in (base_run, adapter_run):
        assert run["status"] == "done", run
        assert ANSWER_METRICS_KEY in run["metrics"]
    base_answers = [item["answer"]["text"] for item in base_run["items"]]
    adapter_answers = [item["answer"]["text"] for item in adapter_run["items"]]
    assert base_answers != adapter_answers

    # Deleting the adapter stops its model and removes its registration.
    assert client.delete(f"/api/v1/adapters/{adapter.pk}/").status_code == 204
    assert not ModelRegistration.objects.filter(pk=adapter.registration_id).exists()
    assert adapter.registration.provider_model_uid not in _running(tiny_base)
    assert Comparison.objects.count() == 0


def _running(tiny_base: dict[str, Any]) -> set[str]:
    from models_registry.providers import client_for

    return {model.uid for model in client_for(tiny_base["base"].provider).running_models()}


def finished_dataset(client: APIClient, dataset_id: int) -> dict[str, Any]:
    url = f"/api/v1/datasets/{dataset_id}/"
    wait_until(lambda: client.get(url).json()["status"] in ("ready", "failed"), 120)
    dataset = client.get(url).json()
    assert dataset["status"] == "ready", dataset
    return dataset


# --- refusals without a model server ----------------------------------------------------------


def foreign_adapter(world: Any, dataset: Dataset) -> Adapter:
    """An adapter of another team, made directly (its provider listens nowhere)."""
    base = registration_create(
        provider=Provider.objects.create(
            team=world.team, name="Their Xinference", kind="xinference", endpoint="http://127.0.0.1:9"
        ),
        kind="llm",
        name="Their base",
        provider_model_uid="their-base",
        launch_spec={"model_engine": "transformers", "model_format": "pytorch"},
        keep_running=False,
    )
    own = registration_create(
        provider=base.provider, kind="llm", name="Their adapter", provider_model_uid="their-adapter", keep_running=False
    )
    return Adapter.objects.create(
        team=world.team, dataset=dataset, base_model=base, registration=own, path="/srv/adapters/theirs"
    )


def built(world: Any, **body: Any) -> Dataset:
    dataset = dataset_start(team=world.team, user=world.admin, name="Support", format="alpaca", **body)
    done = dataset_build(dataset_id=dataset.pk)
    assert done is not None
    assert done.status == "ready", done.error
    return done


# In one transaction: no build or comparison is handed to a worker (nothing is committed).
@pytest.mark.django_db
def test_other_teams_ids_in_every_field_and_bad_requests_are_refused() -> None:
    home, foreign = build_world(), build_world(label="Foreign-")
    for world in (home, foreign):
        chat = conversation_create(team=world.team, owner=world.admin, assistant=world.assistant)
        exchange(chat, "How do I restart it?", "Run make restart.", feedback=1)
    home_dataset, foreign_dataset = built(home, holdout_percent=50), built(foreign)
    theirs = foreign_adapter(foreign, foreign_dataset)
    foreign_set = foreign.kb.evaluation_sets.create(team=foreign.team, name="Theirs")
    client = bearer_client(home.admin, home.team)

    # Another team's dataset, adapter and comparison are not found.
    for method, url in (
        ("get", f"/api/v1/datasets/{foreign_dataset.pk}/adapters/"),
        ("post", f"/api/v1/datasets/{foreign_dataset.pk}/adapters/"),
        ("get", f"/api/v1/adapters/{theirs.pk}/"),
        ("delete", f"/api/v1/adapters/{theirs.pk}/"),
        ("get", f"/api/v1/adapters/{theirs.pk}/comparisons/"),
        ("post", f"/api/v1/adapters/{theirs.pk}/comparisons/"),
    ):
        # A valid body (their own base model) for the writes: refused as not found all the same.
        body: dict[str, Any] | None = (
            {"name": "x", "base_model": theirs.base_model_id, "path": "/x"} if method == "post" else None
        )
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 404, (method, url, response.json())
    assert ModelRegistration.objects.filter(pk=theirs.registration_id).exists()

    # Their base model in our body: refused by name, nothing registered.
    response = client.post(
        f"/api/v1/datasets/{home_dataset.pk}/adapters/",
        {"name": "Mine", "base_model": theirs.base_model_id, "path": "/srv/adapters/mine"},
        format="json",
    )
    assert response.status_code == 400
    assert f"No model with id {theirs.base_model_id} in this team" in response.json()["error"]["message"]
    assert not Adapter.objects.filter(team=home.team).exists()

    # Our adapter, compared on their evaluation set: refused.
    ours = foreign_adapter(home, home_dataset)
    # Its base model stays while the adapter is registered on it: 409, saying what uses it.
    response = client.delete(f"/api/v1/models/{ours.base_model_id}/")
    assert response.status_code == 409, response.json()
    assert response.json()["error"]["message"].startswith("Still in use by adapter ")
    assert ModelRegistration.objects.filter(pk=ours.base_model_id).exists()
    response = client.post(
        f"/api/v1/adapters/{ours.pk}/comparisons/", {"evaluation_sets": [foreign_set.pk]}, format="json"
    )
    assert response.status_code == 400
    assert f"no evaluation set with id {foreign_set.pk} in this team" in response.json()["error"]["message"]
    for body, message in (
        ({"rows": 500}, "0 to 200"),
        ({"rows": 0}, "nothing to compare on"),
        ({"rows": 5, "unknown": 1}, "unknown"),
    ):
        response = client.post(f"/api/v1/adapters/{ours.pk}/comparisons/", body, format="json")
        assert response.status_code == 400, body
        assert message in response.json()["error"]["message"].lower(), (body, response.json())
    assert not Comparison.objects.exists()

    # Members see the team's adapters but compare nothing, and see no comparison of a dataset
    # they may not see.
    member = bearer_client(home.member, home.team)
    assert member.get(f"/api/v1/adapters/{ours.pk}/").status_code == 200
    assert member.post(f"/api/v1/adapters/{ours.pk}/comparisons/", {"rows": 1}, format="json").status_code == 403
    comparison = Comparison.objects.create(team=home.team, adapter=ours, row_limit=1)
    assert client.get(f"/api/v1/comparisons/{comparison.pk}/").status_code == 200
    assert member.get(f"/api/v1/comparisons/{comparison.pk}/").status_code == 404
    assert bearer_client(foreign.admin, foreign.team).get(f"/api/v1/comparisons/{comparison.pk}/").status_code == 404

    # Holding back: supervised formats only, 0 to 50 percent.
    holdouts: list[tuple[dict[str, Any], str]] = [
        ({"format": "dpo", "holdout": 10}, "only supervised formats"),
        ({"format": "alpaca", "holdout": 60}, "0 to 50"),
    ]
    for dataset_body, message in holdouts:
        response = client.post("/api/v1/datasets/", {"name": "H", **dataset_body}, format="json")
        assert response.status_code == 400, dataset_body
        assert message in response.json()["error"]["message"]
    with pytest.raises(DatasetError, match="0 to 50"):
        dataset_start(team=home.team, user=home.admin, name="H", format="alpaca", holdout_percent=-1)


@pytest.mark.django_db
def test_held_back_conversations_are_the_same_in_every_build_and_scores_read_the_words() -> None:
    chosen = {conversation_id for conversation_id in range(1, 2001) if is_held_back(conversation_id, 10)}
    assert 150 < len(chosen) < 250
    assert chosen == {conversation_id for conversation_id in range(1, 2001) if is_held_back(conversation_id, 10)}
    assert chosen < {conversation_id for conversation_id in range(1, 2001) if is_held_back(conversation_id, 30)}
    assert not any(is_held_back(conversation_id, 0) for conversation_id in range(1, 2001))

    assert tokens("Run `make restart`, then check!") == ["run", "make", "restart", "then", "check"]
    assert tokens("重启 ingest 服务") == ["重", "启", "ingest", "服", "务"]
    assert overlap_scores("run make restart", "Run make restart.").as_json() == {"token_f1": 1.0, "rouge_l": 1.0}
    assert overlap_scores("nothing alike", "run make restart").as_json() == {"token_f1": 0.0, "rouge_l": 0.0}
    # Same words in another order: token F1 counts them all, ROUGE-L only the longest run in order.
    partial = overlap_scores("restart make run", "run make restart")
    assert partial.token_f1 == 1.0
    assert partial.rouge_l == pytest.approx(1 / 3, abs=1e-4)
    assert overlap_scores("", "run").token_f1 == 0.0
    rows = [
        {"base_scores": {"token_f1": 0.2, "rouge_l": 0.1}, "adapter_scores": {"token_f1": 0.6, "rouge_l": 0.5}},
        {"base_scores": {"token_f1": 0.4, "rouge_l": 0.3}, "adapter_scores": {"token_f1": 0.4, "rouge_l": 0.2}},
    ]
    assert summarize(rows) == {
        "questions": 2,
        "base": {"token_f1": 0.3, "rouge_l": 0.2},
        "adapter": {"token_f1": 0.5, "rouge_l": 0.35},
        "adapter_better": 1,
        "base_better": 0,
        "ties": 1,
    }
