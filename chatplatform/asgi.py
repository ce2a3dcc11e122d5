"""ASGI entry point: `uvicorn chatplatform.asgi:application`. HTTP goes to Django, except /mcp
and /mcp/, the MCP server (integrations.mcp_server); WebSockets (team rooms) go to Channels
consumers, signed in by the same session cookie."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")

django_application = get_asgi_application()  # sets Django up before the consumers import models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chatplatform.body_limits import BodySizeLimit  # noqa: E402
from integrations.mcp_server import is_mcp_path, mcp_application  # noqa: E402
from web.routing import websocket_urlpatterns  # noqa: E402


async def http_application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """MCP over streamable HTTP at /mcp/ (a stateless server of its own, beside Django); the rest to Django."""
    if is_mcp_path(scope["path"]):
        await mcp_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)


application = ProtocolTypeRouter(
    {
        # Bodies over their cap are refused before Django or the MCP server reads them
        # (chatplatform.body_limits).
        "http": BodySizeLimit(http_application),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
