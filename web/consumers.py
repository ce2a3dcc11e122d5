"""Team rooms over WebSockets."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class RoomConsumer(AsyncJsonWebsocketConsumer):
    pass
