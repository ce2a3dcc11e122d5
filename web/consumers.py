"""Team rooms over WebSockets (Channels, Redis channel layer): every member in the room sees
every message and the assistant's answer as it is written, and who is online.

Client → server: `{"type": "message", "content": "..."}`; a message that mentions @assistant
(or the assistant's name after @) is answered in the room.
Server → client: `history` (messages after the client's `?since=` id: the catch-up after a
reconnect), `message` (a finished message as HTML), `answer_start`, `token`, `answer_end`,
`presence` and `error`. Each connection renders HTML itself, in its own user's language, from
the same templates as the page (sanitised markdown).

Access is checked at connect and again before every message the client sends, when the
membership services say the user's role changed (chat.rooms.room_access_changed), and every
ROOM_ACCESS_RECHECK_S (changes made elsewhere, such as the admin console deactivating a user). A
user who is no longer a member, or is deactivated, gets an `error` and the socket closes with
code 4403 and the same message as the close reason; a member demoted to viewer can read on but
no longer post or start answers, which the team pays for."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import parse_qs

import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils import translation

from accounts.models import ROLE_RANK, Membership, Role, User
from accounts.selectors import has_team_role
from chat.api import MAX_MESSAGE_CHARS
from chat.models import Conversation, Message
from chat.rooms import room_group, room_user_group
from chat.selectors import conversations_visible
from chat.services import PreparedTurn, room_message_post, turn_prepare
from chat.streaming import answer_event_items
from core.domain_errors import DomainError
from web.views.chat import message_context

logger = logging.getLogger(__name__)

HISTORY_ON_JOIN = 50
PRESENCE_TTL_S = 24 * 3600
# Close code for "your access ended" (4401: not signed in, 4404: no such room for you); the page
# shows the close reason and does not reconnect.
ACCESS_ENDED_CODE = 4403
ACCESS_ENDED_MESSAGE = "You are no longer a member of this team: ask a team admin to add you again."
DEMOTED_MESSAGE = "You are now a viewer in this team: you can read this room but no longer write in it."
VIEWER_MESSAGE = "Viewers cannot write in rooms: ask a team admin to make you a member."
# Answers outlive the connection of the member who asked: the room keeps watching them.
_running_answers: set[asyncio.Task[None]] = set()


def mentions_assistant(content: str, assistant_name: str) -> bool:
    names = {"assistant", assistant_name.lower().replace(" ", "")}
    return any(mention.lower() in names for mention in re.findall(r"@([\w.-]+)", content))


def _room_for(user: User, conversation_id: int) -> Conversation | None:
    return (
        conversations_visible(user=user, queryset=Conversation.objects.select_related("assistant"))
        .filter(pk=conversation_id, is_room=True)
        .first()
    )


def _current_role(user_id: int, team_id: int) -> Role | None:
    """The user's role in the team now; None once they left it or their account is deactivated.
    One indexed lookup, cheap enough to run before every message a socket sends."""
    role = (
        Membership.objects.filter(team_id=team_id, user_id=user_id, user__is_active=True)
        .values_list("role", flat=True)
        .first()
    )
    return Role(role) if role is not None else None


def _render_messages(ids: list[int] | None, conversation_id: int, since: int, language: str) -> list[dict[str, Any]]:
    messages = Message.objects.filter(conversation_id=conversation_id).select_related("author")
    if ids is not None:
        messages = messages.filter(pk__in=ids)
    else:
        messages = messages.filter(pk__gt=since).order_by("-pk")[:HISTORY_ON_JOIN]
    with translation.override(language):
        return [
            {
                "id": message.pk,
                "status": message.status,
                "html": render_to_string("web/chat/message.html", message_context(message)),
            }
            for message in sorted(messages, key=lambda message: message.pk)
        ]


def _presence_client() -> aioredis.Redis:
    return aioredis.from_url(settings.REDIS_URL, decode_responses=True)


class RoomConsumer(AsyncJsonWebsocketConsumer):
    conversation: Conversation
    group: str
    user_group: str
    can_write: bool
    language: str
    access_ended = False
    watcher: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not isinstance(user, User):
            await self.close(code=4401)
            return
        conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        room = await database_sync_to_async(_room_for)(user, conversation_id)
        if room is None:
            await self.close(code=4404)
            return
        self.conversation = room
        self.group = room_group(room.pk)
        self.user_group = room_user_group(user.pk)
        self.can_write = await database_sync_to_async(has_team_role)(
            user=user, api_key=None, team_id=room.team_id, role=Role.MEMBER
        )
        self.language = user.language or translation.get_language_from_request(_language_request(self.scope))
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_add(self.user_group, self.channel_name)
        await self.accept()
        self.watcher = asyncio.create_task(self._recheck_periodically())
        since = _since(self.scope)
        history = await database_sync_to_async(_render_messages)(None, room.pk, since, self.language)
        await self.send_json({"type": "history", "messages": history})
        await self._presence_change(add=True)

    async def disconnect(self, code: int) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        if not hasattr(self, "group"):
            return
        await self._leave_groups()
        await self._presence_change(add=False)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not await self._access_still_held():
            return
        text = content.get("content") if isinstance(content, dict) and content.get("type") == "message" else None
        if not isinstance(text, str):
            await self._error('Send {"type": "message", "content": "..."}.')
            return
        if not self.can_write:
            await self._error(VIEWER_MESSAGE)
            return
        if not text.strip() or len(text) > MAX_MESSAGE_CHARS:
            await self._error(f"Write a message of 1 to {MAX_MESSAGE_CHARS} characters.")
            return
        user = self.scope["user"]
        try:
            if mentions_assistant(text, self.conversation.assistant.name):
                turn = await database_sync_to_async(turn_prepare)(
                    conversation=self.conversation, author=user, content=text
                )
                await self._broadcast({"type": "room.message", "id": turn.question_message_id})
                task = asyncio.create_task(_answer_in_room(self.channel_layer, self.group, turn))
                _running_answers.add(task)
                task.add_done_callback(_running_answers.discard)
            else:
                # room_message_post tells the room itself, once the message is committed.
                await database_sync_to_async(room_message_post)(
                    conversation=self.conversation, author=user, content=text
                )
        except DomainError as exc:
            await self._error(str(exc))

    # --- group events, one handler per type ------------------------------------------------------

    async def room_message(self, event: dict[str, Any]) -> None:
        rendered = await database_sync_to_async(_render_messages)([event["id"]], self.conversation.pk, 0, self.language)
        if rendered:
            await self.send_json({"type": "message", **rendered[0]})

    async def room_answer_start(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "answer_start", "message_id": event["message_id"]})

    async def room_token(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "token", "message_id": event["message_id"], "text": event["text"]})

    async def room_answer_end(self, event: dict[str, Any]) -> None:
        rendered = await database_sync_to_async(_render_messages)(
            [event["message_id"]], self.conversation.pk, 0, self.language
        )
        if rendered:
            await self.send_json({"type": "answer_end", "message_id": event["message_id"], **rendered[0]})

    async def room_presence(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "presence", "users": event["users"]})

    async def room_access(self, event: dict[str, Any]) -> None:
        """The membership services changed this user's role (chat.rooms.room_access_changed)."""
        if event.get("team_id") in (None, self.conversation.team_id):
            await self._access_still_held()

    async def send_json(self, content: Any, close: bool = False) -> None:
        # Group events already queued for this socket still arrive after it was cut off.
        if not self.access_ended:
            await super().send_json(content, close=close)

    # --- access ----------------------------------------------------------------------------------

    async def _access_still_held(self) -> bool:
        """Re-read the user's role; cut the socket off when it is gone, follow a demotion or
        promotion. False when the socket was cut off."""
        if self.access_ended:
            return False
        role = await database_sync_to_async(_current_role)(self.scope["user"].pk, self.conversation.team_id)
        if role is None:
            await self._end_access()
            return False
        can_write = ROLE_RANK[role] >= ROLE_RANK[Role.MEMBER]
        if self.can_write and not can_write:
            await self._error(DEMOTED_MESSAGE)
        self.can_write = can_write
        return True

    async def _end_access(self) -> None:
        if self.access_ended:  # the periodic re-check and a handler may both find it
            return
        self.access_ended = True
        await super().send_json({"type": "error", "message": ACCESS_ENDED_MESSAGE})
        # Out of the groups now, not when the client acknowledges the close: nothing more reaches it.
        await self._leave_groups()
        await self.close(code=ACCESS_ENDED_CODE, reason=ACCESS_ENDED_MESSAGE)

    async def _recheck_periodically(self) -> None:
        """The backstop for changes the services did not announce (admin console, shell, SQL)."""
        interval = settings.ROOM_ACCESS_RECHECK_S
        if interval <= 0:
            return
        while not self.access_ended:
            await asyncio.sleep(interval)
            try:
                await self._access_still_held()
            except Exception:  # the database is unreachable for now: keep the socket, look again later
                logger.warning("could not re-check room access on %s", self.channel_name, exc_info=True)

    # --- helpers ---------------------------------------------------------------------------------

    async def _leave_groups(self) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await self.channel_layer.group_discard(self.user_group, self.channel_name)

    async def _broadcast(self, event: dict[str, Any]) -> None:
        await self.channel_layer.group_send(self.group, event)

    async def _error(self, message: str) -> None:
        await self.send_json({"type": "error", "message": message})

    async def _presence_change(self, *, add: bool) -> None:
        key = f"chatplatform:room-presence:{self.conversation.pk}"
        client = _presence_client()
        try:
            if add:
                await client.hset(key, self.channel_name, self.scope["user"].get_username())
                await client.expire(key, PRESENCE_TTL_S)
            else:
                await client.hdel(key, self.channel_name)
            names = sorted(set(await client.hvals(key)))
        finally:
            await client.aclose()
        await self._broadcast({"type": "room.presence", "users": names})


async def _answer_in_room(channel_layer: Any, group: str, turn: PreparedTurn) -> None:
    """Stream the assistant's answer to everyone in the room, token by token."""
    message_id = turn.assistant_message_id
    await channel_layer.group_send(group, {"type": "room.answer_start", "message_id": message_id})
    try:
        async for event, data in answer_event_items(turn):
            if event == "token":
                await channel_layer.group_send(
                    group, {"type": "room.token", "message_id": message_id, "text": data["text"]}
                )
    except Exception:  # answer_event_items reports model failures itself; this is anything else
        logger.exception("the room answer %s failed", message_id)
    await channel_layer.group_send(group, {"type": "room.answer_end", "message_id": message_id})


def _since(scope: dict[str, Any]) -> int:
    values = parse_qs(scope.get("query_string", b"").decode()).get("since", ["0"])
    try:
        return max(0, int(values[0]))
    except ValueError:
        return 0


def _language_request(scope: dict[str, Any]) -> HttpRequest:
    """An HttpRequest with just what Django's language negotiation reads: the language cookie and
    Accept-Language, from the WebSocket handshake."""
    request = HttpRequest()
    headers = {name.decode().lower(): value.decode() for name, value in scope.get("headers", [])}
    request.META["HTTP_ACCEPT_LANGUAGE"] = headers.get("accept-language", "")
    cookie = scope.get("cookies", {}).get(settings.LANGUAGE_COOKIE_NAME)
    if cookie:
        request.COOKIES[settings.LANGUAGE_COOKIE_NAME] = cookie
    return request
