"""ASGI entry point: `uvicorn chatplatform.asgi:application`."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")

application = get_asgi_application()
