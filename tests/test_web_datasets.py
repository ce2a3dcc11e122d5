"""The dataset pages: the team's list with the build form, a dataset's page (filters by name, the
cleaning report, the escaped preview, download, delete) and the review page for gold answers.
Roles and team isolation with the Django test client, datasets built in this process by the
worker's own function; one Chromium run that builds through the form with the real worker."""

from __future__ import annotations

import io
import random
import zipfile
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from playwright.sync_api import expect

from accounts.models import Role
from accounts.services import membership_set
from chat.models import Conversation, Message
from chat.services import conversation_create
from finetune.building import dataset_build
from finetune.models import Dataset, GoldAnswer
from finetune.services import dataset_start, gold_answer_set
from tests.browser import screenshot, signed_in_context
from tests.conftest import member_of
from tests.test_finetune import World, build_world, exchange, sentence
from tests.test_web_kb import client_for, csp_violations

HOSTILE = "<script>window.__xss=1</script>"


@pytest.fixture
def world(db: Any) -> World:
    return build_world()


@pytest.fixture
def elsewhere(db: Any) -> World:
    return build_world(label="Far ")


def chat_of(world: World, owner: Any = None, *, is_room: bool = False) -> Conversation:
    return conversation_create(team=world.team, owner=owner or world.member, assistant=world.assistant, is_room=is_room)


def queued(world: World, user: Any, name: str, format: str = "sharegpt", **filters: Any) -> Dataset:
    """Queued only: outside a transactional test nothing is committed, so no worker is asked."""
    return dataset_start(team=world.team, user=user, name=name, format=format, filters=filters)


def built(world: World, user: Any, name: str, format: str = "sharegpt", **filters: Any) -> Dataset:
    """Built in this process, by the function the worker's task runs."""
    dataset = dataset_build(dataset_id=queued(world, user, name, format, **filters).pk)
    assert dataset is not None
    assert dataset.status == "ready", dataset.error
    return dataset


def listed(client: Client) -> list[str]:
    response = client.get(reverse("web:dataset-list"))
    assert response.status_code == 200
    return [row["dataset"].name for row in response.context["datasets"]]


def build_form(world: World, **fields: Any) -> dict[str, Any]:
    return {
        "team": world.team.pk,
        "name": "Support",
        "format": "sharegpt",
        "feedback": "any",
        "reviewed": "any",
    } | fields


# --- the list and the build form ----------------------------------------------------------------


def test_signed_out_visitors_are_sent_to_the_login_page(world: World) -> None:
    dataset = queued(world, world.member, "Mine")
    answer = exchange(chat_of(world), "Q?", "A.")
    for url in (
        reverse("web:dataset-list"),
        reverse("web:dataset-detail", args=[dataset.pk]),
        reverse("web:dataset-download", args=[dataset.pk]),
        reverse("web:dataset-review"),
    ):
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/"), url
    for url in (
        reverse("web:dataset-create"),
        reverse("web:dataset-delete", args=[dataset.pk]),
        reverse("web:dataset-gold-set", args=[answer.pk]),
        reverse("web:dataset-gold-delete", args=[answer.pk]),
    ):
        assert Client().post(url, {"text": "x"})["Location"].startswith("/login/"), url
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert not GoldAnswer.objects.exists()


def test_the_list_shows_the_current_teams_datasets_the_user_may_see(world: World, elsewhere: World) -> None:
    queued(world, world.member, "Mine")
    queued(world, world.other_member, "Theirs")
    queued(world, world.admin, "Admins'")
    queued(world, member_of(world.team, Role.ADMIN), "Another admin's")
    queued(elsewhere, elsewhere.member, "Far away")

    member = client_for(world.member)
    assert listed(member) == ["Mine"]  # another member's dataset may hold their conversations
    assert listed(client_for(world.admin)) == ["Admins'", "Theirs", "Mine"]  # not another admin's
    owner = client_for(world.owner)
    assert listed(owner) == ["Another admin's", "Admins'", "Theirs", "Mine"]  # newest first
    page = owner.get(reverse("web:dataset-list")).content.decode()
    assert "LLaMA-Factory sharegpt" in page
    assert world.admin.username in page
    assert "v1" in page
    assert 'data-testid="nav-datasets"' in page

    # A user in two teams sees the team of the session.
    membership_set(team=elsewhere.team, user=world.member, role=Role.MEMBER)
    queued(elsewhere, world.member, "Mine there")
    member.post(reverse("web:switch-team"), {"team": elsewhere.team.pk})
    assert listed(member) == ["Mine there"]


def test_viewers_see_no_form_and_their_post_is_refused(world: World) -> None:
    viewer = client_for(world.viewer)
    response = viewer.get(reverse("web:dataset-list"))
    assert response.context["form"] is None
    assert b'data-testid="dataset-build-form"' not in response.content
    assert b'data-testid="dataset-build-denied"' in response.content
    refused = viewer.post(reverse("web:dataset-create"), build_form(world))
    assert refused.status_code == 403
    assert "ask an admin" in refused.content.decode()
    assert not Dataset.objects.exists()
    assert b'data-testid="dataset-build-form"' in client_for(world.member).get(reverse("web:dataset-list")).content


def test_another_teams_assistant_or_knowledge_base_is_refused_in_the_services_words(
    world: World, elsewhere: World
) -> None:
    member = client_for(world.member)
    response = member.post(reverse("web:dataset-create"), build_form(world, assistant=elsewhere.assistant.pk))
    assert response.status_code == 400
    assert f"no assistant with id {elsewhere.assistant.pk} in this team" in response.content.decode()
    response = member.post(reverse("web:dataset-create"), build_form(world, knowledge_base=elsewhere.kb.pk))
    assert response.status_code == 400
    assert f"no knowledge base with id {elsewhere.kb.pk} in this team" in response.content.decode()
    response = member.post(reverse("web:dataset-create"), build_form(world, since="2025-03-01", until="2025-02-01"))
    assert response.status_code == 400
    assert "swap them" in response.content.decode()
    # The form keeps what was typed; the choices are the team's own only.
    page = response.content.decode()
    assert world.assistant.name in page
    assert elsewhere.assistant.name not in page
    assert not Dataset.objects.exists()
    # A team the user is not in, named by the form's hidden field: not found.
    assert member.post(reverse("web:dataset-create"), build_form(elsewhere)).status_code == 404


def test_a_member_builds_through_the_form_and_the_page_names_the_filters(world: World) -> None:
    member = client_for(world.member)
    response = member.post(
        reverse("web:dataset-create"),
        build_form(
            world,
            name="Weekly",
            format="alpaca",
            assistant=world.assistant.pk,
            knowledge_base=world.kb.pk,
            since="2025-01-01",
            feedback="positive",
        ),
    )
    dataset = Dataset.objects.get(team=world.team)
    assert response.status_code == 302
    assert response["Location"] == reverse("web:dataset-detail", args=[dataset.pk])
    assert (dataset.name, dataset.version, dataset.format, dataset.created_by) == ("Weekly", 1, "alpaca", world.member)
    assert dataset.filters["assistant"] == world.assistant.pk
    assert dataset.filters["knowledge_base"] == world.kb.pk
    assert dataset.filters["since"].startswith("2025-01-01T00:00:00")
    assert (dataset.filters["feedback"], dataset.filters["reviewed"]) == ("positive", "any")

    page = member.get(response["Location"])
    filters = dict(page.context["filters"])
    assert filters["Assistant"] == world.assistant.name
    assert filters["Answers citing"] == world.kb.name
    assert str(filters["Feedback"]) == "Only answers marked good (or with a gold answer)"
    html = page.content.decode()
    assert "data-active" in html  # datasets.js follows it
    assert reverse("dataset-detail", args=[dataset.pk]) in html
    assert 'data-testid="report-pending"' in html
    assert 'data-testid="dataset-download"' not in html
    assert "{# adapters and comparisons" not in html

    again = member.post(reverse("web:dataset-create"), build_form(world, name="Weekly"))
    assert Dataset.objects.get(pk=int(again["Location"].rstrip("/").rsplit("/", 1)[1])).version == 2


# --- a dataset's page, download and delete ------------------------------------------------------


def test_another_teams_dataset_is_not_found_on_its_page_download_and_delete(world: World, elsewhere: World) -> None:
    dataset = built(world, world.member, "Mine")
    urls = [reverse(name, args=[dataset.pk]) for name in ("web:dataset-detail", "web:dataset-download")]
    for user in (elsewhere.owner, world.other_member):  # another team; a teammate who may not see it
        client = client_for(user)
        for url in urls:
            assert client.get(url).status_code == 404, url
        assert client.post(reverse("web:dataset-delete", args=[dataset.pk])).status_code == 404
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert client_for(world.member).get(urls[0]).status_code == 200


def test_a_member_cannot_delete_another_members_dataset_an_admin_can(world: World) -> None:
    dataset = queued(world, world.member, "Mine")
    url = reverse("web:dataset-delete", args=[dataset.pk])
    assert client_for(world.other_member).post(url).status_code == 404
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    page = client_for(world.admin).get(reverse("web:dataset-detail", args=[dataset.pk]))
    assert page.context["can_delete"] is True
    assert client_for(world.member).get(reverse("web:dataset-detail", args=[dataset.pk])).context["can_delete"]

    # Its creator, made a viewer since, may no longer delete it (as the API).
    membership_set(team=world.team, user=world.member, role=Role.VIEWER)
    assert client_for(world.member).post(url).status_code == 403

    response = client_for(world.admin).post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("web:dataset-list")
    assert not Dataset.objects.filter(pk=dataset.pk).exists()
    assert client_for(world.admin).get(url).status_code == 405  # POST only


def test_a_ready_dataset_downloads_as_its_zip_and_one_not_ready_says_why(world: World) -> None:
    chat = chat_of(world)
    for index in range(3):
        exchange(chat, f"Question {index}?", f"Answer {index}.")
    dataset = built(world, world.member, "Weekly", "alpaca")
    response = client_for(world.member).get(reverse("web:dataset-download", args=[dataset.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert 'filename="Weekly-v1-alpaca.zip"' in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))  # type: ignore[attr-defined]
    assert {"alpaca.jsonl", "dataset_info.json", "report.json"} <= set(archive.namelist())
    assert len(archive.read("alpaca.jsonl").decode().splitlines()) == 3

    waiting = queued(world, world.member, "Later")
    response = client_for(world.member).get(reverse("web:dataset-download", args=[waiting.pk]))
    assert response.status_code == 409
    assert "download it when its status is ready" in response.content.decode()
    Dataset.objects.filter(pk=waiting.pk).update(status="failed", error="the worker's time limit")
    response = client_for(world.member).get(reverse("web:dataset-download", args=[waiting.pk]))
    assert response.status_code == 409
    assert "failed to build (the worker&#x27;s time limit): build it again" in response.content.decode()


def test_the_report_and_the_preview_are_shown_and_escaped(world: World) -> None:
    chat = chat_of(world)
    exchange(chat, f"Is {HOSTILE} safe?", f"Write to ann@example.com about {HOSTILE}.")
    exchange(chat, "Where are the logs?", "Somewhere.", feedback=-1)
    dataset = built(world, world.member, "Hostile")
    response = client_for(world.member).get(reverse("web:dataset-detail", args=[dataset.pk]))
    html = response.content.decode()
    assert HOSTILE not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "&lt;EMAIL&gt;" in html  # scrubbed, and the placeholder escaped too
    rows = response.context["preview"]
    assert len(rows) == 1
    assert rows[0].startswith("{\n  ")  # pretty-printed
    report = response.context["report"]
    assert (report["messages_read"], report["kept"]) == (4, 1)
    assert [(item.key, item.label, item.count) for item in report["dropped"]] == [
        ("negative_feedback", "Answers marked bad", 1)
    ]
    assert [(item.key, item.label, item.count) for item in report["scrubbed"]] == [
        ("email", "E-mail addresses", 1),
        ("phone", "Phone numbers", 0),
        ("id_number", "ID and card numbers", 0),
        ("secret", "API keys and secrets", 0),
    ]
    assert 'data-testid="dataset-download"' in html

    # A reason this page does not know is shown by its key.
    counts = dataset.counts | {"dropped": {"mystery_reason": 2}}
    Dataset.objects.filter(pk=dataset.pk).update(counts=counts)
    html = client_for(world.member).get(reverse("web:dataset-detail", args=[dataset.pk])).content.decode()
    assert 'data-key="mystery_reason"><td>mystery_reason</td><td>2</td>' in html

    # In Chinese the page renders too.
    chinese = client_for(world.member).get(
        reverse("web:dataset-detail", args=[dataset.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans"
    )
    assert chinese.status_code == 200
    assert '<html lang="zh-hans">' in chinese.content.decode()


# --- reviewing answers --------------------------------------------------------------------------


def test_admins_review_answers_and_set_gold_answers_leaving_the_answer_as_it_was(
    world: World, elsewhere: World
) -> None:
    chat = chat_of(world)
    good = exchange(chat, "How do I restart?", "Run make restart.", feedback=1)
    bad = exchange(chat, f"Which port {HOSTILE}?", "Port 1.", feedback=-1)
    other_admins = exchange(chat_of(world, world.owner), "Owner's question", "Owner's answer.")
    far = exchange(
        conversation_create(team=elsewhere.team, owner=elsewhere.member, assistant=elsewhere.assistant), "Q?", "A."
    )
    url = reverse("web:dataset-review")

    for user in (world.member, world.viewer):
        assert client_for(user).get(url).status_code == 403
        assert client_for(user).post(reverse("web:dataset-gold-set", args=[bad.pk]), {"text": "x"}).status_code == 403
    assert b'data-testid="review-link"' not in client_for(world.member).get(reverse("web:dataset-list")).content

    admin = client_for(world.admin)
    assert b'data-testid="review-link"' in admin.get(reverse("web:dataset-list")).content
    page = admin.get(url)
    assert [row["answer"].pk for row in page.context["answers"]] == [bad.pk, good.pk]  # not the owner's own
    assert page.context["answers"][0]["answer"].question == f"Which port {HOSTILE}?"
    html = page.content.decode()
    assert HOSTILE not in html
    assert "Which port &lt;script&gt;" in html
    assert [row["answer"].pk for row in admin.get(url, {"feedback": "down"}).context["answers"]] == [bad.pk]
    assert [row["answer"].pk for row in admin.get(url, {"feedback": "up"}).context["answers"]] == [good.pk]
    assert admin.get(url, {"feedback": "gold"}).context["answers"] == []

    response = admin.post(
        reverse("web:dataset-gold-set", args=[bad.pk]),
        {"text": "Port 8000, unless PORT says otherwise.", "next": f"{url}?feedback=down"},
    )
    assert response.status_code == 302
    assert response["Location"] == f"{url}?feedback=down#answer-{bad.pk}"
    assert GoldAnswer.objects.get(message=bad).text == "Port 8000, unless PORT says otherwise."
    assert Message.objects.get(pk=bad.pk).content == "Port 1."  # the answer stays as it was
    gold_rows = admin.get(url, {"feedback": "gold"}).context["answers"]
    assert [(row["answer"].pk, row["gold"].text) for row in gold_rows] == [
        (bad.pk, "Port 8000, unless PORT says otherwise.")
    ]
    # Replaced, then refused when empty (the message says what to do), then removed.
    admin.post(reverse("web:dataset-gold-set", args=[bad.pk]), {"text": "Port 8000."})
    assert GoldAnswer.objects.get(message=bad).text == "Port 8000."
    refused = admin.post(reverse("web:dataset-gold-set", args=[bad.pk]), {"text": "  "}, follow=True)
    assert "write the gold answer" in refused.content.decode()
    assert GoldAnswer.objects.get(message=bad).text == "Port 8000."
    # `next` pointing elsewhere is not followed.
    response = admin.post(reverse("web:dataset-gold-delete", args=[bad.pk]), {"next": "https://evil.example/"})
    assert response["Location"] == f"{url}#answer-{bad.pk}"
    assert not GoldAnswer.objects.filter(message=bad).exists()
    assert Message.objects.get(pk=bad.pk).content == "Port 1."

    # Another team's answer, and another admin-ranked member's personal conversation: not found.
    for message in (far, other_admins):
        assert admin.post(reverse("web:dataset-gold-set", args=[message.pk]), {"text": "x"}).status_code == 404
        assert admin.post(reverse("web:dataset-gold-delete", args=[message.pk])).status_code == 404
    outsider = client_for(elsewhere.owner)
    assert outsider.post(reverse("web:dataset-gold-set", args=[good.pk]), {"text": "x"}).status_code == 404
    assert outsider.get(url).context["answers"][0]["answer"].pk == far.pk  # their own team's only
    assert not GoldAnswer.objects.exists()

    # The owner sees the admin's ranked-below answers and its own.
    gold_answer_set(message=good, reviewer=world.owner, text="Run `make restart`.")
    owner_rows = client_for(world.owner).get(url).context["answers"]
    assert [row["answer"].pk for row in owner_rows] == [other_admins.pk, bad.pk, good.pk]


# --- Chromium against the live server and the worker --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_admin_builds_a_dataset_in_the_browser_and_downloads_it(
    celery_worker_process: str, live_asgi_url: str, browser: Any
) -> None:
    world = build_world()
    chat = chat_of(world)  # a member's: the admin ranks above them
    rng = random.Random(5)  # noqa: S311  # reproducible text
    for index in range(6):
        exchange(chat, f"Question {index}: {sentence(rng, 8)}?", sentence(rng, 20), feedback=1)
    exchange(chat, "And the logs?", "Nowhere.", feedback=-1)

    context = signed_in_context(browser, live_asgi_url, world.admin)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto("/")
    page.get_by_test_id("nav-datasets").click()
    page.get_by_test_id("dataset-empty").wait_for()
    page.fill("input[name=name]", "Weekly")
    page.select_option("select[name=format]", "alpaca")
    page.select_option("select[name=assistant]", str(world.assistant.pk))
    page.select_option("select[name=feedback]", "positive")
    screenshot(page, "datasets-build-form")
    page.get_by_test_id("dataset-build").click()
    page.get_by_test_id("dataset-name").wait_for()
    dataset = Dataset.objects.get(team=world.team, name="Weekly")
    assert page.url.endswith(f"/datasets/{dataset.pk}/")

    # datasets.js follows the build and reloads the page once it is ready.
    expect(page.get_by_test_id("dataset-status")).to_have_text("Ready", timeout=120_000)
    expect(page.get_by_test_id("report-kept")).to_have_text("6")
    expect(page.get_by_test_id("report-dropped-row")).to_have_text(["Answers marked bad1"])
    expect(page.get_by_test_id("dataset-preview-row")).to_have_count(5)
    expect(page.get_by_test_id("dataset-preview-row").first).to_contain_text('"instruction": "Question 0:')
    expect(page.get_by_test_id("dataset-filters")).to_contain_text(world.assistant.name)
    screenshot(page, "dataset-ready")

    href = page.get_by_test_id("dataset-download").get_attribute("href")
    assert href == reverse("web:dataset-download", args=[dataset.pk])
    download = context.request.get(href)
    assert download.status == 200
    assert download.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(download.body()))
    assert len(archive.read("alpaca.jsonl").decode().splitlines()) == 6

    page.get_by_test_id("nav-datasets").click()
    expect(page.get_by_test_id("dataset-row")).to_have_count(1)
    expect(page.get_by_test_id("dataset-kept")).to_have_text("6")

    # A build under way is followed in place (no reload) and the page reloads once it is ready.
    held = Dataset.objects.create(
        team=world.team,
        created_by=world.admin,
        builder_role=Role.ADMIN,
        name="Held",
        version=1,
        format="sharegpt",
        filters={"feedback": "any", "reviewed": "any"},
        status="building",
        progress=40,
    )  # no task queued: this test builds it when it chooses
    page.goto(f"/datasets/{held.pk}/")
    expect(page.get_by_test_id("dataset-progress")).to_have_text("40%")
    expect(page.get_by_test_id("report-pending")).to_be_visible()
    page.evaluate("window.__samePage = true")
    Dataset.objects.filter(pk=held.pk).update(progress=70)
    expect(page.get_by_test_id("dataset-progress")).to_have_text("70%")
    assert page.evaluate("window.__samePage") is True
    assert dataset_build(dataset_id=held.pk) is not None
    expect(page.get_by_test_id("dataset-status")).to_have_text("Ready")
    expect(page.get_by_test_id("report-kept")).to_have_text("6")
    assert page.evaluate("window.__samePage === undefined")  # reloaded

    # The review page: the newest answer (marked bad) gets a gold answer; the answer stays.
    page.get_by_test_id("datasets-link").click()
    page.get_by_test_id("review-link").click()
    expect(page.get_by_test_id("review-item")).to_have_count(7)
    newest = page.get_by_test_id("review-item").first
    expect(newest.get_by_test_id("review-feedback-down")).to_be_visible()
    newest.get_by_test_id("review-gold-open").click()
    newest.get_by_test_id("review-gold-text").fill("Under var/log/, one file per process.")
    newest.get_by_test_id("review-gold-save").click()
    expect(page.get_by_test_id("review-gold")).to_have_text(["Under var/log/, one file per process."])
    expect(page.get_by_test_id("review-answer").first).to_have_text("Nowhere.")
    screenshot(page, "datasets-review")
    assert csp_violations(console) == []
    context.close()
