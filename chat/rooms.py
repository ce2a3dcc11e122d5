"""Telling a team room's open WebSockets (web.consumers.RoomConsumer) that messages were saved."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def room_group(conversation_id: int) -> str:
    return f"room.{conversation_id}"


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
