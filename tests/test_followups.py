"""A follow-up is searched with the previous question; a question that stands alone, as asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat.followups import depends_on_history, retrieval_query

QUESTIONS = Path(__file__).resolve().parent.parent / "bench" / "questions"


@pytest.mark.parametrize(
    ("question", "follows_up"),
    [
        ("and how do I undo it?", True),
        ("what about for a whole directory?", True),
        ("why?", True),
        ("那硬链接呢？", True),
        ("加密完之后要怎么解开？", True),
        ("how do I read a csv file into dictionaries?", False),
        ("怎么用 gpg 给文件加个口令做对称加密？", False),
    ],
)
def test_a_question_that_points_back_is_a_follow_up(question: str, follows_up: bool) -> None:
    assert depends_on_history(question) is follows_up


def test_a_follow_up_is_searched_with_the_previous_question_and_a_new_question_as_asked() -> None:
    history = ["how do I open a zip file?", "how do I list what is in it?"]
    assert retrieval_query(history, "now extract just one of those files") == (
        "how do I list what is in it? now extract just one of those files"
    )
    assert retrieval_query(history, "how do I parse JSON in python?") == "how do I parse JSON in python?"
    assert retrieval_query([], "and then?") == "and then?"


@pytest.mark.parametrize("name", ["python-en-followups.jsonl", "debian-zh-followups.jsonl"])
def test_the_committed_follow_ups_are_recognised_and_their_standalone_forms_are_not(name: str) -> None:
    items = [json.loads(line) for line in (QUESTIONS / name).read_text().splitlines() if line.strip()]
    recognised = sum(depends_on_history(item["question"]) for item in items)
    standalone_flagged = sum(depends_on_history(item["standalone_question"]) for item in items)
    assert recognised >= len(items) - 2
    assert standalone_flagged < recognised
