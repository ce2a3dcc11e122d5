"""WebSocket routes (chatplatform.asgi)."""

from django.urls import path

from web.consumers import RoomConsumer

websocket_urlpatterns = [path("ws/rooms/<int:conversation_id>/", RoomConsumer.as_asgi())]
