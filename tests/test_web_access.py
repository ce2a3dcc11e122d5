"""The web pages and the rooms' WebSocket, without a browser: who reaches what. Every web page and
the socket are tried from another team (404 / closed), as a viewer (read only) and signed out."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.core.files.base import ContentFile
from django.test import Client

from accounts.models import Role
from chat.models import Message
from chat.services import assistant_create, conversation_create
from kb.models import Chunk, Document
from kb.services import kb_create
from realservices.offline_models import offline_models_on
from tests.conftest import member_of
from web.consumers import mentions_assistant
from web.markdown import render_markdown

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(team: Any, other_team: Any) -> dict[str, Any]:
    """A team with a private conversation, a room, a document and its chunk; a member, a viewer and
    another team's owner."""
    llm, embedding = offline_models_on(team, "http://127.0.0.1:9")
    assistant = assistant_create(team=team, name="Helper", llm=llm)
    owner = member_of(team, Role.MEMBER)
    kb = kb_create(team=team, name="Docs", embedding_model=embedding)
    document = Document.objects.create(
        knowledge_base=kb,
        team=team,
        original_name="page.html",
        sha256="0" * 64,
        size_bytes=40,
        content_type="text/html",
        status="ready",
        file=ContentFile(b"<script>alert(1)</script>", name="page.html"),
    )
    chunk = Chunk.objects.create(
        knowledge_base=kb,
        document=document,
        generation=kb.generation,
        ordinal=0,
        text="The vault key is blue.",
        dims=384,
        embedding=[0.1] * 384,
    )
    private = conversation_create(team=team, owner=owner, assistant=assistant)
    room = conversation_create(team=team, owner=owner, assistant=assistant, is_room=True)
    answer = Message.objects.create(
        conversation=private,
        role="assistant",
        content="Blue [1].",
        citations=[{"index": 1, "chunk_id": chunk.pk, "document_name": "page.html", "score": 0.9, "cited": True}],
    )
    return {
        "team": team,
        "owner": owner,
        "viewer": member_of(team, Role.VIEWER),
        "teammate": member_of(team),
        "outsider": member_of(other_team, Role.OWNER),
        "private": private,
        "room": room,
        "answer": answer,
        "document": document,
        "chunk": chunk,
    }


def pages(world: dict[str, Any]) -> list[str]:
    return [
        f"/chat/{world['private'].pk}/",
        f"/chat/{world['room'].pk}/",
        f"/chat/{world['private'].pk}/summary/",
        f"/messages/{world['answer'].pk}/",
        f"/sources/{world['chunk'].pk}/",
        f"/documents/{world['document'].pk}/file/",
    ]


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_signed_out_visitors_are_sent_to_the_login_page(world: dict[str, Any]) -> None:
    for url in [*pages(world), "/chat/", "/kb/"]:
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/"), url


def test_another_teams_owner_reaches_none_of_the_pages(world: dict[str, Any]) -> None:
    client = signed_in(world["outsider"])
    for url in pages(world):
        assert client.get(url).status_code == 404, url
    response = client.post("/chat/new/", {"assistant": world["private"].assistant_id})
    assert response.status_code == 400
    assert not world["team"].conversations.filter(owner=world["outsider"]).exists()


def test_a_teammate_sees_the_room_but_not_a_private_conversation(world: dict[str, Any]) -> None:
    client = signed_in(world["teammate"])
    assert client.get(f"/chat/{world['room'].pk}/").status_code == 200
    assert client.get(f"/chat/{world['private'].pk}/").status_code == 404
    assert client.get(f"/messages/{world['answer'].pk}/").status_code == 404
    listing = client.get("/chat/").content.decode()
    assert f"/chat/{world['room'].pk}/" in listing
    assert f"/chat/{world['private'].pk}/" not in listing


def test_the_owner_sees_the_answer_with_a_citation_link_and_downloads_the_source(world: dict[str, Any]) -> None:
    client = signed_in(world["owner"])
    page = client.get(f"/chat/{world['private'].pk}/")
    assert page.status_code == 200
    assert f'href="/sources/{world["chunk"].pk}/"' in page.content.decode()
    assert "script-src 'self'" in page["Content-Security-Policy"]
    source = client.get(f"/sources/{world['chunk'].pk}/")
    assert "The vault key is blue." in source.content.decode()
    download = client.get(f"/documents/{world['document'].pk}/file/")
    assert download.status_code == 200
    # An uploaded HTML file comes back as a download, never as a page of the platform.
    assert download["Content-Disposition"].startswith("attachment")
    assert download["Content-Type"] == "application/octet-stream"
    assert b"".join(download.streaming_content) == b"<script>alert(1)</script>"  # type: ignore[attr-defined]


def test_a_viewer_reads_but_cannot_write(world: dict[str, Any]) -> None:
    client = signed_in(world["viewer"])
    room = client.get(f"/chat/{world['room'].pk}/").content.decode()
    assert 'id="composer"' not in room
    assert client.post("/chat/new/", {}).status_code == 403
    events = async_to_sync(_room_session)(
        _headers(world["viewer"]), world["room"].pk, [{"type": "message", "content": "hi"}]
    )
    assert events[0]["type"] == "history"
    assert events[-1] == {
        "type": "error",
        "message": "Viewers cannot write in rooms: ask a team admin to make you a member.",
    }
    assert not world["room"].messages.exists()


def test_the_room_socket_refuses_other_teams_and_private_conversations(world: dict[str, Any]) -> None:
    assert async_to_sync(_connect_code)(_headers(world["outsider"]), world["room"].pk) == 4404
    assert async_to_sync(_connect_code)(_headers(world["teammate"]), world["private"].pk) == 4404
    assert async_to_sync(_connect_code)(_headers(None), world["room"].pk) == 4401


def test_room_messages_reach_the_room_and_catch_up_after_a_reconnect(world: dict[str, Any]) -> None:
    sent = async_to_sync(_room_session)(
        _headers(world["owner"]), world["room"].pk, [{"type": "message", "content": "hello"}]
    )
    message = sent[-1]
    assert message["type"] == "message"
    assert "hello" in message["html"]
    assert "Viewers" not in message["html"]
    later = async_to_sync(_room_session)(_headers(world["teammate"]), world["room"].pk, [], since=0)
    assert [item["id"] for item in later[0]["messages"]] == [message["id"]]
    nothing_new = async_to_sync(_room_session)(_headers(world["teammate"]), world["room"].pk, [], since=message["id"])
    assert nothing_new[0]["messages"] == []
    malformed = async_to_sync(_room_session)(_headers(world["owner"]), world["room"].pk, [{"type": "message"}])
    assert malformed[-1]["type"] == "error"


def test_mentions_and_markdown_safety() -> None:
    assert mentions_assistant("@assistant what now?", "Helper")
    assert mentions_assistant("ping @helper", "Helper")
    assert not mentions_assistant("email me at a@b.c", "Helper")
    html = render_markdown("<b>x</b> ![t](https://example.com/t.png) [1]", {1: "/sources/9/"})
    assert "<b>" not in html
    assert "example.com" not in html
    assert 'href="/sources/9/"' in html


# --- WebSocket helpers --------------------------------------------------------------------------


def _headers(user: Any) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if user is not None:
        cookie = signed_in(user).cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return headers


async def _connect_code(headers: list[tuple[bytes, bytes]], conversation_id: int) -> int | None:
    from chatplatform.asgi import application

    communicator = WebsocketCommunicator(application, f"/ws/rooms/{conversation_id}/", headers=headers)
    connected, code = await communicator.connect()
    await communicator.disconnect()
    return None if connected else code


async def _room_session(
    headers: list[tuple[bytes, bytes]], conversation_id: int, sends: list[Any], since: int = 0
) -> list[dict[str, Any]]:
    """Connect, send each item, and collect what comes back (history, then one reply per send)."""
    from chatplatform.asgi import application

    url = f"/ws/rooms/{conversation_id}/?since={since}"
    communicator = WebsocketCommunicator(application, url, headers=headers)
    connected, _code = await communicator.connect()
    assert connected
    events = [await communicator.receive_json_from(timeout=10)]
    for item in sends:
        await communicator.send_json_to(item)
        while True:
            event = await communicator.receive_json_from(timeout=10)
            if event["type"] != "presence":
                events.append(event)
                break
    await communicator.disconnect()
    return events


def test_the_chinese_catalogue_is_complete_and_compiled() -> None:
    """Every string in the .po is translated, and the committed .mo holds the same translations."""
    import gettext
    import re

    po_path = settings.BASE_DIR / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
    text = po_path.read_text(encoding="utf-8")
    assert "#, fuzzy" not in text
    entries = re.findall(
        r'^(?:msgctxt "(.*)"\n)?msgid "(.+)"\n(?:msgid_plural ".*"\n)?msgstr(?:\[0\])? "(.*)"$', text, re.MULTILINE
    )
    assert len(entries) > 150
    with (po_path.parent / "django.mo").open("rb") as mo_file:
        compiled = gettext.GNUTranslations(mo_file)
    untranslated = [msgid for _context, msgid, msgstr in entries if not msgstr]
    assert untranslated == []

    def unquoted(text: str) -> str:
        return text.replace('\\"', '"')

    stale = [
        msgid
        for context, msgid, msgstr in entries
        if (compiled.pgettext(context, unquoted(msgid)) if context else compiled.gettext(unquoted(msgid)))
        != unquoted(msgstr)
    ]
    assert stale == [], "run `make messages` to compile the catalogue"


def test_a_room_message_saved_outside_the_socket_reaches_the_rooms_open_sockets(world: dict[str, Any]) -> None:
    """The services tell the room once a message commits, whoever saved it (here no socket did)."""

    async def listen_while_posting() -> dict[str, Any]:
        from asgiref.sync import sync_to_async

        from chatplatform.asgi import application

        url = f"/ws/rooms/{world['room'].pk}/"
        communicator = WebsocketCommunicator(application, url, headers=headers)
        connected, _code = await communicator.connect()
        assert connected
        await communicator.receive_json_from(timeout=10)  # history
        await sync_to_async(post)()
        while True:
            event = await communicator.receive_json_from(timeout=10)
            if event["type"] == "message":
                await communicator.disconnect()
                return event

    def post() -> None:
        from chat.services import room_message_post

        room_message_post(conversation=world["room"], author=world["owner"], content="posted by a bot")

    headers = _headers(world["teammate"])
    event = async_to_sync(listen_while_posting)()
    assert "posted by a bot" in event["html"]
