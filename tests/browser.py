"""Browser tests' helpers: a signed-in page, screenshots under test-output/, a live-server URL."""

from __future__ import annotations

import re
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


# What a person must never read on a page: Python reprs (a dict, a model instance), escaped or raw
# markup that should have been rendered, a traceback, a template variable left unfilled.
PYTHON_REPR = re.compile(r"\{'\w+': |<\w+: [^>]*>|Traceback \(most recent call last\)|\{\{ ?\w")
RAW_MARKUP = re.compile(r"</?(p|div|span|ul|li|code|pre|strong|em|a|h[1-6]|br)( [^>]*)?/?>|&(lt|gt|amp|quot|#\d+);")


def assert_reads_clean(page: Any, *, markup_expected: bool = False) -> None:
    """Fail when the page shows a person something that is not meant for them. Pages that show
    hostile text on purpose (markup typed by a user, shown as text) pass `markup_expected`."""
    text = page.locator("body").inner_text()
    found = PYTHON_REPR.search(text)
    assert found is None, f"the page shows a Python repr or template residue: {_around(text, found)!r}"
    if not markup_expected:
        found = RAW_MARKUP.search(text)
        assert found is None, f"the page shows markup as text: {_around(text, found)!r}"


def _around(text: str, found: re.Match[str] | None) -> str:
    return "" if found is None else text[max(0, found.start() - 80) : found.end() + 80]


def screenshot(page: Any, name: str, *, markup_expected: bool = False) -> Path:
    """Every screen a browser test shows is also read as a person would (`assert_reads_clean`)."""
    assert_reads_clean(page, markup_expected=markup_expected)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
