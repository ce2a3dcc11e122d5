"""Telling a team room's open WebSockets (web.consumers.RoomConsumer) that messages were saved,
and that a member's access changed."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def room_group(conversation_id: int) -> str:
    return f"room.{conversation_id}"


def room_user_group(user_id: int) -> str:
    """Every room WebSocket a user has open, in any room and any web process."""
    return f"room-user.{user_id}"


def room_notify(*, conversation_id: int, message_ids: list[int]) -> None:
    """Each connection renders and sends the messages itself; a room nobody has open costs one
    publish. A broken channel layer must not fail the message that was already saved."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        for message_id in message_ids:
            async_to_sync(layer.group_send)(room_group(conversation_id), {"type": "room.message", "id": message_id})
    except Exception:
        logger.warning("could not tell room %s about messages %s", conversation_id, message_ids, exc_info=True)


def room_access_changed(*, user_id: int, team_id: int | None = None) -> None:
    """Ask the user's open room WebSockets (in `team_id`'s rooms, or all when None) to read the
    user's role again now: a removed or deactivated user is cut off, a viewer stops writing.

    Call it after the change commits. The event carries no role: each socket asks the database,
    so a stale or forged event cannot grant anything. When the channel layer is down the change
    still stands and the sockets' periodic re-check (ROOM_ACCESS_RECHECK_S) catches it."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(room_user_group(user_id), {"type": "room.access", "team_id": team_id})
    except Exception:
        logger.warning("could not tell user %s's room sockets that their access changed", user_id, exc_info=True)
