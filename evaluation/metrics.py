"""Retrieval metrics at document level (README, "Evaluation": the formulas).

A search returns chunks; a question is answered by documents. The ranked list scored is the
distinct documents of the returned chunks in order of their first chunk, so two chunks of one page
count once. Relevance is binary: a document is relevant when its file name is one of the item's
expected documents."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

METRIC_NAMES = (
    "recall@1",
    "recall@5",
    "recall@10",
    "mrr@10",
    "ndcg@10",
    "answer_in_chunk@5",
    "latency_p50_ms",
    "latency_p95_ms",
)
ANSWER_DEPTH = 5  # answer_in_chunk looks at the chunks a chat answer is given by default


def ranked_documents(chunk_documents: Sequence[str]) -> list[str]:
    """The distinct documents of a ranked chunk list, in order of first appearance."""
    return list(dict.fromkeys(chunk_documents))


def first_rank(chunk_documents: Sequence[str], expected: Sequence[str]) -> int | None:
    """1-based rank of the first expected document among the distinct documents, or None."""
    wanted = set(expected)
    for rank, name in enumerate(ranked_documents(chunk_documents), start=1):
        if name in wanted:
            return rank
    return None


def ndcg(chunk_documents: Sequence[str], expected: Sequence[str], depth: int = 10) -> float:
    """Binary-relevance nDCG@depth over the distinct documents: DCG = sum of 1/log2(rank + 1) over
    the relevant documents within depth, divided by the DCG of a perfect list (every expected
    document first)."""
    wanted = set(expected)
    gains = [
        1 / math.log2(rank + 1)
        for rank, name in enumerate(ranked_documents(chunk_documents)[:depth], start=1)
        if name in wanted
    ]
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(wanted), depth) + 1))
    return sum(gains) / ideal if ideal else 0.0


def collapse_whitespace(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def answer_found(chunk_texts: Sequence[str], answer: str, depth: int = ANSWER_DEPTH) -> bool | None:
    """Whether the expected answer occurs (whitespace-insensitive) in one of the first `depth`
    chunks; None when the item has no expected answer."""
    needle = collapse_whitespace(answer)
    if not needle:
        return None
    return any(needle in collapse_whitespace(text) for text in chunk_texts[:depth])


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1) of a non-empty list."""
    ordered = sorted(values)
    index = max(math.ceil(share * len(ordered)) - 1, 0)
    return ordered[index]


@dataclass(frozen=True)
class QuestionOutcome:
    rank: int | None
    ndcg: float
    answer_found: bool | None
    latency_ms: float


def summarize(outcomes: Sequence[QuestionOutcome]) -> dict[str, float | None]:
    """The metrics of one mode over a set's questions (None where nothing could be measured)."""
    if not outcomes:
        return dict.fromkeys(METRIC_NAMES)
    count = len(outcomes)

    def recall(depth: int) -> float:
        return sum(1 for outcome in outcomes if outcome.rank is not None and outcome.rank <= depth) / count

    answered = [outcome.answer_found for outcome in outcomes if outcome.answer_found is not None]
    latencies = [outcome.latency_ms for outcome in outcomes]
    return {
        "recall@1": round(recall(1), 4),
        "recall@5": round(recall(5), 4),
        "recall@10": round(recall(10), 4),
        "mrr@10": round(
            sum(1 / outcome.rank for outcome in outcomes if outcome.rank is not None and outcome.rank <= 10) / count,
            4,
        ),
        "ndcg@10": round(sum(outcome.ndcg for outcome in outcomes) / count, 4),
        "answer_in_chunk@5": round(sum(answered) / len(answered), 4) if answered else None,
        "latency_p50_ms": round(percentile(latencies, 0.5), 1),
        "latency_p95_ms": round(percentile(latencies, 0.95), 1),
    }
