"""Files and documents built to deny ingestion to everyone: a markdown line that makes a regex
backtrack for hours, nesting that repeats text once per level, ZIP-based documents that expand
to gigabytes or lie in their headers, a parse longer than the lease, and a document that kills
every worker that takes it while other teams wait behind it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone

from accounts.models import Role
from kb import ingestion as kb_ingestion
from kb.ingestion import document_process, documents_dispatch
from kb.models import Document, DocumentStatus, KnowledgeBase
from kb.parsing import ParseError, UnsupportedFile, detect_type, parse
from kb.uploads import expand_archive
from realservices.workers import BASE_DIR, WorkerProcess
from realservices.xinference import XinferenceServer
from tests.conftest import bearer_client, member_of
from tests.documents import docx_bytes, epub_bytes, pptx_bytes, samples, write, xlsx_bytes
from tests.test_kb import all_settled, embedding_model, upload, wait_until

MB = 1024 * 1024
PACKAGES: dict[str, Callable[[], bytes]] = {
    "docx": docx_bytes,
    "xlsx": xlsx_bytes,
    "pptx": pptx_bytes,
    "epub": epub_bytes,
}
MEDIA_DIR = {"docx": "word/media", "xlsx": "xl/media", "pptx": "ppt/media", "epub": "OEBPS"}
MAIN_PART = {
    "docx": "word/document.xml",
    "xlsx": "xl/workbook.xml",
    "pptx": "ppt/presentation.xml",
    "epub": "OEBPS/ch2.xhtml",
}


# --- building hostile packages ----------------------------------------------------------------


def repack(
    data: bytes,
    *,
    extra: dict[str, bytes | int] | None = None,
    grow: dict[str, int] | None = None,
    compress_type: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A copy of a package with members added (bytes as given, or an int: that many zero bytes)
    and members grown (that many zero bytes after their own data); both compressed with
    compress_type, the zeros written in blocks, never held whole."""

    def write(target: zipfile.ZipFile, name: str, head: bytes, zeros: int) -> None:
        info = zipfile.ZipInfo(name)
        info.compress_type = compress_type
        with target.open(info, "w") as part:
            part.write(head)
            for _ in range(zeros // MB):
                part.write(bytes(MB))

    grow = grow or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            if info.filename in grow:
                write(target, info.filename, source.read(info), grow[info.filename])
            else:
                target.writestr(info, source.read(info))
        for name, content in (extra or {}).items():
            write(target, name, content, 0) if isinstance(content, bytes) else write(target, name, b"", content)
    return buffer.getvalue()


def with_lying_header(data: bytes, name: str, *, size: int, crc: int) -> bytes:
    """The package with `name`'s declared size and checksum rewritten in both its local and its
    central directory headers (the data is left as it is)."""
    patched = bytearray(data)
    encoded = name.encode()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
    assert patched[local : local + 4] == b"PK\x03\x04"
    patched[local + 14 : local + 18] = crc.to_bytes(4, "little")
    patched[local + 22 : local + 26] = size.to_bytes(4, "little")
    for match in re.finditer(re.escape(b"PK\x01\x02"), data):
        start = match.start()
        length = int.from_bytes(data[start + 28 : start + 30], "little")
        if data[start + 46 : start + 46 + length] == encoded:
            patched[start + 16 : start + 20] = crc.to_bytes(4, "little")
            patched[start + 24 : start + 28] = size.to_bytes(4, "little")
            return bytes(patched)
    raise AssertionError(f"{name} is not in the central directory")


def member(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name)


# --- a regex that backtracks ------------------------------------------------------------------


def test_a_markdown_heading_with_a_long_run_of_blanks_is_read_at_once(tmp_path: Path) -> None:
    # The old heading pattern took 147 ms on 400 blanks and eight times more per doubling: this
    # line held a worker for days. A process with a deadline, so the old code fails instead of
    # hanging the suite (the regex holds the interpreter: a thread could not time it out).
    line = "# a" + " " * 20_000 + "b"
    path = write(tmp_path, "blanks.md", f"{line}\n\nThe text under it.\n## Closing hashes ##\nmore\n".encode())
    script = (
        "import json, sys; from pathlib import Path; from kb.parsing import parse; "
        "print(json.dumps([[s.text, s.metadata] for s in parse(Path(sys.argv[1]), 'markdown', 'blanks.md')]))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            cwd=BASE_DIR,
            capture_output=True,
            timeout=60,
            check=True,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "chatplatform.settings"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("parsing one markdown line of 20,000 blanks took over a minute")
    sections = json.loads(done.stdout)
    title = "a" + " " * 20_000 + "b"
    assert sections == [
        ["\nThe text under it.", {"heading_path": [title]}],
        ["more", {"heading_path": [title, "Closing hashes"]}],
    ]


@pytest.mark.parametrize(
    ("line", "heading"),
    [
        ("# Title", (1, "Title")),
        ("### Title ###", (3, "Title")),
        ("## C#", (2, "C")),  # as before: closing hashes need no blank before them
        ("#\tTabbed  ", (1, "Tabbed")),
        ("# ###", (1, "#")),
        ("####### seven", None),
        ("#nospace", None),
        ("# ", None),
    ],
)
def test_markdown_headings_read_as_before(line: str, heading: tuple[int, str] | None) -> None:
    from kb.parsing import _markdown_heading

    assert _markdown_heading(line) == heading


# --- nesting that repeats text ----------------------------------------------------------------


def nested_html(tag: str, depth: int, filler: str) -> tuple[str, list[str]]:
    """`depth` levels of `tag`, each with its own marked text, every level inside the one before."""
    markers = [f"marker{level:04d}" for level in range(depth)]
    opening = {
        "blockquote": lambda text: f"<blockquote><p>{text}</p>",
        "td": lambda text: f"<table><tr><td>{text}",
        "th": lambda text: f"<table><tr><th>{text}",
        "dd": lambda text: f"<dl><dt>term</dt><dd>{text}",
    }[tag]
    closing = {
        "blockquote": "</blockquote>",
        "td": "</td></tr></table>",
        "th": "</th></tr></table>",
        "dd": "</dd></dl>",
    }[tag]
    body = "".join(opening(f"{marker} {filler}") for marker in markers) + closing * depth
    return f"<html><body><h1>Nested</h1>{body}<p>after</p></body></html>", markers


@pytest.mark.parametrize(
    ("tag", "depth", "filler_words"),
    [("blockquote", 50, 170), ("td", 50, 170), ("th", 50, 170), ("dd", 50, 170), ("blockquote", 2000, 8)],
)
def test_nested_quotes_cells_and_definitions_keep_each_text_once(
    tmp_path: Path, tag: str, depth: int, filler_words: int
) -> None:
    # 50 levels of about 1 KB each (the old parser gave 50 KB of text per level, 1.3 MB in all),
    # and quotes 2,000 deep, near the parser's limit of 2,048.
    markup, markers = nested_html(tag, depth, " ".join(["words"] * filler_words))
    sections = parse(write(tmp_path, "nested.html", markup.encode()), "html", "nested.html")
    text = "\n".join(section.text for section in sections)
    counts = {marker: text.count(marker) for marker in markers}
    assert set(counts.values()) == {1}, {marker: count for marker, count in counts.items() if count != 1}
    assert len(text) < len(markup)
    assert [section.metadata["heading_path"] for section in sections] == [["Nested"]]
    positions = [text.index(marker) for marker in markers]
    assert positions == sorted(positions)  # in document order
    assert text.endswith("after")


def test_a_heading_inside_a_cell_starts_a_section_and_is_not_repeated(tmp_path: Path) -> None:
    markup = "<table><tr><td>intro <h2>Inside</h2><p>body text</p> tail</td></tr></table><p>after</p>"
    sections = parse(write(tmp_path, "cell.html", markup.encode()), "html", "cell.html")
    assert [(section.text, section.metadata["heading_path"]) for section in sections] == [
        ("intro", []),
        ("body text tail\nafter", ["Inside"]),
    ]


# --- ZIP-based documents ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(PACKAGES))
def test_a_zip_bomb_inside_a_document_fails_it_with_a_reason(tmp_path: Path, kind: str) -> None:
    bomb = repack(PACKAGES[kind](), extra={f"{MEDIA_DIR[kind]}/padding.bin": 32 * MB})
    assert len(bomb) < MB
    path = write(tmp_path, f"bomb.{kind}", bomb)
    assert detect_type(path, path.name) == kind
    with pytest.raises(ParseError, match=r"padding\.bin is compressed more than 100:1 .*as zip bombs are"):
        parse(path, kind, path.name)


@pytest.mark.parametrize("kind", sorted(PACKAGES))
def test_a_document_of_honest_sizes_is_still_read(tmp_path: Path, kind: str) -> None:
    # Incompressible media of a few MB and small parts that compress well are what real
    # documents hold: none of that is refused.
    document = repack(
        PACKAGES[kind](),
        extra={f"{MEDIA_DIR[kind]}/photo.bin": os.urandom(3 * MB), f"{MEDIA_DIR[kind]}/small.xml": b" " * 100_000},
    )
    path = write(tmp_path, f"honest.{kind}", document)
    assert parse(path, kind, path.name)


@pytest.mark.parametrize(
    ("limits", "extra", "reason"),
    [
        (
            {"KB_MAX_UPLOAD_BYTES": MB},
            {"ppt/media/video.bin": 2 * MB},
            r"video\.bin expands to more than the limit of 1 MB",
        ),
        (
            {"KB_MAX_ARCHIVE_BYTES": 4 * MB},
            {f"ppt/media/{n}.bin": 2 * MB for n in range(3)},
            "expands to more than 4 MB",
        ),
    ],
)
def test_a_document_that_declares_too_much_is_refused_before_it_is_read(
    tmp_path: Path, settings, limits: dict[str, int], extra: dict[str, int], reason: str
) -> None:
    for name, value in limits.items():
        setattr(settings, name, value)
    random = {name: os.urandom(size) for name, size in extra.items()}  # no ratio to trip over
    path = write(tmp_path, "big.pptx", repack(pptx_bytes(), extra=dict(random)))
    with pytest.raises(ParseError, match=reason):
        parse(path, "pptx", "big.pptx")


def test_a_document_of_ten_thousand_parts_is_refused(tmp_path: Path) -> None:
    many = repack(xlsx_bytes(), extra={f"xl/media/{n}.bin": b"" for n in range(10_001)})
    path = write(tmp_path, "many.xlsx", many)
    with pytest.raises(ParseError, match="more than 10,000 parts"):
        parse(path, "xlsx", "many.xlsx")


def test_a_part_larger_than_its_header_says_fails_the_document(tmp_path: Path) -> None:
    # Declares its first kilobyte (and that kilobyte's checksum would not do either): the rest
    # expands past what the header allowed for.
    original = docx_bytes()
    xml = member(original, "word/document.xml")
    lying = with_lying_header(original, "word/document.xml", size=1024, crc=zlib.crc32(xml))
    path = write(tmp_path, "lying.docx", lying)
    with pytest.raises(ParseError, match="does not match its own headers"):
        parse(path, "docx", "lying.docx")


def test_a_bzip2_part_with_a_lying_header_is_refused_before_it_expands(tmp_path: Path) -> None:
    # Python's zipfile expands a whole read of bzip2 before it cuts to the declared size: the
    # real document.xml followed by 32 MB of zeros, declared (size and checksum) as the real
    # document.xml alone, took the 32 MB of memory at once and then read as a clean document.
    # Gigabytes fit in a few kilobytes the same way.
    original = docx_bytes()
    xml = member(original, "word/document.xml")
    bomb = repack(original, grow={"word/document.xml": 32 * MB}, compress_type=zipfile.ZIP_BZIP2)
    lying = with_lying_header(bomb, "word/document.xml", size=len(xml), crc=zlib.crc32(xml))
    assert len(lying) < len(original) + 1024  # 32 MB of zeros in a few hundred bytes
    path = write(tmp_path, "lying.docx", lying)
    assert detect_type(path, "lying.docx") == "docx"
    with pytest.raises(ParseError, match=r"word/document\.xml is compressed with bzip2"):
        parse(path, "docx", "lying.docx")
    # The same part in an uploaded archive is refused without being expanded.
    accepted, rejected = expand_archive(write(tmp_path, "bundle.zip", lying), "bundle.zip", tmp_path)
    assert "document.xml" not in [incoming.name for incoming in accepted]
    reasons = {refusal.name: refusal.reason for refusal in rejected}
    assert "compressed with bzip2" in reasons["bundle.zip/word/document.xml"]
    # An EPUB whose mimetype cannot be read without expanding it is refused at upload.
    epub = repack(epub_bytes(), grow={"mimetype": MB}, compress_type=zipfile.ZIP_BZIP2)
    with pytest.raises(UnsupportedFile, match="mimetype is compressed with bzip2"):
        detect_type(write(tmp_path, "book.epub", epub), "book.epub")


# --- through the worker -----------------------------------------------------------------------


def kb_without_model_server(team) -> KnowledgeBase:
    """A knowledge base whose embedding model nobody serves: enough for what fails before it."""
    model = embedding_model(team, "http://127.0.0.1:1", launch=False)
    return KnowledgeBase.objects.create(team=team, name=f"kb-{team.pk}", embedding_model=model)


def stored_document(kb: KnowledgeBase, name: str, content: bytes, kind: str, **fields: object) -> Document:
    return Document.objects.create(
        knowledge_base=kb,
        team=kb.team,
        original_name=name,
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        content_type=kind,
        file=ContentFile(content, name=name),
        **fields,
    )


@pytest.mark.django_db(transaction=True)
def test_zip_bombs_uploaded_as_documents_fail_with_their_reason(team, celery_worker: WorkerProcess) -> None:
    kb = kb_without_model_server(team)
    client = bearer_client(member_of(team, Role.MEMBER), team)
    bombs = {
        f"bomb.{kind}": repack(build(), extra={f"{MEDIA_DIR[kind]}/padding.bin": 32 * MB})
        for kind, build in PACKAGES.items()
    }
    response = upload(client, kb, bombs)
    assert response.status_code == 201, response.json()
    ids = [document["id"] for document in response.json()["documents"]]
    assert len(ids) == len(bombs)
    wait_until(lambda: all_settled(ids), timeout=60)
    for document in Document.objects.filter(pk__in=ids):
        assert document.status == DocumentStatus.FAILED, (document.original_name, document.status, document.error)
        assert "as zip bombs are: refused" in document.error, document.error
        assert document.attempts == 1


@pytest.mark.django_db(transaction=True)
def test_a_parse_longer_than_the_lease_keeps_the_document(team, settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker reports no progress while it parses; without a heartbeat the lease ran out and
    # the dispatcher handed the document to a second worker while the first still parsed it.
    settings.KB_INGEST_LEASE_S = 1
    document = stored_document(kb_without_model_server(team), "blank.txt", b"   \n\n   \n", "text")
    [(document_id, token)] = documents_dispatch()
    real_parse = kb_ingestion.parse

    def slow_parse(*args: object, **kwargs: object) -> object:
        time.sleep(4)  # four leases without a word of progress
        return real_parse(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kb_ingestion, "parse", slow_parse)

    def work() -> None:
        try:
            document_process(document_id=document_id, token=token)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    handed_out_again: list[tuple[int, str]] = []
    while worker.is_alive():
        handed_out_again += documents_dispatch()
        time.sleep(0.2)
    assert handed_out_again == []
    document.refresh_from_db()
    # The first holder still held it at the end: its own reason, one attempt.
    assert (document.status, document.attempts) == (DocumentStatus.FAILED, 1)
    assert "contains no text" in document.error


@pytest.mark.django_db(transaction=True)
def test_dispatch_fails_a_document_whose_worker_died_on_its_last_attempt(team, other_team, settings) -> None:
    settings.KB_INGEST_MAX_ATTEMPTS = 3
    expired = timezone.now() - timedelta(seconds=1)
    kb, other_kb = kb_without_model_server(team), kb_without_model_server(other_team)

    def held(name: str, attempts: int, status: str) -> Document:
        return stored_document(
            kb,
            name,
            name.encode(),
            "text",
            status=status,
            attempts=attempts,
            dispatched_at=expired,
            dispatch_token=uuid.uuid4(),
            lease_expires_at=expired,
        )

    poison = held("poison.txt", 3, DocumentStatus.EMBEDDING)
    unlucky = held("unlucky.txt", 2, DocumentStatus.PARSING)  # one attempt left: back in line
    waiting = stored_document(other_kb, "waiting.txt", b"waiting", "text")
    handed = dict(documents_dispatch())
    poison.refresh_from_db()
    assert poison.status == DocumentStatus.FAILED
    assert poison.error.startswith("the worker died 3 times while ingesting this file (killed, out of memory")
    assert (poison.dispatched_at, poison.dispatch_token, poison.lease_expires_at) == (None, None, None)
    assert set(handed) == {unlucky.pk, waiting.pk}
    assert Document.objects.get(pk=unlucky.pk).attempts == 2  # counted when a worker claims it


@pytest.fixture
def one_slot_two_attempts(celery_worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """The test worker again, dispatching one document at a time for every team, two attempts
    each: a document that kills its worker holds the only slot until it has used them."""
    usual = celery_worker.env
    celery_worker.kill()
    celery_worker.env = {**usual, "KB_INGEST_MAX_IN_FLIGHT": "1", "KB_INGEST_MAX_ATTEMPTS": "2"}
    try:
        celery_worker.start()
        yield celery_worker
    finally:
        if celery_worker.process is not None:
            celery_worker.kill()
        celery_worker.env = usual
        celery_worker.start()


@pytest.mark.django_db(transaction=True)
def test_a_document_that_kills_its_worker_fails_and_another_teams_document_goes_on(
    team, other_team, xinference: XinferenceServer, one_slot_two_attempts: WorkerProcess
) -> None:
    worker = one_slot_two_attempts
    clients, kbs = {}, {}
    for owner in (team, other_team):
        model = embedding_model(owner, xinference.endpoint)
        kbs[owner.pk] = KnowledgeBase.objects.create(team=owner, name="Logs", embedding_model=model)
        clients[owner.pk] = bearer_client(member_of(owner, Role.MEMBER), owner)
    # Long enough to be caught while a worker is on it (the kill stands for the file bringing
    # its worker down: a parser crash, memory exhaustion).
    log = "\n\n".join(
        f"Paragraph {n}: the harbour log records ship number {n} arriving with cargo." for n in range(4000)
    )
    poison_id = upload(clients[team.pk], kbs[team.pk], {"harbour-log.txt": log.encode()}).json()["documents"][0]["id"]
    other_id = None
    for attempt in (1, 2):
        wait_until(partial(held_by_a_worker, poison_id, attempt), timeout=120, poke=True)
        if other_id is None:
            response = upload(clients[other_team.pk], kbs[other_team.pk], {"notes.txt": samples()["notes.txt"]})
            other_id = response.json()["documents"][0]["id"]
        worker.kill()
        worker.start()
    wait_until(lambda: Document.objects.get(pk=poison_id).status == DocumentStatus.FAILED, timeout=120, poke=True)
    poison = Document.objects.get(pk=poison_id)
    assert poison.error.startswith("the worker died 2 times while ingesting this file"), poison.error
    assert poison.attempts == 2
    # The slot is free again: the other team's document, queued behind the poison all along, is ingested.
    assert other_id is not None
    wait_until(lambda: Document.objects.get(pk=other_id).status == DocumentStatus.READY, poke=True)


def held_by_a_worker(document_id: int, attempt: int) -> bool:
    document = Document.objects.get(pk=document_id)
    assert document.status != DocumentStatus.READY, "the document was ingested before its worker could be killed"
    return document.status in (DocumentStatus.PARSING, DocumentStatus.EMBEDDING) and document.attempts == attempt
