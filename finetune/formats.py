"""The row of each format, and the LLaMA-Factory `dataset_info.json` entry that names its columns.

Every file is JSON Lines (one object a line): LLaMA-Factory, XTuner and ms-swift read `.jsonl`
through `datasets.load_dataset("json")`, OpenAI's fine-tuning takes nothing else, and a writer
that never holds the whole array keeps memory flat.

A row is one kept answer. Multi-turn formats carry the conversation's earlier turns (at most
MAX_HISTORY_TURNS, the latest) before the question; alpaca carries them in `history`. The answer
the row is about is the last assistant turn: OpenAI's rows mark the earlier ones `weight: 0`;
LLaMA-Factory learns every turn unless trained with `mask_history: true`, ms-swift with
`--loss_scale last_round`. Alpaca's `input` stays empty: the question is the `instruction`, and
the passages the assistant was given are left out (the model is to learn the answers, not to
read them off a prompt it will not have)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune.models import DatasetFormat

MAX_HISTORY_TURNS = 8
MULTI_TURN = {
    DatasetFormat.ALPACA,
    DatasetFormat.SHAREGPT,
    DatasetFormat.OPENAI,
    DatasetFormat.SWIFT,
    DatasetFormat.XTUNER,
}
FILE_NAMES = {
    DatasetFormat.ALPACA: "alpaca.jsonl",
    DatasetFormat.SHAREGPT: "sharegpt.jsonl",
    DatasetFormat.OPENAI: "openai.jsonl",
    DatasetFormat.SWIFT: "swift.jsonl",
    DatasetFormat.XTUNER: "xtuner.jsonl",
    DatasetFormat.DPO: "dpo.jsonl",
    DatasetFormat.RETRIEVAL_TRIPLES: "triples.jsonl",
}


@dataclass(frozen=True)
class Example:
    """One kept answer, scrubbed: the system prompt, earlier (question, answer) turns, the
    question and the answer."""

    system: str
    history: Sequence[tuple[str, str]]
    question: str
    answer: str


def sft_row(format: str, example: Example) -> dict[str, Any]:
    turns = [*example.history, (example.question, example.answer)]
    if format == DatasetFormat.ALPACA:
        return {
            "instruction": example.question,
            "input": "",
            "output": example.answer,
            "system": example.system,
            "history": [[question, answer] for question, answer in example.history],
        }
    if format == DatasetFormat.SHAREGPT:
        conversation = []
        for question, answer in turns:
            conversation += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return {"conversations": conversation, "system": example.system}
    if format in (DatasetFormat.OPENAI, DatasetFormat.SWIFT):
        messages: list[dict[str, Any]] = [{"role": "system", "content": example.system}] if example.system else []
        last = len(turns) - 1
        for index, (question, answer) in enumerate(turns):
            reply: dict[str, Any] = {"role": "assistant", "content": answer}
            if format == DatasetFormat.OPENAI:
                reply["weight"] = 1 if index == last else 0
            messages += [{"role": "user", "content": question}, reply]
        return {"messages": messages}
    if format == DatasetFormat.XTUNER:
        conversation = [{"input": question, "output": answer} for question, answer in turns]
        if example.system:
            conversation[0] = {"system": example.system, **conversation[0]}
        return {"conversation": conversation}
    raise ValueError(f"{format} is not a supervised fine-tuning format")


def preference_row(*, question: str, chosen: str, rejected: str) -> dict[str, Any]:
    """LLaMA-Factory's alpaca preference row (`ranking: true`)."""
    return {"instruction": question, "input": "", "chosen": chosen, "rejected": rejected}


def triple_row(*, anchor: str, positive: str, negative: str) -> dict[str, Any]:
    """sentence-transformers' (anchor, positive, negative) columns, in that order: its losses
    read the columns by position (MultipleNegativesRankingLoss, TripletLoss)."""
    return {"anchor": anchor, "positive": positive, "negative": negative}


def dataset_info(format: str, *, key: str) -> dict[str, Any] | None:
    """The `dataset_info.json` of the LLaMA-Factory formats (alpaca, sharegpt, openai through
    sharegpt's tags, dpo); None for the others."""
    file_name = FILE_NAMES[DatasetFormat(format)]
    entry: dict[str, Any]
    if format == DatasetFormat.ALPACA:
        entry = {
            "file_name": file_name,
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "response": "output",
                "system": "system",
                "history": "history",
            },
        }
    elif format == DatasetFormat.SHAREGPT:
        entry = {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
        }
    elif format == DatasetFormat.OPENAI:
        entry = {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    elif format == DatasetFormat.DPO:
        entry = {
            "file_name": file_name,
            "ranking": True,
            "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
        }
    else:
        return None
    return {key: entry}
