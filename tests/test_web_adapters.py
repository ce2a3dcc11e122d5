"""The adapters of a dataset and their comparisons on the web pages: the Adapters section of a
dataset's page (the list for whoever sees the dataset; register, delete and compare for admins and
owners), a comparison's page (summary, both answers side by side, escaped; the evaluation runs of
each model), and the build form's hold-back percentage. The Django test client with adapters and
comparisons made in the ORM (no model server is asked: their providers listen nowhere); one
Chromium run from the dataset's page to a done comparison."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from playwright.sync_api import expect

from accounts.models import Role
from chat.services import assistant_create, conversation_create
from evaluation.answers import ANSWER_METRICS_KEY
from evaluation.models import EvaluationItem, EvaluationRun, EvaluationSet
from finetune.adapters import overlap_scores, summarize
from finetune.building import dataset_build
from finetune.models import Adapter, Comparison, ComparisonRun, Dataset
from finetune.services import dataset_start
from models_registry.models import ModelRegistration, Provider
from models_registry.services import registration_create
from realservices.xinference import free_port
from tests.browser import screenshot, signed_in_context
from tests.test_finetune import World, build_world, exchange
from tests.test_web_kb import client_for, csp_violations

HOSTILE = "<script>window.__xss=1</script>"
ESCAPED = "&lt;script&gt;window.__xss=1&lt;/script&gt;"


@pytest.fixture
def world(db: Any) -> World:
    return build_world()


@pytest.fixture
def elsewhere(db: Any) -> World:
    return build_world(label="Far ")


def ready(world: World, user: Any, name: str = "Support", format: str = "alpaca", **body: Any) -> Dataset:
    """Built in this process, by the function the worker's task runs."""
    chat = conversation_create(team=world.team, owner=user, assistant=world.assistant)
    exchange(chat, "How do I restart it?", "Run make restart.", feedback=1)
    dataset = dataset_start(team=world.team, user=user, name=name, format=format, **body)
    built = dataset_build(dataset_id=dataset.pk)
    assert built is not None
    assert built.status == "ready", built.error
    return built


def xinference_base(world: World, name: str = "Qwen base", engine: str = "transformers") -> ModelRegistration:
    """A chat model on an Xinference that listens nowhere (nothing here launches it)."""
    provider = Provider.objects.filter(team=world.team, kind="xinference").first()
    if provider is None:
        provider = Provider.objects.create(
            team=world.team, name="Xinference", kind="xinference", endpoint=f"http://127.0.0.1:{free_port()}"
        )
    existing = ModelRegistration.objects.filter(provider=provider, provider_model_uid=slugify(name)).first()
    return existing or registration_create(
        provider=provider,
        kind="llm",
        name=name,
        provider_model_uid=slugify(name),
        launch_spec={"model_engine": engine, "model_format": "gguf" if engine == "llama.cpp" else "pytorch"},
        keep_running=False,
    )


def adapter_on(
    world: World, dataset: Dataset, name: str = "Support v1", base: ModelRegistration | None = None
) -> Adapter:
    """An adapter as adapter_register leaves it, made directly."""
    base = base or xinference_base(world)
    own = registration_create(
        provider=base.provider,
        kind="llm",
        name=name,
        provider_model_uid=f"{base.provider_model_uid}-{slugify(name)}",
        keep_running=False,
    )
    return Adapter.objects.create(
        team=world.team, dataset=dataset, base_model=base, registration=own, path=f"/srv/adapters/{slugify(name)}"
    )


def scored(question: str, reference: str, base: str, adapter: str) -> dict[str, Any]:
    return {
        "question": question,
        "reference": reference,
        "base": base,
        "adapter": adapter,
        "base_scores": overlap_scores(base, reference).as_json(),
        "adapter_scores": overlap_scores(adapter, reference).as_json(),
    }


ROWS = [
    scored(
        f"Is {HOSTILE} safe?",
        "Run make restart and watch the health page.",
        f"Maybe {HOSTILE} restart.",
        "Run make restart, then watch the health page.",
    ),
    scored("Where are the logs?", "Under var/log, one file per process.", "Under var/log.", "Somewhere else."),
    scored("Who invites people?", "An admin.", "An admin.", "An admin."),
]


def done_comparison(adapter: Adapter, rows: list[dict[str, Any]] = ROWS) -> Comparison:
    return Comparison.objects.create(
        team=adapter.team,
        adapter=adapter,
        status="done",
        progress=100,
        row_limit=len(rows),
        rows=rows,
        metrics=summarize(rows),
        finished_at=timezone.now(),
    )


def evaluation_set(world: World, name: str = "Asked", accepted: bool = True) -> EvaluationSet:
    made = EvaluationSet.objects.create(team=world.team, knowledge_base=world.kb, name=name)
    EvaluationItem.objects.create(
        team=world.team,
        evaluation_set=made,
        question="How do I restart it?",
        expected_documents=["ops.txt"],
        status="accepted" if accepted else "draft",
    )
    return made


def page_of(dataset: Dataset) -> str:
    return reverse("web:dataset-detail", args=[dataset.pk])


def comparison_url(dataset: Dataset, comparison: Comparison) -> str:
    return reverse("web:dataset-comparison", args=[dataset.pk, comparison.pk])


def html(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, url
    return response.content.decode()


# --- the Adapters section -----------------------------------------------------------------------


def test_whoever_sees_the_dataset_sees_its_adapters_and_only_admins_get_the_forms(
    world: World, elsewhere: World, settings: Any
) -> None:
    dataset = ready(world, world.member)  # a member's: they and the team's admins and owners see it
    adapter = adapter_on(world, dataset)
    ModelRegistration.objects.filter(pk=adapter.registration_id).update(
        status="failed", last_error=f"peft could not load {HOSTILE}"
    )
    comparison = done_comparison(adapter)
    gguf = xinference_base(world, "Small GGUF", engine="llama.cpp")
    offered = evaluation_set(world, "Asked")
    evaluation_set(world, "Drafts only", accepted=False)
    far_set = evaluation_set(elsewhere, "Far set")
    far_base = xinference_base(elsewhere, "Far base")

    member = html(client_for(world.member), page_of(dataset))
    assert 'data-testid="adapters"' in member
    assert 'data-testid="adapter-name">Support v1<' in member
    assert 'data-testid="adapter-base">Qwen base<' in member
    assert "/srv/adapters/support-v1" in member
    assert 'data-testid="adapter-status">Failed<' in member
    assert f"peft could not load {ESCAPED}" in member
    assert HOSTILE not in member
    assert comparison_url(dataset, comparison) in member
    for form in ("adapter-register-form", "comparison-form", "adapter-delete-form"):
        assert f'data-testid="{form}"' not in member, form
    assert 'name="path"' not in member

    for user in (world.admin, world.owner):
        page = html(client_for(user), page_of(dataset))
        for form in ("adapter-register-form", "comparison-form", "adapter-delete-form"):
            assert f'data-testid="{form}"' in page, (user, form)
        assert 'placeholder="/srv/adapters/support-v1"' in page
        assert f"loads adapters from {settings.FINETUNE_ADAPTER_DIR} only" in page
        assert "the sets of the knowledge bases the dataset was built from" in page
    response = client_for(world.admin).get(page_of(dataset))
    # The select offers the team's chat models (not the adapter's own registration, nor another
    # team's); the checkboxes the team's sets with accepted questions.
    choices = response.context["register_form"].fields["base_model"].widget.choices
    assert [label for _id, label in choices] == ["LLM", "Qwen base (transformers)", "Small GGUF (llama.cpp)"]
    assert far_base.pk not in [pk for pk, _label in choices]
    assert gguf.pk in [pk for pk, _label in choices]
    assert [item.pk for item in response.context["evaluation_sets"]] == [offered.pk]
    assert f'value="{far_set.pk}"' not in response.content.decode()

    # Members post to the forms in vain.
    member_client = client_for(world.member)
    body = {"name": "Mine", "base_model": adapter.base_model_id, "path": "/srv/adapters/mine"}
    assert member_client.post(reverse("web:dataset-adapter-register", args=[dataset.pk]), body).status_code == 403
    url = reverse("web:dataset-comparison-start", args=[dataset.pk, adapter.pk])
    assert member_client.post(url, {"rows": 1}).status_code == 403
    url = reverse("web:dataset-adapter-delete", args=[dataset.pk, adapter.pk])
    assert member_client.post(url).status_code == 403
    assert Adapter.objects.count() == 1
    assert Comparison.objects.count() == 1

    # A dataset that is not ready, or of a format that trains no chat adapter: no section.
    waiting = dataset_start(team=world.team, user=world.admin, name="Later", format="alpaca")
    dpo = ready(world, world.admin, name="Pairs", format="dpo")
    for other in (waiting, dpo):
        page = html(client_for(world.admin), page_of(other))
        assert 'data-testid="adapters"' not in page


def test_registering_refuses_another_teams_model_and_a_llama_cpp_base_then_registers(
    world: World, elsewhere: World
) -> None:
    dataset = ready(world, world.admin)
    far_base = xinference_base(elsewhere, "Far base")
    gguf = xinference_base(world, "Small GGUF", engine="llama.cpp")
    good = xinference_base(world, "Qwen base")
    admin = client_for(world.admin)
    url = reverse("web:dataset-adapter-register", args=[dataset.pk])
    body = {"name": "Support v1", "path": "/srv/adapters/support-v1"}

    refused = admin.post(url, body | {"base_model": far_base.pk})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert f"No model with id {far_base.pk} in this team" in page
    assert 'value="/srv/adapters/support-v1"' in page  # what was typed stays
    assert "Far base" not in page

    refused = admin.post(url, body | {"base_model": gguf.pk})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert "engine, which does not load LoRA adapters" in page
    assert "register the base model in pytorch format with the transformers or vLLM engine" in page

    refused = admin.post(url, body | {"base_model": good.pk, "path": "relative/support"})
    assert refused.status_code == 400
    assert "an absolute path without" in refused.content.decode()
    refused = admin.post(url, body | {"base_model": "many"})
    assert refused.status_code == 400
    assert not Adapter.objects.exists()
    assert not ModelRegistration.objects.filter(name="Support v1").exists()

    # Another team's dataset: not found, whatever the body.
    far_dataset = ready(elsewhere, elsewhere.admin)
    far_url = reverse("web:dataset-adapter-register", args=[far_dataset.pk])
    assert admin.post(far_url, body | {"base_model": good.pk}).status_code == 404

    registered = admin.post(url, body | {"base_model": good.pk})
    assert registered.status_code == 302
    assert registered["Location"] == f"{page_of(dataset)}#adapters"
    adapter = Adapter.objects.select_related("registration").get()
    assert (adapter.dataset, adapter.base_model, adapter.path) == (dataset, good, "/srv/adapters/support-v1")
    assert adapter.registration.launch_spec["lora_adapters"] == [
        {"name": "support-v1", "path": "/srv/adapters/support-v1"}
    ]
    page = html(admin, registered["Location"].split("#")[0])
    assert "Adapter Support v1 is registered on Qwen base" in page
    assert 'data-testid="adapter-name">Support v1<' in page


def test_deleting_an_adapter_is_refused_while_an_assistant_answers_with_it(world: World, elsewhere: World) -> None:
    dataset = ready(world, world.admin)
    adapter = adapter_on(world, dataset)
    far = adapter_on(elsewhere, ready(elsewhere, elsewhere.admin), "Far adapter")
    admin = client_for(world.admin)
    # Another team's adapter under this dataset's URL: not found.
    assert admin.post(reverse("web:dataset-adapter-delete", args=[dataset.pk, far.pk])).status_code == 404
    assert Adapter.objects.filter(pk=far.pk).exists()

    helper = assistant_create(team=world.team, name="Tuned helper", llm=adapter.registration, system_prompt="")
    url = reverse("web:dataset-adapter-delete", args=[dataset.pk, adapter.pk])
    refused = admin.post(url)
    assert refused.status_code == 409
    assert "assistants answer with this adapter (Tuned helper): choose another model for them first" in (
        refused.content.decode()
    )
    assert Adapter.objects.filter(pk=adapter.pk).exists()

    helper.delete()
    deleted = admin.post(url)
    assert deleted.status_code == 302
    assert not Adapter.objects.filter(pk=adapter.pk).exists()
    assert not ModelRegistration.objects.filter(pk=adapter.registration_id).exists()
    assert ModelRegistration.objects.filter(pk=adapter.base_model_id).exists()
    assert "Adapter Support v1 deleted" in html(admin, page_of(dataset))


# --- starting a comparison ----------------------------------------------------------------------


def test_starting_a_comparison_refuses_another_teams_set_and_bad_rows_then_starts(
    world: World, elsewhere: World
) -> None:
    dataset = ready(world, world.admin)
    Dataset.objects.filter(pk=dataset.pk).update(counts=dataset.counts | {"held_back": 4})
    adapter = adapter_on(world, dataset)
    own_set = evaluation_set(world)
    far_set = evaluation_set(elsewhere, "Far set")
    admin = client_for(world.admin)
    url = reverse("web:dataset-comparison-start", args=[dataset.pk, adapter.pk])

    refused = admin.post(url, {"rows": 3, "evaluation_sets": [own_set.pk, far_set.pk]})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert f"no evaluation set with id {far_set.pk} in this team" in page
    assert f'value="{own_set.pk}" checked' in page  # what was chosen stays
    refused = admin.post(url, {"rows": 500})
    assert refused.status_code == 400
    assert "how many held-back questions to ask, 0 to 200" in refused.content.decode()
    refused = admin.post(url, {"rows": 2, "evaluation_sets": ["first"]})
    assert refused.status_code == 400
    assert "give the ids (whole numbers)" in refused.content.decode()
    assert not Comparison.objects.exists()

    # Another team's adapter, or this team's under another dataset: not found.
    far = adapter_on(elsewhere, ready(elsewhere, elsewhere.admin), "Far adapter")
    other = adapter_on(world, ready(world, world.admin, name="Other"), "Other adapter")
    for stranger in (far, other):
        assert admin.post(reverse("web:dataset-comparison-start", args=[dataset.pk, stranger.pk])).status_code == 404

    started = admin.post(url, {"rows": 3, "evaluation_sets": [own_set.pk]})
    comparison = Comparison.objects.get()
    assert started.status_code == 302
    assert started["Location"] == comparison_url(dataset, comparison)
    assert (comparison.row_limit, comparison.evaluation_set_ids, comparison.status) == (3, [own_set.pk], "queued")
    # None checked: the default sets (none here: the dataset names no knowledge base or assistant).
    admin.post(url, {"rows": ""})
    latest = Comparison.objects.order_by("-pk").first()
    assert latest is not None
    assert (latest.row_limit, latest.evaluation_set_ids) == (20, [])

    # The dataset's page lists them, followed while queued (datasets.js polls the API).
    page = html(admin, page_of(dataset))
    assert page.count('data-testid="comparison-row"') == 2
    assert f'data-poll-url="{reverse("comparison-detail", args=[comparison.pk])}"' in page
    assert "data-active" in page


# --- a comparison's page ------------------------------------------------------------------------


def test_a_comparison_is_found_only_under_its_dataset_by_those_who_see_the_dataset(
    world: World, elsewhere: World
) -> None:
    dataset = ready(world, world.member)
    comparison = done_comparison(adapter_on(world, dataset))
    second = ready(world, world.member, name="Second")
    on_second = done_comparison(adapter_on(world, second, "Second adapter"))
    far = done_comparison(adapter_on(elsewhere, ready(elsewhere, elsewhere.admin), "Far adapter"))

    member = client_for(world.member)
    assert member.get(comparison_url(dataset, comparison)).status_code == 200
    assert member.get(comparison_url(dataset, on_second)).status_code == 404  # another dataset's adapter
    assert member.get(comparison_url(dataset, far)).status_code == 404  # another team's
    assert member.get(comparison_url(second, on_second)).status_code == 200
    # A teammate who may not see the dataset, a viewer, another team's owner: not found.
    for user in (world.other_member, world.viewer, elsewhere.owner):
        assert client_for(user).get(comparison_url(dataset, comparison)).status_code == 404, user
    assert client_for(world.admin).get(comparison_url(dataset, comparison)).status_code == 200
    response = Client().get(comparison_url(dataset, comparison))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_a_comparison_page_shows_the_summary_both_answers_escaped_and_the_runs(world: World) -> None:
    dataset = ready(world, world.admin)
    adapter = adapter_on(world, dataset)
    comparison = done_comparison(adapter)
    asked = evaluation_set(world)

    def run(answer_model: ModelRegistration, contains: float, recall: float) -> EvaluationRun:
        return EvaluationRun.objects.create(
            team=world.team,
            evaluation_set=asked,
            knowledge_base=world.kb,
            generation=1,
            modes=["hybrid"],
            answer_scoring=True,
            answer_model=answer_model,
            status="done",
            progress=100,
            metrics={
                "hybrid": {"recall@5": recall, "mrr": 0.5},
                ANSWER_METRICS_KEY: {"answer_contains": contains, "cites_expected_document": 0.5, "faithfulness": 1},
            },
        )

    ComparisonRun.objects.create(
        comparison=comparison,
        base_run=run(adapter.base_model, 0.25, 0.5),
        adapter_run=run(adapter.registration, 0.75, 0.5),
    )
    response = client_for(world.admin).get(comparison_url(dataset, comparison))
    page = response.content.decode()
    assert HOSTILE not in page
    assert f"Maybe {ESCAPED} restart." in page
    assert f"Is {ESCAPED} safe?" in page

    metrics = summarize(ROWS)
    summary = response.context["summary"]
    assert summary.base == {key: f"{value:.3f}" for key, value in metrics["base"].items()}
    assert summary.adapter == {key: f"{value:.3f}" for key, value in metrics["adapter"].items()}
    assert (summary.adapter_better, summary.base_better, summary.ties) == (1, 1, 1)
    assert f'data-testid="summary-adapter-f1">{metrics["adapter"]["token_f1"]:.3f}<' in page
    assert 'data-testid="summary-questions">3<' in page
    assert 'data-testid="summary-adapter-better">1<' in page
    assert "not a judgement of quality" in page
    assert page.count('data-testid="comparison-question"') == 3
    first = response.context["rows"][0]
    assert first.reference == "Run make restart and watch the health page."
    assert first.adapter.better
    assert not first.base.better
    assert first.adapter.token_f1 == f"{ROWS[0]['adapter_scores']['token_f1']:.3f}"
    assert 'data-testid="row-adapter-answer">Run make restart, then watch the health page.</pre>' in page

    # The evaluation runs side by side, with a link to the set's page.
    [pair] = response.context["runs"]
    assert pair.link == reverse("web:evaluation-set", args=[world.kb.pk, asked.pk])
    assert [(str(row.label), row.base, row.adapter) for row in pair.figures] == [
        ("Answer contains the expected text", "0.250", "0.750"),
        ("Cites the expected document", "0.500", "0.500"),
        ("Faithful to its sources (model-judged)", "1.000", "1.000"),
        ("Retrieval recall@5 (Hybrid)", "0.500", "0.500"),
    ]
    assert f'href="{pair.link}"' in page
    assert "data-active" not in page  # done: nothing to follow

    # Under way: followed through the API; failed: the reason, escaped.
    Comparison.objects.filter(pk=comparison.pk).update(status="running", progress=40, rows=[], metrics={})
    page = html(client_for(world.admin), comparison_url(dataset, comparison))
    assert f'data-poll-url="{reverse("comparison-detail", args=[comparison.pk])}"' in page
    assert 'data-testid="comparison-progress">40%<' in page
    assert 'data-testid="summary-pending"' in page
    Comparison.objects.filter(pk=comparison.pk).update(status="failed", error=f"Base did not launch: {HOSTILE}")
    page = html(client_for(world.admin), comparison_url(dataset, comparison))
    assert f"Base did not launch: {ESCAPED}" in page
    assert HOSTILE not in page

    # In Chinese the page renders too.
    chinese = client_for(world.admin).get(comparison_url(dataset, comparison), HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert chinese.status_code == 200


# --- holding back conversations when building ---------------------------------------------------


def test_the_build_form_holds_back_a_percentage_and_shows_the_services_refusal(world: World) -> None:
    member = client_for(world.member)
    form = {"team": world.team.pk, "name": "Held", "format": "alpaca", "feedback": "any", "reviewed": "any"}
    assert 'name="holdout_percent"' in html(member, reverse("web:dataset-list"))

    refused = member.post(reverse("web:dataset-create"), form | {"holdout_percent": 60})
    assert refused.status_code == 400
    assert "Holdout: a whole percentage from 0 to 50" in refused.content.decode()
    refused = member.post(reverse("web:dataset-create"), form | {"format": "dpo", "holdout_percent": 10})
    assert refused.status_code == 400
    assert "only supervised formats" in refused.content.decode()
    assert not Dataset.objects.exists()

    created = member.post(reverse("web:dataset-create"), form | {"holdout_percent": 20})
    assert created.status_code == 302
    dataset = Dataset.objects.get()
    assert (dataset.format, dataset.holdout_percent) == ("alpaca", 20)
    assert member.post(reverse("web:dataset-create"), form | {"holdout_percent": ""}).status_code == 302
    assert Dataset.objects.order_by("-pk").values_list("holdout_percent", flat=True)[0] == 0

    built = dataset_build(dataset_id=dataset.pk)
    assert built is not None
    response = member.get(page_of(dataset))
    assert response.context["report"]["held_back"] == built.counts["held_back"]
    page = response.content.decode()
    assert "Held back for comparison" in page
    assert f'data-testid="report-held-back">{built.counts["held_back"]}<' in page
    assert dict(response.context["filters"])["Held back"] == "20% of the conversations"


# --- Chromium against the live server -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_admin_opens_a_done_comparison_from_the_datasets_page(live_asgi_url: str, browser: Any) -> None:
    world = build_world()
    # Made directly: a ready dataset (nothing queued), its adapter and a done comparison.
    dataset = Dataset.objects.create(
        team=world.team,
        created_by=world.member,
        builder_role=Role.MEMBER,
        name="Support",
        version=1,
        format="alpaca",
        filters={"feedback": "any", "reviewed": "any"},
        holdout_percent=20,
        status="ready",
        progress=100,
        counts={"messages_read": 8, "kept": 3, "held_back": 3, "dropped": {}, "scrubbed": {}},
    )
    comparison = done_comparison(adapter_on(world, dataset))

    context = signed_in_context(browser, live_asgi_url, world.admin)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(page_of(dataset))
    expect(page.get_by_test_id("report-held-back")).to_have_text("3")
    expect(page.get_by_test_id("adapter-name")).to_have_text("Support v1")
    expect(page.get_by_test_id("comparison-status")).to_have_text("Done")
    screenshot(page, "dataset-adapters")
    page.get_by_test_id("comparison-link").click()
    page.get_by_test_id("comparison-title").wait_for()
    assert page.url.endswith(comparison_url(dataset, comparison))

    metrics = summarize(ROWS)
    for _attempt in range(2):  # as served, and again after a reload
        expect(page.get_by_test_id("summary-adapter-f1")).to_have_text(f"{metrics['adapter']['token_f1']:.3f}")
        expect(page.get_by_test_id("summary-base-f1")).to_have_text(f"{metrics['base']['token_f1']:.3f}")
        expect(page.get_by_test_id("summary-ties")).to_have_text("1")
        expect(page.get_by_test_id("comparison-question")).to_have_count(3)
        expect(page.get_by_test_id("row-base-answer").first).to_have_text(f"Maybe {HOSTILE} restart.")
        expect(page.get_by_test_id("row-adapter-answer").nth(1)).to_have_text("Somewhere else.")
        assert page.evaluate("window.__xss === undefined")
        page.reload()
    screenshot(page, "dataset-comparison", markup_expected=True)
    page.get_by_test_id("dataset-link").click()
    expect(page.get_by_test_id("adapters")).to_be_visible()
    assert csp_violations(console) == []
    context.close()
