"""Check every question set (*.jsonl) in bench/questions/ against the bench corpus.

Each line is one JSON object. A plain item has `question`, `expected_document` and
`expected_answer`; a follow-up item adds `history` (the earlier user turns) and
`standalone_question` (the follow-up asked on its own). `expected_document` is a page's bare file
name, or a list of them when several pages answer equally well: a name ending in `.zh-cn.html` is
a page of debian-reference (Chinese), any other name a page of the Python 3.11 library reference.

What is checked, and why:

- every line parses and carries its fields with the right types (reported as file:line), so the
  bench never trips over a set half-way through a run;
- every expected document exists in the corpus and the expected answer (3 to 60 characters)
  occurs verbatim in its text (in each page, when several are listed) as the platform extracts
  it (`kb.parsing.parse_html`, whitespace runs collapsed, case-sensitive): the gold is checked
  against what the retriever can actually see, not against the HTML source;
- no question is copied from its gold page: no run of 6 consecutive English words (lower-cased,
  punctuation stripped) and no run of 10 consecutive CJK characters of a question (for a
  follow-up: the follow-up and the standalone question; the history is not checked) occurs in the
  page. Copied sentences make retrieval a string match and overstate the quality a real user
  would get;
- a follow-up differs from its standalone question (else it does not test the use of history);
- no question appears twice, across all the sets (a follow-up counts together with its history).

Run it from anywhere: `python bench/questions/check.py`. It prints a summary (items and distinct
gold pages per file and in all) and exits with 1 on any problem.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

QUESTIONS_DIR = Path(__file__).resolve().parent
BASE_DIR = QUESTIONS_DIR.parent.parent
CORPUS_DIR = BASE_DIR / "var" / "bench" / "corpus" / "usr" / "share"
PYTHON_DIR = CORPUS_DIR / "doc" / "python3.11" / "html" / "library"
DEBIAN_REFERENCE_DIR = CORPUS_DIR / "debian-reference"
DEBIAN_REFERENCE_SUFFIX = ".zh-cn.html"

ENGLISH_RUN = 6  # consecutive words of a question that may not occur in its gold page
CJK_RUN = 10  # consecutive CJK characters of a question that may not occur in its gold page
MIN_ANSWER, MAX_ANSWER = 3, 60  # characters of expected_answer

PLAIN_FIELDS = ("question", "expected_document", "expected_answer")
FOLLOWUP_FIELDS = ("history", "question", "standalone_question", "expected_document", "expected_answer")

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK_RUN_PATTERN = re.compile(f"[{CJK}]+")
# A word: letters, digits and underscores, CJK characters excepted (they are checked as runs).
WORD_PATTERN = re.compile(f"[^\\W{CJK}]+")
WHITESPACE = re.compile(r"\s+")


@dataclass
class FileReport:
    items: int = 0
    pages: set[str] = field(default_factory=set)


@dataclass
class Checker:
    problems: list[str] = field(default_factory=list)
    seen_questions: dict[str, str] = field(default_factory=dict)  # normalised question -> file:line

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def check_file(self, path: Path) -> FileReport:
        report = FileReport()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"{path.name}:{number}"
            if not line.strip():
                self.problem(where, "blank line")
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                self.problem(where, f"not JSON ({error})")
                continue
            if not isinstance(item, dict):
                self.problem(where, "not a JSON object")
                continue
            documents = self.check_item(where, item)
            report.items += 1
            report.pages.update(documents)
        return report

    def check_item(self, where: str, item: dict[str, Any]) -> list[str]:
        """The item's gold pages (empty when its fields are unusable); every problem recorded."""
        followup = "history" in item
        fields = FOLLOWUP_FIELDS if followup else PLAIN_FIELDS
        missing = [name for name in fields if name not in item]
        if missing:
            self.problem(where, f"missing {', '.join(missing)}")
            return []
        strings = [name for name in fields if name not in ("history", "expected_document")]
        empty = [name for name in strings if not isinstance(item[name], str) or not item[name].strip()]
        if empty:
            self.problem(where, f"{', '.join(empty)} must be non-empty strings")
            return []
        history = item.get("history")
        if followup and not (isinstance(history, list) and history and all(isinstance(turn, str) for turn in history)):
            self.problem(where, "history must be a non-empty list of strings")
            return []
        if followup and normalise(item["question"]) == normalise(item["standalone_question"]):
            self.problem(where, "the follow-up question is the standalone question: it does not lean on the history")
        documents = self.documents(where, item["expected_document"])
        if documents is None:
            return []

        answer = item["expected_answer"]
        if not MIN_ANSWER <= len(answer) <= MAX_ANSWER:
            self.problem(where, f"expected_answer is {len(answer)} characters, not {MIN_ANSWER} to {MAX_ANSWER}")
        questions = ["question", "standalone_question"] if followup else ["question"]
        for document in documents:
            text = page_text(document)
            if text is None:
                self.problem(where, f"{document} is not in the corpus")
                continue
            if WHITESPACE.sub(" ", answer).strip() not in text:
                self.problem(where, f"expected_answer {answer!r} does not occur in {document}")
            for name in questions:
                for copied in copied_runs(item[name], document):
                    self.problem(where, f"{name} copies {copied!r} from {document}")

        self.check_duplicate(where, item)
        return documents

    def documents(self, where: str, value: Any) -> list[str] | None:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            self.problem(where, "expected_document must be a file name or a non-empty list of them")
            return None
        bad = [name for name in names if "/" in name or not name.endswith(".html")]
        if bad:
            self.problem(where, f"expected_document must be bare .html file names, not {bad}")
            return None
        return names

    def check_duplicate(self, where: str, item: dict[str, Any]) -> None:
        """A question (or standalone question) asked twice, in any set. A follow-up is a duplicate
        only together with its history: "and for a directory?" may follow different questions."""
        keys = []
        if "history" in item:
            keys.append(" | ".join(normalise(turn) for turn in [*item["history"], item["question"]]))
            keys.append(normalise(item["standalone_question"]))
        else:
            keys.append(normalise(item["question"]))
        for key in keys:
            if key in self.seen_questions:
                self.problem(where, f"duplicate question (first at {self.seen_questions[key]})")
            else:
                self.seen_questions[key] = where


def normalise(question: str) -> str:
    return " ".join(WORD_PATTERN.findall(question.lower())) + "".join(CJK_RUN_PATTERN.findall(question))


def page_path(document: str) -> Path:
    directory = DEBIAN_REFERENCE_DIR if document.endswith(DEBIAN_REFERENCE_SUFFIX) else PYTHON_DIR
    return directory / document


def platform_parser() -> Callable[[Path, str], Iterable[Any]]:
    """The platform's own HTML extraction: what the retriever indexes. Importing it needs the
    project's environment (lxml, Django installed; no settings are read)."""
    if str(BASE_DIR) not in sys.path:
        sys.path.insert(0, str(BASE_DIR))
    from kb.parsing import parse_html

    return parse_html


@cache
def page_text(document: str) -> str | None:
    """The page's text as the platform extracts it, whitespace runs collapsed; None if absent."""
    path = page_path(document)
    if not path.is_file():
        return None
    sections = platform_parser()(path, document)
    return WHITESPACE.sub(" ", " ".join(section.text for section in sections)).strip()


@cache
def page_word_runs(document: str) -> frozenset[tuple[str, ...]]:
    words = WORD_PATTERN.findall((page_text(document) or "").lower())
    return frozenset(tuple(words[start : start + ENGLISH_RUN]) for start in range(len(words) - ENGLISH_RUN + 1))


@cache
def page_cjk_text(document: str) -> str:
    """Whitespace removed, so a run broken by a line wrap in the page still counts as copied."""
    return WHITESPACE.sub("", page_text(document) or "")


def copied_spans(units: list[str] | str, size: int, occurs: Callable[[tuple[str, ...]], bool]) -> list[list[str]]:
    """The longest stretches of `units` whose every window of `size` units occurs in the page:
    one report per copied passage rather than one per overlapping window."""
    spans: list[list[str]] = []
    last_end = -1
    for start in range(len(units) - size + 1):
        window = tuple(units[start : start + size])
        if not occurs(window):
            continue
        if spans and start < last_end:
            spans[-1].extend(units[last_end : start + size])
        else:
            spans.append(list(window))
        last_end = start + size
    return spans


def copied_runs(question: str, document: str) -> list[str]:
    """The passages of the question (6 words or more, 10 CJK characters or more) found in the page."""
    page_runs = page_word_runs(document)
    words = WORD_PATTERN.findall(question.lower())
    copied = [" ".join(span) for span in copied_spans(words, ENGLISH_RUN, page_runs.__contains__)]
    cjk_text = page_cjk_text(document)
    for run in CJK_RUN_PATTERN.findall(question):
        spans = copied_spans(run, CJK_RUN, lambda window: "".join(window) in cjk_text)
        copied += ["".join(span) for span in spans]
    return copied


def main() -> int:
    try:
        platform_parser()
    except ImportError as error:
        print(f"cannot import kb.parsing ({error}): run it with the project's environment, .venv/bin/python")
        return 1
    checker = Checker()
    files = sorted(QUESTIONS_DIR.glob("*.jsonl"))
    if not files:
        print(f"no .jsonl files in {QUESTIONS_DIR}")
        return 1
    all_pages: set[str] = set()
    total = 0
    for path in files:
        report = checker.check_file(path)
        total += report.items
        all_pages |= report.pages
        print(f"{path.name}: {report.items} items, {len(report.pages)} distinct gold pages")
    print(f"all: {total} items, {len(all_pages)} distinct gold pages, {len(files)} files")
    for problem in checker.problems:
        print(f"PROBLEM {problem}")
    if checker.problems:
        print(f"{len(checker.problems)} problems")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
