"""A team room's WebSocket follows its user's access while it is open, not only at connect: a
removed or deactivated user is cut off within seconds, a member demoted to viewer stops writing at
once. The real ASGI app, the real Redis channel layer and the real database throughout."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.models import Membership, Role, User
from accounts.services import membership_remove, membership_set
from chat.models import Conversation
from chat.services import assistant_create, conversation_create, room_message_post
from realservices.offline_models import offline_models_on
from tests.conftest import member_of
from tests.test_web_access import _headers
from web.consumers import ACCESS_ENDED_CODE, ACCESS_ENDED_MESSAGE, DEMOTED_MESSAGE, VIEWER_MESSAGE

pytestmark = pytest.mark.django_db(transaction=True)

T = TypeVar("T")

# Enough for a push through Redis and one query on this 2-core machine, with room to spare.
PUSH_WITHIN_S = 2.0


@pytest.fixture
def room(team: Any) -> Conversation:
    llm, _embedding = offline_models_on(team, "http://127.0.0.1:9")
    assistant = assistant_create(team=team, name="Helper", llm=llm)
    return conversation_create(team=team, owner=member_of(team, Role.OWNER), assistant=assistant, is_room=True)


@pytest.fixture
def no_periodic_recheck(settings: Any) -> None:
    """Only the membership services' push (or the user's own message) can cut the socket off."""
    settings.ROOM_ACCESS_RECHECK_S = 3600


class Socket:
    """A signed-in user's room socket that keeps every event and the close it ends with. Made in
    sync code (signing in touches the database), used in async code."""

    def __init__(self, user: User, room: Conversation) -> None:
        from chatplatform.asgi import application

        self.headers = _headers(user)
        self.room_id = room.pk
        self.communicator = WebsocketCommunicator(application, f"/ws/rooms/{room.pk}/", headers=self.headers)
        self.events: list[dict[str, Any]] = []
        self.close: dict[str, Any] | None = None

    async def open(self) -> None:
        connected, code = await self.communicator.connect()
        assert connected, code
        assert (await self.next_event())["type"] == "history"

    async def next_event(self, timeout: float = 10) -> dict[str, Any]:
        """The next event other than presence; {"type": "closed"} once the server closed."""
        while True:
            output = await self.communicator.receive_output(timeout=timeout)
            if output["type"] == "websocket.close":
                self.close = output
                return {"type": "closed"}
            event = json.loads(output["text"])
            if event["type"] != "presence":
                self.events.append(event)
                return event

    async def send(self, content: str) -> dict[str, Any]:
        await self.communicator.send_json_to({"type": "message", "content": content})
        return await self.next_event()

    async def wait_closed(self, timeout: float) -> float:
        """Seconds until the server closed the socket, reading whatever comes before."""
        started = time.monotonic()
        while (await self.next_event(timeout=timeout))["type"] != "closed":
            pass
        return time.monotonic() - started


def run_scenario(socket: Socket, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run `scenario` and then disconnect the socket while the test's thread still serves
    thread-sensitive calls: a consumer left running past async_to_sync waits forever on a database
    call that thread no longer answers, and the test hangs in asyncio's final task cancellation."""

    async def scenario_then_disconnect() -> T:
        try:
            return await scenario()
        finally:
            await socket.communicator.disconnect()

    return async_to_sync(scenario_then_disconnect)()


def assert_cut_off(socket: Socket) -> None:
    assert socket.close is not None
    assert socket.close["code"] == ACCESS_ENDED_CODE
    assert socket.close["reason"] == ACCESS_ENDED_MESSAGE  # what the page shows
    assert {"type": "error", "message": ACCESS_ENDED_MESSAGE} in socket.events


async def reconnect_code(socket: Socket) -> int:
    from chatplatform.asgi import application

    communicator = WebsocketCommunicator(application, f"/ws/rooms/{socket.room_id}/", headers=socket.headers)
    connected, code = await communicator.connect()
    assert not connected
    return int(code)


def test_a_removed_member_is_cut_off_within_seconds_without_sending_anything(
    team: Any, room: Conversation, no_periodic_recheck: None
) -> None:
    member = member_of(team)
    owner = room.owner

    socket = Socket(member, room)

    async def scenario() -> float:
        await socket.open()
        await sync_to_async(membership_remove)(team=team, user=member)
        cut_after = await socket.wait_closed(timeout=PUSH_WITHIN_S)
        assert_cut_off(socket)
        # The socket left the room's group with the cut: a later message does not reach it.
        await sync_to_async(room_message_post)(conversation=room, author=owner, content="after the cut")
        assert await socket.communicator.receive_nothing(timeout=0.5)
        assert await reconnect_code(socket) == 4404
        return cut_after

    cut_after = run_scenario(socket, scenario)
    print(f"removed member cut off {cut_after * 1000:.0f} ms after membership_remove returned")
    assert cut_after < PUSH_WITHIN_S


def test_a_demoted_member_can_read_but_no_longer_post_or_ask_the_assistant(
    team: Any, room: Conversation, no_periodic_recheck: None
) -> None:
    member = member_of(team)
    owner = room.owner

    socket = Socket(member, room)

    async def scenario() -> None:
        await socket.open()
        await sync_to_async(membership_set)(team=team, user=member, role=Role.VIEWER)
        assert await socket.next_event(timeout=PUSH_WITHIN_S) == {"type": "error", "message": DEMOTED_MESSAGE}
        assert await socket.send("still here?") == {"type": "error", "message": VIEWER_MESSAGE}
        # A question to the assistant would start an answer the team pays for.
        assert await socket.send("@assistant what now?") == {"type": "error", "message": VIEWER_MESSAGE}
        await sync_to_async(room_message_post)(conversation=room, author=owner, content="read on")
        event = await socket.next_event()
        assert event["type"] == "message"
        assert "read on" in event["html"]

    run_scenario(socket, scenario)
    assert list(room.messages.values_list("author_id", flat=True)) == [owner.pk]


def test_each_message_rechecks_access_even_when_nobody_announced_the_change(
    team: Any, room: Conversation, no_periodic_recheck: None
) -> None:
    """Changes made behind the services' back (the admin console, a shell, SQL) count as soon as
    the user sends something."""
    member = member_of(team)
    memberships = Membership.objects.filter(team=team, user=member)

    socket = Socket(member, room)

    async def scenario() -> None:
        await socket.open()
        await sync_to_async(memberships.update)(role=Role.VIEWER)
        assert await socket.send("hello") == {"type": "error", "message": DEMOTED_MESSAGE}
        assert await socket.next_event() == {"type": "error", "message": VIEWER_MESSAGE}
        await sync_to_async(memberships.delete)()
        assert await socket.send("hello again") == {"type": "error", "message": ACCESS_ENDED_MESSAGE}
        await socket.wait_closed(timeout=PUSH_WITHIN_S)
        assert_cut_off(socket)

    run_scenario(socket, scenario)
    assert not room.messages.exists()


def test_a_deactivated_user_is_cut_off_by_the_periodic_recheck(team: Any, room: Conversation, settings: Any) -> None:
    """Deactivating happens in the admin console, outside any service: the socket's own re-check
    (ROOM_ACCESS_RECHECK_S, default 5 s) finds it while the user sends nothing."""
    member = member_of(team)
    interval = settings.ROOM_ACCESS_RECHECK_S
    assert interval == 5  # the default, so this measures what an operator gets

    socket = Socket(member, room)

    async def scenario() -> float:
        await socket.open()
        await sync_to_async(User.objects.filter(pk=member.pk).update)(is_active=False)
        cut_after = await socket.wait_closed(timeout=interval + PUSH_WITHIN_S)
        assert_cut_off(socket)
        return cut_after

    cut_after = run_scenario(socket, scenario)
    print(f"deactivated user cut off {cut_after:.1f} s after the change (re-check every {interval} s)")
    assert cut_after < interval + PUSH_WITHIN_S
