"""`make drills`: failure drills on the embedded stack (issue 8). During an ingestion of DRILL_DOCS
documents (200) into a fresh knowledge base, one fault at a time:

1. worker: the ingest worker is SIGKILLed (its whole process group) mid-document, then started again;
2. redis: the embedded Redis is stopped (SIGTERM: it writes its append-only file) and started again;
3. xinference: Xinference is stopped for DRILL_OUTAGE_S (60) seconds and started again with no
   models; beat's reconcile task relaunches them, nobody else does;
4. postgres: the embedded PostgreSQL is stopped (fast shutdown) and started again.

After each: every document is ready or failed with a reason, no chunk is duplicated, the chat
messages answered 201 are all still there and no failed request left an answer behind, chat
answered 503 saying what to do while the model was down, and it answers again by itself.

The platform runs as `make run` runs it (runtime.supervisor.child_specs: uvicorn, a worker
for llm/default, one for ingest, beat) but without the supervisor, so the drills decide what dies
and when. Everything lives under var/drills/ (var/drills/var is wiped at the start; the processes'
logs are in var/drills/logs/). The report goes to stdout and var/drills/report.md; the exit code
is 1 when a drill found a problem.

tests/test_drills.py runs the same drills with small sizes inside `make test`, standing in for the
web process (requests in process) and for beat (`Stack.tick`).

Environment: DRILL_DOCS (200), DRILL_OUTAGE_S (60), DRILL_DOWN_S (5: how long Redis and PostgreSQL
stay down), DRILL_LEASE_S (the workers' KB_INGEST_LEASE_S; the platform's default when unset).
"""

from __future__ import annotations

import functools
import io
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

BASE_DIR = Path(__file__).resolve().parent.parent
# Run as a script, tests/ is on the path and the repository root is not.
sys.path.insert(0, str(BASE_DIR))

from realservices.processes import kill_group, stop_group  # noqa: E402  (after the path is set)

if TYPE_CHECKING:
    from accounts.models import Team, User
    from kb.models import KnowledgeBase
    from models_registry.models import ModelRegistration
    from realservices.xinference import XinferenceServer

DRILLS_DIR = BASE_DIR / "var" / "drills"
QUESTION = "What does the harbour log say about the lantern?"
CHAT_RETRY_S = 5.0  # between two chat attempts while waiting for chat to answer again
UNDER_WAY_TIMEOUT_S = 300.0
ACTIVE = ("queued", "parsing", "embedding")


class DrillError(Exception):
    """A drill could not get to its fault (the stack was not ready); the message says where."""


# --- what the drills act on ---------------------------------------------------------------------


@dataclass
class ChatReply:
    status: int  # 0: no HTTP answer at all
    body: dict[str, Any]
    seconds: float

    @property
    def message(self) -> str:
        error = self.body.get("error")
        return str(error.get("message", "")) if isinstance(error, dict) else ""

    @property
    def answered_by_the_model(self) -> bool:
        # A knowledge-base assistant that retrieves nothing answers a canned text without calling
        # the model (prompt_tokens 0): that would not show the model is back.
        return self.status == 201 and int(self.body.get("prompt_tokens") or 0) > 0

    def describe(self) -> str:
        text = self.message or str(self.body.get("raw", ""))[:120]
        return f"{self.status}: {text}" if text else str(self.status)

    @classmethod
    def of(cls, status: int, content_type: str, text: str, seconds: float) -> ChatReply:
        import json

        if content_type.startswith("application/json"):
            try:
                return cls(status, json.loads(text), seconds)
            except ValueError:
                pass
        return cls(status, {"raw": " ".join(text.split())}, seconds)


@dataclass
class Scene:
    """One drill's knowledge base, and a conversation with an assistant that searches it."""

    kb: KnowledgeBase
    conversation_id: int
    api_key: str


def _no_beat_needed() -> None:
    """Where beat runs (the bench), nobody needs to stand in for it."""


@dataclass
class Stack:
    """What the drills act on. The bench runs the platform's own processes; the tests stand in for
    the web (requests in process) and for beat (`tick`)."""

    var_dir: Path  # the embedded PostgreSQL and Redis live here
    xinference: XinferenceServer
    kill_worker: Callable[[], None]  # SIGKILL the worker that ingests, with its pool processes
    start_worker: Callable[[], None]  # returns once it answers a ping
    chat: Callable[[Scene, str], ChatReply]  # POST /api/v1/conversations/{id}/messages/, not streamed
    lease_s: float  # the workers' KB_INGEST_LEASE_S
    tick: Callable[[], None] = _no_beat_needed  # what beat does, called about once a second


@dataclass(frozen=True)
class Acknowledged:
    """A chat message the API answered 201 for: the question and its answer must stay."""

    question_id: int
    answer_id: int
    answer: str


@dataclass
class Fault:
    restarted_at: float  # time.monotonic() when the failed part was back
    down_s: float
    notes: list[str] = field(default_factory=list)
    replies_while_down: list[ChatReply] = field(default_factory=list)
    acknowledged_while_down: list[Acknowledged] = field(default_factory=list)


@dataclass
class Recovery:
    """Seconds from the restart; None when it did not happen within the drill's time."""

    progressed_s: float | None = None  # until one more document was ready or failed
    chat_s: float | None = None  # until chat answered again (the model called)
    chat_request_s: float | None = None  # how long that answering request itself took
    settled_s: float | None = None  # until every document was ready or failed
    replies: list[ChatReply] = field(default_factory=list)  # chat's other answers meanwhile


@dataclass
class DrillResult:
    name: str
    fault: str
    documents: int
    model_down: bool = False  # chat must answer 503 while down (the Xinference drill)
    ready: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # document name: its error
    unsettled: list[str] = field(default_factory=list)
    chunk_problems: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    half_saved: list[str] = field(default_factory=list)
    acknowledged: int = 0
    replies_while_down: list[ChatReply] = field(default_factory=list)
    recovery: Recovery = field(default_factory=Recovery)
    notes: list[str] = field(default_factory=list)
    total_s: float = 0.0
    error: str = ""

    def problems(self) -> list[str]:
        """What the issue's acceptance criteria would call a failure; empty when the drill passed."""
        if self.error:
            return [self.error]
        found = []
        if self.unsettled:
            found.append(f"{len(self.unsettled)} documents never reached ready or failed: {self.unsettled[:5]}")
        found += [f"{name} failed without a reason" for name, reason in self.failed.items() if not reason.strip()]
        found += self.chunk_problems + self.lost + self.half_saved
        if self.recovery.chat_s is None:
            found.append("chat did not answer again")
        found += [
            f"chat answered {reply.describe()} after the restart (only 201, or a 503 saying why, is clear)"
            for reply in self.recovery.replies
            if reply.status != 201 and (reply.status != 503 or not reply.message)
        ]
        if self.model_down:
            if not self.replies_while_down:
                found.append("chat was not tried while the model was down")
            found += [
                f"while the model was down chat answered {reply.describe()}, not a 503 saying what to do"
                for reply in self.replies_while_down
                if reply.status != 503 or "try again" not in reply.message
            ]
        return found


# --- setting a drill up ---------------------------------------------------------------------------

WORDS = [
    "harbour",
    "lantern",
    "keeper",
    "tide",
    "ledger",
    "cargo",
    "anchor",
    "gull",
    "fog",
    "beacon",
    "rope",
    "pier",
    "ferry",
    "storm",
    "chart",
    "island",
    "signal",
    "crane",
    "netting",
    "salt",
    "barrel",
    "dock",
    "compass",
    "morning",
    "evening",
    "north",
    "south",
    "quiet",
    "heavy",
    "bright",
    "old",
    "new",
    "long",
    "short",
    "cold",
    "warm",
    "records",
    "counts",
    "repairs",
    "watches",
    "carries",
    "notes",
    "lists",
    "checks",
    "opens",
    "closes",
]


def corpus(tag: str, count: int) -> dict[str, bytes]:
    """`count` documents of distinct text: every paragraph names its document and the words are
    drawn at random, so two equal chunks in a knowledge base can only be a duplicate. Every tenth
    document is long (about 25 chunks) and keeps a worker busy for a while; a quarter are Markdown."""
    rng = random.Random(f"{tag}-{count}")  # noqa: S311  # reproducible text, not a secret
    files = {}
    for number in range(count):
        paragraphs = 40 if number % 10 == 5 else rng.randint(2, 6)
        body = "\n\n".join(
            f"{tag} document {number}, paragraph {paragraph}: "
            + " ".join(rng.choices(WORDS, k=rng.randint(40, 80)))
            + "."
            for paragraph in range(paragraphs)
        )
        if number % 4 == 3:
            files[f"{tag}-{number:03d}.md"] = f"# {tag} document {number}\n\n{body}\n".encode()
        else:
            files[f"{tag}-{number:03d}.txt"] = f"{body}\n".encode()
    return files


def models_launch(team: Team, endpoint: str) -> tuple[ModelRegistration, ModelRegistration]:
    """SmolLM2 and MiniLM on the drills' Xinference, launched, and so kept running: the reconcile
    task relaunches them when they are gone."""
    from models_registry.services import registration_launch
    from realservices.offline_models import offline_models_on

    llm, embedding = offline_models_on(team, endpoint)
    return registration_launch(registration=llm), registration_launch(registration=embedding)


def scene_create(*, team: Team, user: User, llm: ModelRegistration, embedding: ModelRegistration, name: str) -> Scene:
    from accounts.services import api_key_create
    from chat.services import assistant_create, conversation_create
    from kb.services import kb_create

    kb = kb_create(team=team, name=f"drill {name}", embedding_model=embedding)
    # Short answers from few sources: each chat call costs seconds of the same two cores that ingest.
    assistant = assistant_create(
        team=team, name=f"drill {name}", llm=llm, knowledge_bases=[kb], top_k=2, max_answer_tokens=16
    )
    conversation = conversation_create(team=team, owner=user, assistant=assistant)
    _key, secret = api_key_create(user=user, team=team, name=f"drill {name}")
    return Scene(kb=kb, conversation_id=conversation.pk, api_key=secret)


def upload(kb: KnowledgeBase, files: dict[str, bytes]) -> list[int]:
    from kb.services import documents_upload

    result = documents_upload(kb=kb, uploads=[(io.BytesIO(data), name) for name, data in files.items()])
    if result.rejected or len(result.created) != len(files):
        raise DrillError(f"the upload took {len(result.created)} of {len(files)} files: {result.rejected}")
    return [document.pk for document in result.created]


@dataclass(frozen=True)
class Progress:
    ready: int
    failed: int
    unsettled: int
    in_flight: int  # being parsed or embedded by a worker


def progress(document_ids: list[int]) -> Progress | None:
    """None while the database does not answer (it is being restarted)."""
    from django.db import Error, connection

    from kb.models import Document

    try:
        statuses = list(Document.objects.filter(pk__in=document_ids).values_list("status", flat=True))
    except Error:
        connection.close()  # a connection the server dropped is not reused; the next query opens one
        return None
    return Progress(
        ready=statuses.count("ready"),
        failed=statuses.count("failed"),
        unsettled=sum(status in ACTIVE for status in statuses),
        in_flight=sum(status in ("parsing", "embedding") for status in statuses),
    )


def wait_for(stack: Stack, condition: Callable[[], bool], what: str, timeout_s: float = UNDER_WAY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.tick()
        if condition():
            return
        time.sleep(0.2)
    raise DrillError(f"{what} did not happen within {timeout_s:.0f}s")


def ask(stack: Stack, scene: Scene) -> tuple[ChatReply, Acknowledged | None]:
    """One chat turn; the message it saved when the API answered 201."""
    from chat.models import Message

    reply = stack.chat(scene, QUESTION)
    if reply.status != 201:
        return reply, None
    answer_id = int(reply.body["id"])
    question = (
        Message.objects.filter(conversation_id=scene.conversation_id, role="user", pk__lt=answer_id)
        .order_by("-pk")
        .first()
    )
    if question is None:
        raise DrillError(f"chat answered 201 (message {answer_id}) but no question was saved before it")
    return reply, Acknowledged(question_id=question.pk, answer_id=answer_id, answer=str(reply.body["content"]))


# --- the faults -----------------------------------------------------------------------------------


def _in_flight_names(document_ids: list[int]) -> list[str]:
    from kb.models import Document

    return list(
        Document.objects.filter(pk__in=document_ids, status__in=["parsing", "embedding"]).values_list(
            "original_name", flat=True
        )
    )


def _chat_while_down(stack: Stack, scene: Scene, stopped: float, down_s: float) -> Fault:
    """Chat once at once, then every CHAT_RETRY_S while the part is to stay down. The replies, and
    the turns answered 201 (chat needs no Redis: those must survive like any other)."""
    down = Fault(restarted_at=0.0, down_s=0.0)

    def chat() -> None:
        reply, acked = ask(stack, scene)
        down.replies_while_down.append(reply)
        if acked is not None:
            down.acknowledged_while_down.append(acked)

    chat()
    while time.monotonic() + CHAT_RETRY_S < stopped + down_s:
        time.sleep(CHAT_RETRY_S)
        chat()
    time.sleep(max(0.0, stopped + down_s - time.monotonic()))
    return down


def worker_kill(stack: Stack, scene: Scene, document_ids: list[int]) -> Fault:
    held = _in_flight_names(document_ids)
    stack.kill_worker()
    killed = time.monotonic()
    stack.start_worker()
    back = time.monotonic()
    return Fault(
        restarted_at=back,
        down_s=back - killed,
        notes=[
            f"SIGKILL while {len(held)} documents were being parsed or embedded ({', '.join(held) or 'none'}); the "
            f"worker answered a ping {back - killed:.1f}s later. A document a dead worker held goes back in line when "
            f"its lease ({stack.lease_s:.0f}s) expires, at the next dispatch (beat: every 10 s)."
        ],
    )


def redis_restart(stack: Stack, scene: Scene, document_ids: list[int], down_s: float) -> Fault:
    from runtime import embedded

    # SIGTERM: Redis appends what it holds to its append-only file and exits, as on a host reboot.
    embedded._redis_stop(stack.var_dir)
    stopped = time.monotonic()
    fault = _chat_while_down(stack, scene, stopped, down_s)
    embedded.embedded_redis(stack.var_dir).restart_if_down()
    fault.restarted_at = time.monotonic()
    fault.down_s = fault.restarted_at - stopped
    fault.notes.append(f"Redis down for {fault.down_s:.1f}s")
    return fault


def xinference_stop(stack: Stack, scene: Scene, document_ids: list[int], outage_s: float) -> Fault:
    stack.xinference.stop()
    stopped = time.monotonic()
    fault = _chat_while_down(stack, scene, stopped, outage_s)
    # Same port, no models: the platform has to relaunch them (the reconcile task, run by beat).
    stack.xinference.start()
    fault.restarted_at = time.monotonic()
    fault.down_s = fault.restarted_at - stopped
    fault.notes.append(
        f"Xinference stopped for {fault.down_s:.1f}s (answering again, with no models running, "
        f"{fault.down_s - outage_s:.1f}s after it was started)"
    )
    return fault


def postgres_restart(stack: Stack, scene: Scene, document_ids: list[int], down_s: float) -> Fault:
    from django.db import connection

    from runtime import embedded

    # PostgreSQL's fast shutdown: open transactions roll back and every connection drops.
    embedded._postgres_stop((stack.var_dir / "pgdata").resolve())
    stopped = time.monotonic()
    fault = _chat_while_down(stack, scene, stopped, down_s)
    embedded.embedded_postgres(stack.var_dir).restart_if_down()
    connection.close()  # this process's connection died with the server
    fault.restarted_at = time.monotonic()
    fault.down_s = fault.restarted_at - stopped
    fault.notes.append(f"PostgreSQL down for {fault.down_s:.1f}s")
    return fault


# --- running and checking a drill ---------------------------------------------------------------


def run_drill(
    stack: Stack,
    scene: Scene,
    *,
    name: str,
    fault_label: str,
    documents: int,
    fault: Callable[[Stack, Scene, list[int]], Fault],
    settle_timeout_s: float,
    model_down: bool = False,
) -> DrillResult:
    """A seed document ready and a chat answer acknowledged; then `documents` more uploaded and,
    once a tenth of them are done and a worker holds one, the fault; then recovery, and the checks."""
    started = time.monotonic()
    result = DrillResult(name=name, fault=fault_label, documents=documents, model_down=model_down)
    seed = upload(scene.kb, corpus(f"{name}-seed", 1))
    wait_for(stack, lambda: (p := progress(seed)) is not None and p.ready == 1, "the seed document ready")
    acknowledged: list[Acknowledged] = []
    reply, acked = ask(stack, scene)
    if acked is None or not reply.answered_by_the_model:
        raise DrillError(f"chat did not answer before the fault: {reply.describe()}")
    acknowledged.append(acked)
    result.notes.append(f"before the fault, with nothing being ingested, chat answered in {reply.seconds:.1f} s")

    document_ids = upload(scene.kb, corpus(name, documents))
    wanted = max(1, documents // 10)
    wait_for(
        stack,
        lambda: (p := progress(document_ids)) is not None and p.ready >= wanted and p.in_flight >= 1,
        f"{wanted} documents ready and one in a worker's hands",
    )
    happened = fault(stack, scene, document_ids)
    result.notes += happened.notes
    result.replies_while_down = happened.replies_while_down
    acknowledged += happened.acknowledged_while_down
    result.recovery = _recover(stack, scene, document_ids, happened.restarted_at, settle_timeout_s, acknowledged)
    _check(result, scene, document_ids + seed, acknowledged)
    result.total_s = time.monotonic() - started
    return result


class _ChatAttempt(threading.Thread):
    """One chat turn in a thread of its own, so that the watch (and the beat stand-in's ticks) goes
    on while a slow answer is generated."""

    def __init__(self, stack: Stack, scene: Scene) -> None:
        super().__init__(name="drill-chat", daemon=True)
        self.stack = stack
        self.scene = scene
        self.reply: ChatReply | None = None
        self.acked: Acknowledged | None = None
        self.failure: BaseException | None = None
        self.finished_at = 0.0

    def run(self) -> None:
        from django.db import connection

        try:
            self.reply, self.acked = ask(self.stack, self.scene)
        except BaseException as exc:  # handed to the watching thread, which raises it
            self.failure = exc
        finally:
            self.finished_at = time.monotonic()
            connection.close()  # this thread's own connection


def _recover(
    stack: Stack,
    scene: Scene,
    document_ids: list[int],
    restarted_at: float,
    timeout_s: float,
    acknowledged: list[Acknowledged],
) -> Recovery:
    """Watch, once a second, until every document settled and chat answered again (or time ran out)."""
    recovery = Recovery()
    baseline: int | None = None  # documents settled at the first look after the restart
    attempt: _ChatAttempt | None = None
    next_chat = restarted_at
    while time.monotonic() < restarted_at + timeout_s:
        stack.tick()
        current = progress(document_ids)
        now = time.monotonic()
        if current is not None:
            settled = current.ready + current.failed
            if baseline is None:
                baseline = settled
            elif recovery.progressed_s is None and settled > baseline:
                recovery.progressed_s = now - restarted_at
            if recovery.settled_s is None and current.unsettled == 0:
                recovery.settled_s = now - restarted_at
        if attempt is not None and not attempt.is_alive():
            if attempt.failure is not None:
                raise attempt.failure
            assert attempt.reply is not None
            if attempt.acked is not None:
                acknowledged.append(attempt.acked)
            if attempt.reply.answered_by_the_model:
                recovery.chat_s = attempt.finished_at - restarted_at
                recovery.chat_request_s = attempt.reply.seconds
            else:
                recovery.replies.append(attempt.reply)
                next_chat = attempt.finished_at + CHAT_RETRY_S
            attempt = None
        if recovery.chat_s is None and attempt is None and now >= next_chat:
            attempt = _ChatAttempt(stack, scene)
            attempt.start()
        if recovery.settled_s is not None and recovery.chat_s is not None:
            break
        time.sleep(1)
    if attempt is not None:
        attempt.join()  # requests time out by themselves; a late answer does not count as recovery
        if attempt.acked is not None:
            acknowledged.append(attempt.acked)
    return recovery


def _check(result: DrillResult, scene: Scene, document_ids: list[int], acknowledged: list[Acknowledged]) -> None:
    from chat.models import Message
    from kb.models import Document

    documents = list(Document.objects.filter(pk__in=document_ids))
    result.ready = sum(document.status == "ready" for document in documents)
    result.failed = {document.original_name: document.error for document in documents if document.status == "failed"}
    result.unsettled = [document.original_name for document in documents if document.status in ACTIVE]
    result.chunk_problems = chunk_problems(scene.kb)
    result.acknowledged = len(acknowledged)
    messages = {message.pk: message for message in Message.objects.filter(conversation_id=scene.conversation_id)}
    for acked in acknowledged:
        answer = messages.get(acked.answer_id)
        if acked.question_id not in messages:
            result.lost.append(f"question {acked.question_id}, answered 201, is gone")
        if answer is None or answer.content != acked.answer or answer.status != "complete":
            result.lost.append(f"answer {acked.answer_id}, returned with a 201, is gone or changed")
    # Every request that did not answer 201 must have left no answer behind (a question may stay:
    # regenerate answers it).
    answered = {acked.answer_id for acked in acknowledged}
    result.half_saved = [
        f"answer {message.pk} ({message.status}) saved although its request did not answer 201"
        for message in messages.values()
        if message.role == "assistant" and message.pk not in answered
    ]


def chunk_problems(kb: KnowledgeBase) -> list[str]:
    """Duplicated or missing chunks: a ready document has exactly ordinals 0..chunk_count-1 in the
    knowledge base's generation, any other none; no chunk text occurs twice (the corpus has none)."""
    from django.db.models import Count

    from kb.models import Chunk, Document

    kb.refresh_from_db()
    problems = []
    for document in Document.objects.filter(knowledge_base=kb):
        ordinals = sorted(
            Chunk.objects.filter(document=document, generation=kb.generation).values_list("ordinal", flat=True)
        )
        expected = list(range(document.chunk_count)) if document.status == "ready" else []
        if ordinals != expected:
            problems.append(
                f"{document.original_name} ({document.status}, chunk_count {document.chunk_count}) has "
                f"{len(ordinals)} chunks, ordinals {ordinals[:10]}"
            )
    stray = Chunk.objects.filter(knowledge_base=kb).exclude(generation=kb.generation).count()
    if stray:
        problems.append(f"{stray} chunks of another generation than the knowledge base's {kb.generation}")
    repeated = (
        Chunk.objects.filter(knowledge_base=kb)
        .values("text")
        .annotate(copies=Count("id"))
        .filter(copies__gt=1)
        .order_by()
    )
    problems += [f"a chunk stored {row['copies']} times: {row['text'][:60]!r}" for row in repeated[:10]]
    return problems


# --- the four drills (the tests call these with small sizes) ------------------------------------


def _settle_timeout(documents: int, lease_s: float, extra_s: float = 0.0) -> float:
    # Generous: the drill reports how long recovery took, the timeout only stops a stuck run.
    return 300.0 + 3.0 * documents + 2 * lease_s + extra_s


def drill_worker_kill(stack: Stack, scene: Scene, *, documents: int) -> DrillResult:
    label = "SIGKILL the ingest worker mid-document, start it"
    timeout_s = _settle_timeout(documents, stack.lease_s)
    return run_drill(
        stack,
        scene,
        name="worker",
        fault_label=label,
        documents=documents,
        fault=worker_kill,
        settle_timeout_s=timeout_s,
    )


def drill_redis_restart(stack: Stack, scene: Scene, *, documents: int, down_s: float) -> DrillResult:
    fault = functools.partial(redis_restart, down_s=down_s)
    label = f"stop Redis (SIGTERM) for {down_s:.0f} s, start it"
    timeout_s = _settle_timeout(documents, stack.lease_s)
    return run_drill(
        stack, scene, name="redis", fault_label=label, documents=documents, fault=fault, settle_timeout_s=timeout_s
    )


def drill_xinference_outage(stack: Stack, scene: Scene, *, documents: int, outage_s: float) -> DrillResult:
    fault = functools.partial(xinference_stop, outage_s=outage_s)
    label = f"stop Xinference for {outage_s:.0f} s, start it with no models"
    # Transient embedding failures are retried after 10, 20, 40, 80, 160 s: the timeout covers them.
    timeout_s = _settle_timeout(documents, stack.lease_s, extra_s=320.0)
    return run_drill(
        stack,
        scene,
        name="xinference",
        fault_label=label,
        documents=documents,
        fault=fault,
        settle_timeout_s=timeout_s,
        model_down=True,
    )


def drill_postgres_restart(stack: Stack, scene: Scene, *, documents: int, down_s: float) -> DrillResult:
    fault = functools.partial(postgres_restart, down_s=down_s)
    label = f"stop PostgreSQL (fast shutdown) for {down_s:.0f} s, start it"
    timeout_s = _settle_timeout(documents, stack.lease_s)
    return run_drill(
        stack, scene, name="postgres", fault_label=label, documents=documents, fault=fault, settle_timeout_s=timeout_s
    )


# --- the report -----------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _request(seconds: float | None) -> str:
    return "" if seconds is None else f" (that request: {seconds:.1f} s)"


def _replies(replies: list[ChatReply]) -> str:
    if not replies:
        return "—"
    counts: dict[int, int] = {}
    for reply in replies:
        counts[reply.status] = counts.get(reply.status, 0) + 1
    return ", ".join(f"{status} ×{count}" for status, count in sorted(counts.items()))


def render(results: list[DrillResult], heading: str) -> str:
    lines = [
        heading,
        "",
        "| drill | fault | ready / failed / unfinished | chunk problems | acknowledged chat messages lost | "
        "chat while down | ingestion moving again | chat answering again | all documents settled | result |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        if result.error:
            lines.append(f"| {result.name} | {result.fault} | | | | | | | | could not run: {result.error} |")
            continue
        recovery = result.recovery
        verdict = "ok" if not result.problems() else "**problems**"
        lines.append(
            f"| {result.name} | {result.fault} | {result.ready} / {len(result.failed)} / {len(result.unsettled)} "
            f"(of {result.documents + 1}) | {len(result.chunk_problems)} | {len(result.lost)} of "
            f"{result.acknowledged} | {_replies(result.replies_while_down)} | {_seconds(recovery.progressed_s)} | "
            f"{_seconds(recovery.chat_s)}{_request(recovery.chat_request_s)} | {_seconds(recovery.settled_s)} | "
            f"{verdict} |"
        )
    lines += [
        "",
        "Times are counted from the moment the failed part was back (worker answering a ping, server "
        "started), watched once a second; chat is asked again 5 s after each failed answer, and a request "
        "answered while ingestion runs shares the two cores with it. Document counts include the drill's seed "
        "document.",
        "",
    ]
    for result in results:
        lines.append(f"**{result.name}** ({result.total_s:.0f} s in all).")
        lines += [f"- {note}" for note in result.notes]
        lines += [
            f"- chat while down: {reply.describe()[:200]} ({reply.seconds:.1f} s)"
            for reply in result.replies_while_down[:3]
        ]
        lines += [
            f"- chat after the restart, before it answered: {reply.describe()[:200]}"
            for reply in result.recovery.replies[:3]
        ]
        lines += [f"- failed: {name}: {error[:200]}" for name, error in list(result.failed.items())[:5]]
        lines += [f"- PROBLEM: {problem}" for problem in result.problems()]
        lines.append("")
    return "\n".join(lines)


# --- `make drills`: the platform's own processes --------------------------------------------------


@dataclass
class Child:
    """One of the platform's processes, in its own process group (as the supervisor runs them)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_dir = DRILLS_DIR / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{self.name}.log", "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=BASE_DIR, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        if self.process is None:
            return
        kill_group(self.process)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process, timeout_s=20)
        self.process = None


def wait_for_worker(name_prefix: str, timeout_s: float = 90.0) -> None:
    from workers.celery import app

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        if any(name.startswith(name_prefix) for reply in replies for name in reply):
            return
        time.sleep(0.5)
    raise DrillError(f"the {name_prefix} worker did not answer a ping within {timeout_s:.0f}s")


def http_chat(base_url: str) -> Callable[[Scene, str], ChatReply]:
    import httpx

    def chat(scene: Scene, content: str) -> ChatReply:
        started = time.monotonic()
        try:
            response = httpx.post(
                f"{base_url}/api/v1/conversations/{scene.conversation_id}/messages/",
                json={"content": content},
                headers={"Authorization": f"Bearer {scene.api_key}"},
                timeout=300,
            )
        except httpx.HTTPError as exc:
            return ChatReply(0, {"raw": f"no answer: {exc!r}"}, time.monotonic() - started)
        return ChatReply.of(
            response.status_code, response.headers.get("content-type", ""), response.text, time.monotonic() - started
        )

    return chat


def fresh_var_dir(var_dir: Path) -> None:
    """Each run starts from an empty database and broker: stop what an interrupted run left there."""
    from runtime import embedded

    if (var_dir / "pgdata").exists():
        embedded._postgres_stop((var_dir / "pgdata").resolve())
    embedded._redis_stop(var_dir)
    shutil.rmtree(var_dir, ignore_errors=True)


def log(message: str) -> None:
    print(f"[drills] {message}", file=sys.stderr, flush=True)


def main() -> int:
    documents = int(os.environ.get("DRILL_DOCS", "200"))
    outage_s = float(os.environ.get("DRILL_OUTAGE_S", "60"))
    down_s = float(os.environ.get("DRILL_DOWN_S", "5"))
    var_dir = DRILLS_DIR / "var"
    fresh_var_dir(var_dir)
    shutil.rmtree(DRILLS_DIR / "logs", ignore_errors=True)
    os.environ["CHATPLATFORM_VAR_DIR"] = str(var_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")
    # The drills' Xinference listens on loopback, which the SSRF guard checks at every provider
    # call (in this process and the children, which inherit the environment).
    os.environ.setdefault("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
    if os.environ.get("DRILL_LEASE_S"):
        os.environ["KB_INGEST_LEASE_S"] = os.environ["DRILL_LEASE_S"]
    import django

    from runtime.embedded import use_embedded_services

    use_embedded_services()
    django.setup()
    import httpx
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from accounts.services import platform_bootstrap
    from realservices.workers import database_url_of
    from realservices.xinference import XinferenceServer, free_port
    from runtime.supervisor import Config, child_specs

    call_command("migrate", verbosity=0)
    bootstrap = platform_bootstrap()
    server = XinferenceServer(home=DRILLS_DIR / "xinference-home")
    env = {**os.environ, "DATABASE_URL": database_url_of(connection.settings_dict), "REDIS_URL": settings.REDIS_URL}
    port = free_port()
    # The argv `make run` uses; the embedded Xinference is ours (xinference_port None), not a child.
    specs = child_specs(Config(var_dir=var_dir, host="127.0.0.1", port=port, xinference_port=None))
    children = {spec.name: Child(spec.name, spec.argv, {**env, **spec.extra_env}) for spec in specs}
    ingest = children["worker-ingest"]
    results: list[DrillResult] = []
    try:
        log("starting Xinference and the platform's processes (web, two workers, beat)")
        server.start()
        # Running before they are registered: else beat's reconcile may start healing a registration
        # while models_launch launches it, and the second launch is refused (409, as for a person).
        server.launch_default_models()
        for child in children.values():
            child.start()
        base_url = f"http://127.0.0.1:{port}"
        wait_for_worker("ingest@")
        wait_for_worker("worker@")
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base_url}/healthz", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise DrillError("the web process did not answer within 60s") from None
                time.sleep(0.5)

        def start_ingest() -> None:
            ingest.start()
            wait_for_worker("ingest@")

        stack = Stack(
            var_dir=var_dir,
            xinference=server,
            kill_worker=ingest.kill,
            start_worker=start_ingest,
            chat=http_chat(base_url),
            lease_s=float(settings.KB_INGEST_LEASE_S),
        )
        log("launching SmolLM2 and MiniLM")
        llm, embedding = models_launch(bootstrap.team, server.endpoint)
        drills: list[tuple[str, Callable[[Scene], DrillResult]]] = [
            ("worker", lambda scene: drill_worker_kill(stack, scene, documents=documents)),
            ("redis", lambda scene: drill_redis_restart(stack, scene, documents=documents, down_s=down_s)),
            ("xinference", lambda scene: drill_xinference_outage(stack, scene, documents=documents, outage_s=outage_s)),
            ("postgres", lambda scene: drill_postgres_restart(stack, scene, documents=documents, down_s=down_s)),
        ]
        for name, drill in drills:
            log(f"drill {name}: {documents} documents")
            scene = scene_create(team=bootstrap.team, user=bootstrap.admin, llm=llm, embedding=embedding, name=name)
            try:
                results.append(drill(scene))
            except DrillError as exc:
                results.append(DrillResult(name=name, fault="", documents=documents, error=str(exc)))
            log(f"drill {name}: " + ("ok" if not results[-1].problems() else "; ".join(results[-1].problems())))
    finally:
        for child in children.values():
            child.stop()
        server.stop()

    heading = "\n".join(
        [
            f"# Failure drills {date.today().isoformat()}",
            "",
            f"Machine: {os.cpu_count()} cores, {platform.node() or 'machine'}. Each drill: a fresh knowledge base, one "
            f"seed document and a chat answer, then {documents} documents (text and Markdown, every tenth about 25 "
            f"chunks) and the fault once a tenth are ready. Xinference down {outage_s:.0f} s; Redis and PostgreSQL "
            f"down {down_s:.0f} s. Workers' lease KB_INGEST_LEASE_S = {settings.KB_INGEST_LEASE_S} s; beat hands out "
            f"documents every 10 s and reconciles models every {settings.MODELS_RECONCILE_INTERVAL_S:.0f} s. "
            "Reproduce: `make drills` (DRILL_DOCS, DRILL_OUTAGE_S, DRILL_DOWN_S, DRILL_LEASE_S).",
        ]
    )
    report = render(results, heading)
    (DRILLS_DIR / "report.md").write_text(report)
    print(report)
    return 1 if any(result.problems() for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
