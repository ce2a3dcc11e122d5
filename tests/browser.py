"""Browser tests' helpers: a signed-in page, screenshots under test-output/, a live-server URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.test import Client

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


def signed_in_context(browser: Any, base_url: str, user: Any, *, locale: str = "en-US", phone: bool = False) -> Any:
    """A browser context with `user`'s session cookie (the login form itself is tested once)."""
    client = Client()
    client.force_login(user)
    context = browser.new_context(base_url=base_url, locale=locale, viewport=PHONE if phone else DESKTOP)
    host = base_url.split("//", 1)[1].split(":")[0]
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie.value, "domain": host, "path": "/"}])
    return context


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
