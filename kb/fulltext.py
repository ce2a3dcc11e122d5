"""Full-text search terms for Chinese and English alike: jieba segments CJK runs (search mode, so
both words and their parts are indexed), everything is lowercased, stop words are dropped, and
PostgreSQL's `simple` configuration then indexes the space-separated terms as they are."""

from __future__ import annotations

import functools
import logging
import re

ENGLISH_STOP_WORDS = (
    "a an and are as at be but by for from has have how i if in into is it its of on or that the their this to "
    "was were what when where which who why will with you your do does did can could should would"
)
CHINESE_STOP_WORDS = "的 了 是 在 和 与 及 或 也 就 都 而 之 其 这 那 有 为 以 于 对 吗 呢 吧 啊 什么 怎么 如何 哪些"
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS.split()) | frozenset(CHINESE_STOP_WORDS.split())
TERM = re.compile(r"\w+", re.UNICODE)
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@functools.lru_cache(maxsize=1)
def segmenter():  # type: ignore[no-untyped-def]
    """jieba with its dictionary loaded: about 1.4 s the first time in a process, so the worker
    loads it before forking its pool (workers/celery.py) instead of in a document's store stage."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def terms(text: str) -> list[str]:
    lowered = text.lower()
    pieces = segmenter().lcut_for_search(lowered) if CJK.search(lowered) else TERM.findall(lowered)
    return [piece for piece in pieces if TERM.fullmatch(piece) and piece not in STOP_WORDS]


def cjk_share(text: str) -> float:
    """The share of a text's letters and digits that are CJK characters (0 for English, 1 for a
    question written wholly in Chinese)."""
    cjk = len(CJK.findall(text))
    others = sum(1 for character in text if character.isalnum() and not CJK.match(character))
    return cjk / (cjk + others) if cjk else 0.0


def index_text(text: str) -> str:
    """What goes into to_tsvector('simple', ...) for a chunk."""
    return " ".join(terms(text))


MAX_QUERY_TERMS = 32


def query_terms(query: str) -> list[str]:
    """The query's distinct terms, as indexed (kb.retrieval weighs each by its rarity)."""
    return list(dict.fromkeys(terms(query)))[:MAX_QUERY_TERMS]
