"""Hybrid fusion's weights: a Chinese question over a knowledge base whose embedding model does not
cover Chinese leans on full text; every other question fuses the two lists equally."""

from __future__ import annotations

import pytest

from kb.fulltext import cjk_share
from kb.models import KnowledgeBase
from kb.retrieval import UNCOVERED_LANGUAGE_FULLTEXT_WEIGHT, Hit, fulltext_weight, reciprocal_rank_fusion
from models_registry.models import ModelRegistration


def knowledge_base(languages: list[str] | None) -> KnowledgeBase:
    spec = {"model_name": "e", "language": languages} if languages is not None else None
    return KnowledgeBase(embedding_model=ModelRegistration(kind="embedding", custom_spec=spec))


def hit(chunk_id: int) -> Hit:
    return Hit(chunk_id, chunk_id, f"{chunk_id}.txt", 1, "text", {}, 0.0)


@pytest.mark.parametrize(
    ("text", "share"),
    [("how do I install a package", 0.0), ("如何安装软件包", 1.0), ("apt 安装", 0.4), ("", 0.0), ("？！", 0.0)],
)
def test_cjk_share_counts_letters_and_digits_only(text: str, share: float) -> None:
    assert cjk_share(text) == pytest.approx(share)


def test_full_text_weighs_more_only_for_chinese_over_a_model_without_chinese() -> None:
    english_only = knowledge_base(["en"])
    assert fulltext_weight([english_only], "如何安装软件包") == UNCOVERED_LANGUAGE_FULLTEXT_WEIGHT
    assert fulltext_weight([english_only], "how do I install a package") == 1.0
    assert 1.0 < fulltext_weight([english_only], "apt 安装") < UNCOVERED_LANGUAGE_FULLTEXT_WEIGHT
    assert fulltext_weight([knowledge_base(["en", "zh"])], "如何安装软件包") == 1.0
    # Languages not recorded: the fusion stays as it was.
    assert fulltext_weight([knowledge_base(None)], "如何安装软件包") == 1.0
    # Searching several knowledge bases, one model without Chinese is enough.
    assert fulltext_weight([knowledge_base(["zh"]), english_only], "如何安装软件包") > 1.0


def test_weights_decide_between_the_lists_first_places() -> None:
    vector, full_text = [hit(1), hit(2)], [hit(2), hit(1)]
    equal = reciprocal_rank_fusion([vector, full_text])
    assert [h.chunk_id for h in equal] == [1, 2]  # equal scores: chunk order
    assert equal[0].score == equal[1].score
    leaning = reciprocal_rank_fusion([vector, full_text], [1.0, 3.0])
    assert [h.chunk_id for h in leaning] == [2, 1]
    assert leaning[0].score > leaning[1].score
