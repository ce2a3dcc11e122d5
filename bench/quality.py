"""The retrieval-quality section of `make bench`: the natural-question sets of bench/questions,
asked of the platform through its evaluation API (the bench is that API's first user) and of the
plain pipeline, both scored by the same functions (evaluation.metrics).

Per language, one knowledge base holds every page the sets name, and three evaluation sets are
imported into it as JSONL through the API:

- `<stem>` (python-en, debian-zh): the committed file as it is;
- `followups-standalone`: each follow-up's `standalone_question`, what a query rewrite would
  produce at best;
- `followups-as-asked`: the earlier turns and the follow-up joined by " ", what a system without
  query rewrite would search with.

The platform's figures are its runs' metrics (hybrid, vector, fulltext; top 10), run one after
another so that their latencies do not share the CPU. The plain pipeline's figures come from its
own top 10 chunks per question (document names and texts), scored here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
QUESTIONS_DIR = BASE_DIR / "bench" / "questions"
MODES = ("hybrid", "vector", "fulltext")
TOP_K = 10
UPLOAD_BATCH = 50  # files per upload request (Django refuses more than 100 files in one request)
RUN_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Language:
    code: str
    label: str
    pages: str  # glob under the corpus root
    stem: str  # bench/questions/<stem>.jsonl and <stem>-followups.jsonl


LANGUAGES = {
    "en": Language(
        "en", "English (python3.11-doc, library/*.html)", "usr/share/doc/python3.11/html/library/*.html", "python-en"
    ),
    "zh": Language(
        "zh", "Chinese (debian-reference-zh-cn, *.zh-cn.html)", "usr/share/debian-reference/*.zh-cn.html", "debian-zh"
    ),
}


@dataclass(frozen=True)
class QuestionSet:
    """One evaluation set: the JSONL imported through the API, and its items as the platform
    keeps them (question and answer stripped, expected documents as a list)."""

    name: str
    description: str
    jsonl: bytes

    @property
    def items(self) -> list[dict[str, Any]]:
        items = []
        for line in self.jsonl.decode().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            expected = row["expected_document"]
            items.append(
                {
                    "question": row["question"].strip(),
                    "expected_documents": [expected] if isinstance(expected, str) else list(expected),
                    "expected_answer": (row.get("expected_answer") or "").strip(),
                }
            )
        return items


def _jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def question_sets(language: Language) -> list[QuestionSet]:
    """The committed set as it is, and the follow-ups twice: rewritten, and as asked."""
    main = QUESTIONS_DIR / f"{language.stem}.jsonl"
    followups = [
        json.loads(line)
        for line in (QUESTIONS_DIR / f"{language.stem}-followups.jsonl").read_text().splitlines()
        if line.strip()
    ]

    def item(row: dict[str, Any], question: str) -> dict[str, Any]:
        return {
            "question": question,
            "expected_document": row["expected_document"],
            "expected_answer": row["expected_answer"],
        }

    return [
        QuestionSet(language.stem, f"bench/questions/{main.name}", main.read_bytes()),
        QuestionSet(
            "followups-standalone",
            f"bench/questions/{language.stem}-followups.jsonl: standalone_question",
            _jsonl([item(row, row["standalone_question"]) for row in followups]),
        ),
        QuestionSet(
            "followups-as-asked",
            f'bench/questions/{language.stem}-followups.jsonl: history and question joined by " "',
            _jsonl([item(row, " ".join([*row["history"], row["question"]])) for row in followups]),
        ),
    ]


class PlatformApi:
    """The REST API (/api/v1/) with an API key, over HTTP to the bench's web process."""

    def __init__(self, base: str, secret: str) -> None:
        import httpx

        self.client = httpx.Client(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {secret}"}, timeout=600
        )

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code != expect:
            raise RuntimeError(f"{method} /api/v1{path} answered {response.status_code}: {response.text[:2000]}")
        return response.json()

    def kb_create(self, *, name: str, embedding_model: int) -> int:
        return int(
            self.call("POST", "/knowledge-bases/", 201, json={"name": name, "embedding_model": embedding_model})["id"]
        )

    def documents_upload(self, *, kb_id: int, files: Sequence[Path]) -> list[str]:
        """Upload in requests of UPLOAD_BATCH files; the names refused (or found duplicate)."""
        refused = []
        for start in range(0, len(files), UPLOAD_BATCH):
            batch = files[start : start + UPLOAD_BATCH]
            handles = [path.open("rb") for path in batch]
            try:
                body = self.call(
                    "POST",
                    f"/knowledge-bases/{kb_id}/documents/",
                    201,
                    files=[
                        ("file", (path.name, handle, "text/html")) for path, handle in zip(batch, handles, strict=True)
                    ],
                )
            finally:
                for handle in handles:
                    handle.close()
            refused += [f"{item['name']} ({item['reason']})" for item in body["rejected"]]
            refused += [f"{item['original_name']} (duplicate)" for item in body["duplicates"]]
        return refused

    def evaluation_set_create(self, *, kb_id: int, name: str, description: str) -> int:
        body = self.call(
            "POST", f"/knowledge-bases/{kb_id}/evaluation-sets/", 201, json={"name": name, "description": description}
        )
        return int(body["id"])

    def items_import(self, *, set_id: int, name: str, data: bytes) -> int:
        created = self.call(
            "POST", f"/evaluation-sets/{set_id}/items/", 201, files={"file": (name, data, "application/x-ndjson")}
        )
        return len(created)

    def run_start(self, *, set_id: int) -> int:
        body = self.call("POST", f"/evaluation-sets/{set_id}/runs/", 202, json={"modes": list(MODES), "top_k": TOP_K})
        return int(body["id"])

    def run_wait(self, *, run_id: int, label: str, log: Callable[[str], None]) -> dict[str, Any]:
        """Poll the run until it is done or failed, logging its progress as it moves."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        shown = None
        while True:
            run = self.call("GET", f"/evaluation-runs/{run_id}/", 200)
            if (run["status"], run["progress"]) != shown:
                shown = (run["status"], run["progress"])
                log(f"quality: {label} (run {run_id}): {run['status']} {run['progress']}%")
            if run["status"] in ("done", "failed"):
                return dict(run)
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} ({label}) not finished after {RUN_TIMEOUT_S:.0f} s: {run}")
            time.sleep(2)


@dataclass
class SetResult:
    language: Language
    question_set: QuestionSet
    set_id: int = 0
    imported: int = 0
    run: dict[str, Any] = field(default_factory=dict)
    plain: dict[str, float | None] = field(default_factory=dict)


def platform_quality(api: PlatformApi, kb_ids: dict[str, int], log: Callable[[str], None]) -> list[SetResult]:
    """Per language, its sets created and imported through the API, then each set run (one
    after another) and waited for."""
    results = []
    for code, kb_id in kb_ids.items():
        language = LANGUAGES[code]
        for question_set in question_sets(language):
            result = SetResult(language, question_set)
            result.set_id = api.evaluation_set_create(
                kb_id=kb_id, name=question_set.name, description=question_set.description
            )
            result.imported = api.items_import(
                set_id=result.set_id, name=f"{question_set.name}.jsonl", data=question_set.jsonl
            )
            log(f"quality: {code}/{question_set.name}: set {result.set_id}, {result.imported} items imported")
            results.append(result)
    for result in results:
        label = f"{result.language.code}/{result.question_set.name}"
        result.run = api.run_wait(run_id=api.run_start(set_id=result.set_id), label=label, log=log)
        if result.run["status"] != "done":
            log(f"quality: {label} failed: {result.run['error']}")
    return results


def plain_questions(results: Sequence[SetResult], code: str) -> list[str]:
    """Every question of a language's sets, in order: what the plain pipeline is asked."""
    return [
        item["question"] for result in results if result.language.code == code for item in result.question_set.items
    ]


def score_plain(results: Sequence[SetResult], code: str, answers: Sequence[dict[str, Any]]) -> None:
    """The plain pipeline's answers (per question: the ranked chunks' document names and texts,
    the search's milliseconds) scored as evaluation.services scores a run's searches."""
    from evaluation import metrics

    position = 0
    for result in (result for result in results if result.language.code == code):
        outcomes = []
        for item in result.question_set.items:
            answer = answers[position]
            position += 1
            outcomes.append(
                metrics.QuestionOutcome(
                    rank=metrics.first_rank(answer["documents"], item["expected_documents"]),
                    ndcg=metrics.ndcg(answer["documents"], item["expected_documents"]),
                    answer_found=metrics.answer_found(answer["texts"], item["expected_answer"]),
                    latency_ms=answer["latency_ms"],
                )
            )
        result.plain = metrics.summarize(outcomes)
    assert position == len(answers), "the plain pipeline answered a different number of questions"


def answers_in_pages(results: Sequence[SetResult], code: str, page_texts: dict[str, str]) -> tuple[int, int]:
    """(items whose expected answer occurs anywhere in an expected page as the plain loader
    extracts it, items with an expected answer): the ceiling of the plain pipeline's
    answer_in_chunk (the answers were looked up in the platform's extraction)."""
    from evaluation import metrics

    found = total = 0
    for result in (result for result in results if result.language.code == code):
        for item in result.question_set.items:
            needle = metrics.collapse_whitespace(item["expected_answer"])
            if not needle:
                continue
            total += 1
            found += any(
                needle in metrics.collapse_whitespace(page_texts.get(name, "")) for name in item["expected_documents"]
            )
    return found, total


COLUMNS = (
    ("recall@1", "recall@1"),
    ("recall@5", "recall@5"),
    ("recall@10", "recall@10"),
    ("MRR@10", "mrr@10"),
    ("nDCG@10", "ndcg@10"),
    ("answer_in_chunk@5", "answer_in_chunk@5"),
    ("latency p50 ms", "latency_p50_ms"),
    ("latency p95 ms", "latency_p95_ms"),
)
ROW_LABELS = {
    "hybrid": "platform hybrid (reciprocal rank fusion; Chinese leans on full text over English-only models)",
    "vector": "platform vector (pgvector, exact below 20k chunks; recursive 1000/150 with chunk headers)",
    "fulltext": "platform fulltext (PostgreSQL tsvector, jieba for Chinese)",
}


def _cells(values: dict[str, Any]) -> str:
    cells = []
    for _, key in COLUMNS:
        value = values.get(key)
        if value is None:
            cells.append("—")
        elif key.startswith("latency"):
            cells.append(f"{value:.0f}")
        else:
            cells.append(f"{value:.3f}")
    return " | ".join(cells)


def _ratio(platform: float | None, plain: float | None) -> str:
    if platform is None or plain is None:
        return "n/a"
    return f"**{platform / plain:.2f}**" if plain else "n/a (plain is 0)"


def render_quality(
    results: Sequence[SetResult], plain_chunks: dict[str, int], answer_ceiling: dict[str, tuple[int, int]]
) -> str:
    header = "| retriever | " + " | ".join(label for label, _ in COLUMNS) + " |"
    lines = [
        "## Retrieval quality: natural questions, document level",
        "",
        "The sets are bench/questions (hand-written questions as a developer asks them, each with the page that "
        "answers it and a short string of the answering passage; see its README). The old known-item questions "
        "(a sentence copied from a page, searched for verbatim) are gone from the bench: they measured string "
        "lookup, which full-text search wins by construction, not questions.",
        "",
        "The bench is the evaluation feature's first user: per language, one knowledge base created and filled "
        "through the REST API, then each set created (`POST /api/v1/knowledge-bases/{id}/evaluation-sets/`), its "
        "JSONL imported (`POST /api/v1/evaluation-sets/{id}/items/`), run (`POST .../runs/` with modes hybrid, "
        f"vector, fulltext and top_k {TOP_K}) and polled (`GET /api/v1/evaluation-runs/{{id}}/`) until done; the "
        "platform rows are the run's metrics. Runs go one after another on the worker, so their latencies (one "
        "kb_search each, the query embedding at Xinference included) do not share the CPU with another run.",
        "",
        f"The plain pipeline answers the same questions with its {TOP_K} best chunks (FAISS flat, the query "
        "embedded in process); its rows are computed here with the same functions as a run's "
        "(evaluation.metrics: first_rank over distinct documents, ndcg, answer_found over the top 5 chunks, "
        "summarize). A chunk's document is its source's file name, as the platform's `original_name`.",
        "",
        "Follow-ups: `followups-standalone` asks each follow-up's `standalone_question` (a perfect query rewrite); "
        '`followups-as-asked` asks the earlier turns and the follow-up joined by " " (the naive concatenation a '
        "system without query rewrite would search with). Neither side rewrites in this section.",
        "",
    ]
    for code in dict.fromkeys(result.language.code for result in results):
        found, total = answer_ceiling.get(code, (0, 0))
        language = LANGUAGES[code]
        lines += [
            f"### {language.label}",
            "",
            f"Plain pipeline: {plain_chunks.get(code, 0)} chunks. The expected answers were looked up in the "
            f"platform's extraction (kb.parsing.parse_html); {found} of {total} occur in an expected page's text as "
            "the plain pipeline's loader (BSHTMLLoader) extracts it, which bounds its answer_in_chunk@5.",
            "",
        ]
        for result in (result for result in results if result.language.code == code):
            run = result.run
            lines += [
                f"#### {result.question_set.name} ({result.imported} questions, run {run.get('id')})",
                "",
                header,
                "| --- |" + " ---: |" * len(COLUMNS),
                f"| plain LangChain + FAISS flat (RCTS 1000/200) | {_cells(result.plain)} |",
            ]
            if run.get("status") != "done":
                lines += ["", f"The platform's run failed: {run.get('error')}", ""]
                continue
            lines += [f"| {ROW_LABELS[mode]} | {_cells(run['metrics'][mode])} |" for mode in MODES]
            hybrid = run["metrics"]["hybrid"]
            lines += [
                "",
                f"Platform hybrid ÷ plain: recall@5 {_ratio(hybrid['recall@5'], result.plain.get('recall@5'))}, "
                f"answer_in_chunk@5 "
                f"{_ratio(hybrid['answer_in_chunk@5'], result.plain.get('answer_in_chunk@5'))}.",
                "",
            ]
    return "\n".join(lines) + "\n"
