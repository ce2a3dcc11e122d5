"""Model answers and document text as safe HTML: markdown rendered with raw HTML disabled, code
highlighted by Pygments, then sanitised by nh3 (an allow-list). Images load only from the platform
itself, so an answer cannot carry data out through an image URL; links open outside the page."""

from __future__ import annotations

import re
from typing import Any

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "strong",
    "em",
    "del",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "img",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
    "div",
    "sup",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "class", "data-cite"},
    "img": {"src", "alt", "title"},
    "span": {"class"},
    "div": {"class"},
    "code": {"class"},
    "pre": {"class"},
    "th": {"align"},
    "td": {"align"},
    "ol": {"start"},
}
# [1], [2] in an answer, not when it is already a markdown link's text or target.
CITATION_MARK = re.compile(r"\[(\d{1,3})\](?![(\[])")


def _highlight(code: str, language: str, _attrs: Any) -> str:
    try:
        lexer = get_lexer_by_name(language) if language else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return ""  # markdown-it escapes and wraps it itself
    return highlight(code, lexer, HtmlFormatter(nowrap=True, classprefix="hl-"))


_markdown = MarkdownIt("commonmark", {"html": False, "highlight": _highlight}).enable(["table", "strikethrough"])


def _is_own_url(value: str) -> bool:
    return value.startswith("/") and not value.startswith("//") and "\\" not in value


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if tag == "img" and attribute == "src":
        return value if _is_own_url(value) else None
    return value


def sanitize_html(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        attribute_filter=_attribute_filter,
    )


def render_markdown(text: str, citation_urls: dict[int, str] | None = None) -> SafeString:
    """Markdown → sanitised HTML; `[n]` becomes a link to source n when `citation_urls` has it."""
    if citation_urls:

        def link(match: re.Match[str]) -> str:
            url = citation_urls.get(int(match.group(1)))
            return f"[\\[{match.group(1)}\\]]({url})" if url else match.group(0)

        text = CITATION_MARK.sub(link, text)
    # Safe to put in a template as is: raw HTML is off in the parser and the result is sanitised.
    return mark_safe(sanitize_html(_markdown.render(text)))  # noqa: S308
