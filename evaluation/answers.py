"""Answer scoring, optional on a run and labelled model-judged: the team's chat model answers each
question from the chunks the run's first mode retrieved (the first five, numbered, as chat gives
them), then:

- answer_contains: the expected answer string occurs in the answer (case-insensitive);
- cites_expected_document: a citation [n] in the answer points at a chunk of an expected document;
- faithfulness: the same model, shown the sources and the answer, says every claim is supported.

The first two are string checks of a model's answer, the third is the model's own judgement: a
small model judges leniently, so the figures compare runs with one model, not models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage

from chat import prompts
from chat.services import invoke_metered
from models_registry.models import ModelRegistration

ANSWER_SOURCES = 5
ANSWER_MAX_TOKENS = 200
JUDGE_MAX_TOKENS = 5
JUDGE_SYSTEM = (
    "You check an answer against its sources. Reply YES if every claim in the answer is supported by "
    "the sources, NO otherwise. Reply with one word."
)
ANSWER_METRICS_KEY = "answers (model-judged)"
CITATION = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class AnswerScore:
    text: str
    contains: bool | None
    cites_expected: bool
    faithful: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "contains": self.contains,
            "cites_expected": self.cites_expected,
            "faithful": self.faithful,
        }


def score_answer(
    *,
    llm: ModelRegistration,
    question: str,
    sources: Sequence[tuple[str, str]],
    expected_documents: Sequence[str],
    expected_answer: str,
    team_id: int,
    user_id: int,
) -> AnswerScore:
    """`sources`: (document name, chunk text) in rank order."""
    shown = list(sources)[:ANSWER_SOURCES]
    numbered = "\n\n".join(f"[{index}] ({name}) {text}" for index, (name, text) in enumerate(shown, start=1))
    reply = invoke_metered(
        llm=llm,
        prompt=[SystemMessage(prompts.ANSWER_WITH_SOURCES.format(sources=numbered)), HumanMessage(question)],
        max_tokens=ANSWER_MAX_TOKENS,
        team_id=team_id,
        user_id=user_id,
    )
    answer = str(reply.content).strip()
    cited = {int(number) for number in CITATION.findall(answer)}
    verdict = invoke_metered(
        llm=llm,
        prompt=[SystemMessage(JUDGE_SYSTEM), HumanMessage(f"Sources:\n{numbered}\n\nAnswer:\n{answer}")],
        max_tokens=JUDGE_MAX_TOKENS,
        team_id=team_id,
        user_id=user_id,
    )
    return AnswerScore(
        text=answer,
        contains=expected_answer.lower() in answer.lower() if expected_answer else None,
        cites_expected=any(
            1 <= number <= len(shown) and shown[number - 1][0] in expected_documents for number in cited
        ),
        faithful=str(verdict.content).strip().upper().startswith("YES"),
    )


def summarize_answers(scores: Sequence[AnswerScore]) -> dict[str, float | None]:
    if not scores:
        return {"answer_contains": None, "cites_expected_document": None, "faithfulness": None}
    checked = [score.contains for score in scores if score.contains is not None]
    return {
        "answer_contains": round(sum(checked) / len(checked), 4) if checked else None,
        "cites_expected_document": round(sum(score.cites_expected for score in scores) / len(scores), 4),
        "faithfulness": round(sum(score.faithful for score in scores) / len(scores), 4),
    }
