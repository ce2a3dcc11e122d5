"""A document's chunks grouped into embedding requests of similar length.

An embedding model pads every sequence of a forward pass to the longest one in it: in document
order a request mixes 20-token list items with paragraphs cut at the model's window, and on the
100 bench documents a fifth of the model's work was padding (712k tokens computed for 570k real
ones). Smaller requests of similar lengths waste less, but each request costs its own overhead:
about 80 ms on the embedded Xinference, as long as the model takes for some 500 tokens on these
2 cores. So the chunks are sorted by length and cut into the requests that minimise the tokens
computed plus REQUEST_COST_TOKENS per request (a short dynamic programme over the sorted lengths).

Measured on the 100 bench documents' 3,269 chunks, one request at a time (`make bench`'s floor):
in document order, 64 a request, 137 s; this, 114-122 s (173-215 requests).

Lengths are counted with the model's own tokenizer when its registration points at one (capped at
the model's window, where anything longer is cut anyway), else estimated from characters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kb.splitting import token_counter, tokenizer_path_for

REQUEST_COST_TOKENS = 1000
CHARACTERS_PER_TOKEN = 4  # the estimate when the model's tokenizer is not on this machine


def embedding_lengths(texts: Sequence[str], custom_spec: dict[str, Any] | None) -> list[int]:
    """How many tokens the embedding model computes for each text (at least 1)."""
    tokenizer_path = tokenizer_path_for(custom_spec)
    if tokenizer_path is None:
        return [max(1, len(text) // CHARACTERS_PER_TOKEN) for text in texts]
    count = token_counter(tokenizer_path)
    window = int((custom_spec or {}).get("max_tokens") or 0)
    # +2: the model adds its start and end tokens, and the window counts them.
    lengths = [count(text) + 2 for text in texts]
    return [min(length, window) for length in lengths] if window else lengths


def embedding_batches(lengths: Sequence[int], max_batch: int) -> list[list[int]]:
    """Indexes into `lengths`, longest first, cut into requests of at most `max_batch` that
    minimise the padded tokens (each request's longest times its size) plus the requests' cost."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index], reverse=True)
    # best[end]: the least cost of the first `end` chunks of `order`; cut[end]: where its last
    # request starts. A request's padded tokens are its first (longest) length times its size.
    best = [0] * (len(order) + 1)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        candidates = (
            (best[start] + lengths[order[start]] * (end - start) + REQUEST_COST_TOKENS, start)
            for start in range(max(0, end - max_batch), end)
        )
        best[end], cut[end] = min(candidates)
    batches: list[list[int]] = []
    end = len(order)
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]
