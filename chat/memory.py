"""Token budgets for the prompt: estimates, the recent-turn window, and what to fold into the summary."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")


class TurnLike(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


def estimate_tokens(text: str) -> int:
    """About one token per CJK character and per four other characters: close enough for budgets
    across models whose tokenizers the platform does not have (a remote server's)."""
    cjk = len(CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def estimate_prompt_tokens(contents: Iterable[object]) -> int:
    """A prompt's tokens: each message's text plus about four for its role and separators."""
    return sum(estimate_tokens(str(content)) + 4 for content in contents)


def recent_window(turns: Sequence[TurnLike], budget: int) -> int:
    """How many of the newest turns fit in `budget` tokens (at least the newest one)."""
    used = 0
    count = 0
    for turn in reversed(turns):
        used += estimate_tokens(turn.content) + 4
        if used > budget and count > 0:
            break
        count += 1
    return count


def trim_to_budget(text: str, budget: int) -> str:
    """The end of `text` (the newest part) within `budget` tokens; an over-long message never crashes."""
    if estimate_tokens(text) <= budget:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high) // 2
        if estimate_tokens(text[middle:]) <= budget:
            high = middle
        else:
            low = middle + 1
    return "…" + text[low:]
