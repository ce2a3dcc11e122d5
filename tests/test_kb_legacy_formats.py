"""The long tail of formats (kb.legacy): real .doc, .ppt, .xls, .odt, .odp, .ods and .rtf files that
LibreOffice makes here from .docx, .pptx and .xlsx written with known facts (English and Chinese)
and a table; .rst, .org and .eml written by hand; a real Outlook .msg written by aspose-email-foss;
an .epub made by pandoc from markdown. Each reads back with its facts, its headings and its table
as a markdown table under its header. Password-protected files (a .doc, .xls and .odt saved with a
password by LibreOffice, a .docx encrypted by msoffcrypto-tool, a .ppt whose CurrentUser token is
set to "encrypted" by hand: LibreOffice does not write encrypted .ppt) fail with the reason before
any conversion; mislabelled and damaged files fail with theirs; a LibreOffice that hangs (a stand-in
`soffice` that sleeps) is killed at KB_CONVERT_TIMEOUT_S and the next conversion works; a conversion
past KB_CONVERT_MAX_MEMORY_MB fails saying so; the unstructured child reaches no network.
One .doc and one .odt go through the real worker to search hits."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from accounts.models import Role
from kb import legacy
from kb.models import Chunk, Document, DocumentStatus, KnowledgeBase
from kb.parsing import LEGACY_KINDS, ParseError, Section, UnsupportedFile, detect_type, parse
from realservices.workers import WorkerProcess
from realservices.xinference import XinferenceServer
from tests.conftest import bearer_client, member_of
from tests.documents import FACT_EN, FACT_ZH, write
from tests.test_kb import all_settled, embedding_model, search, upload, wait_until

# Debian's LibreOffice (`make test` installs it, with python3-uno for the password-protected files).
SOFFICE = shutil.which("soffice")
DEBIAN_PYTHON = "/usr/bin/python3"
HEADINGS = ["Field notes", "动物"]
ROWS = [["City", "Cats", "Keeper"], ["Vardø", "17", "Ingrid Olsen"], ["青岛", "23", "王芳"]]
TABLE = "| City | Cats | Keeper |\n|---|---|---|\n| Vardø | 17 | Ingrid Olsen |\n| 青岛 | 23 | 王芳 |"
CLOSING = "End of the field notes."


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(HEADINGS[0], level=1)
    document.add_paragraph(FACT_EN)
    document.add_heading(HEADINGS[1], level=2)
    document.add_paragraph(FACT_ZH)
    table = document.add_table(rows=len(ROWS), cols=len(ROWS[0]))
    for row, cells in zip(table.rows, ROWS, strict=True):
        for cell, text in zip(row.cells, cells, strict=True):
            cell.text = text
    document.add_paragraph(CLOSING)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def pptx_bytes() -> bytes:
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[5])  # title only
    slide.shapes.title.text = HEADINGS[0]
    body = slide.shapes.add_textbox(Inches(1), Inches(1.5), Inches(8), Inches(1)).text_frame
    body.text = FACT_EN
    body.add_paragraph().text = FACT_ZH
    table = slide.shapes.add_table(len(ROWS), len(ROWS[0]), Inches(1), Inches(3.5), Inches(8), Inches(1.5)).table
    for number, cells in enumerate(ROWS):
        for column, text in enumerate(cells):
            table.cell(number, column).text = text
    buffer = io.BytesIO()
    presentation.save(buffer)
    return buffer.getvalue()


def xlsx_bytes() -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Cats"
    for row in ROWS:
        sheet.append(row)
    notes = workbook.create_sheet("Notes")
    for text in ("Note", FACT_EN, FACT_ZH):
        notes.append([text])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


RST = f"""\
{HEADINGS[0]}
===========

{FACT_EN}

{HEADINGS[1]}
------

{FACT_ZH}

+-----------+------+--------------+
| City      | Cats | Keeper       |
+===========+======+==============+
| Vardø     | 17   | Ingrid Olsen |
+-----------+------+--------------+
| 青岛      | 23   | 王芳         |
+-----------+------+--------------+

{CLOSING}
"""

ORG = f"""\
#+TITLE: Notes
* {HEADINGS[0]}
{FACT_EN}
** {HEADINGS[1]}
{FACT_ZH}

| City  | Cats | Keeper       |
|-------+------+--------------|
| Vardø |   17 | Ingrid Olsen |
| 青岛  |   23 | 王芳         |

{CLOSING}
"""

MARKDOWN = f"""\
# {HEADINGS[0]}

{FACT_EN}

## {HEADINGS[1]}

{FACT_ZH}

| City | Cats | Keeper |
|------|------|--------|
| Vardø | 17 | Ingrid Olsen |
| 青岛 | 23 | 王芳 |

{CLOSING}
"""


def html_body() -> str:
    cells = "".join(f"<th>{text}</th>" for text in ROWS[0])
    rows = "".join("<tr>" + "".join(f"<td>{text}</td>" for text in row) + "</tr>" for row in ROWS[1:])
    return (
        f"<html><body><h1>{HEADINGS[0]}</h1><p>{FACT_EN}</p><h2>{HEADINGS[1]}</h2><p>{FACT_ZH}</p>"
        f"<table><tr>{cells}</tr>{rows}</table><p>{CLOSING}</p></body></html>"
    )


def email_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Ingrid Olsen <ingrid@example.com>"
    message["To"] = "Wang Fang <fang@example.com>"
    message["Subject"] = "Cat census 猫"
    message.set_content(f"{FACT_EN}\n{FACT_ZH}\n")
    message.add_alternative(html_body(), subtype="html")
    return message


def msg_bytes(directory: Path) -> bytes:
    """A real Outlook message (a compound file of MAPI properties) with a plain and an HTML body."""
    from aspose.email_foss import msg

    target = directory / "census.msg"
    msg.MapiMessage.from_email_message(email_message()).save(target)
    return target.read_bytes()


def epub_bytes(directory: Path) -> bytes:
    import pypandoc

    target = directory / "book.epub"
    pypandoc.convert_text(MARKDOWN, "epub", format="md", outputfile=str(target), extra_args=["--metadata=title:Notes"])
    return target.read_bytes()


def soffice(sources: list[Path], target: str, directory: Path) -> None:
    assert SOFFICE, "soffice is missing: `make test` installs it (apt-get install libreoffice-writer-nogui ...)"
    subprocess.run(
        [
            SOFFICE,
            f"-env:UserInstallation={(directory / 'profile').as_uri()}",
            "--headless",
            "--convert-to",
            target,
            "--outdir",
            str(directory),
            *map(str, sources),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )


# LibreOffice's own Python bridge saves a document with a password (the command line cannot).
SAVE_WITH_PASSWORD = textwrap.dedent(
    """
    import os, subprocess, sys, time, uno
    from com.sun.star.beans import PropertyValue

    profile, password, *jobs = sys.argv[1:]
    office = subprocess.Popen(
        ["soffice", "-env:UserInstallation=" + profile, "--headless", "--invisible", "--norestore",
         "--accept=pipe,name=kbtest%d;urp;" % os.getpid()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def prop(name, value):
        item = PropertyValue()
        item.Name, item.Value = name, value
        return item

    try:
        local = uno.getComponentContext()
        resolver = local.ServiceManager.createInstanceWithContext("com.sun.star.bridge.UnoUrlResolver", local)
        for _ in range(300):
            try:
                remote = resolver.resolve("uno:pipe,name=kbtest%d;urp;StarOffice.ComponentContext" % os.getpid())
                break
            except Exception:
                time.sleep(0.2)
        desktop = remote.ServiceManager.createInstanceWithContext("com.sun.star.frame.Desktop", remote)
        for job in jobs:
            source, target, office_filter = job.split("|")
            url = uno.systemPathToFileUrl(source)
            document = desktop.loadComponentFromURL(url, "_blank", 0, (prop("Hidden", True),))
            document.storeToURL(
                uno.systemPathToFileUrl(target), (prop("FilterName", office_filter), prop("Password", password))
            )
            document.close(True)
        try:
            desktop.terminate()
        except Exception:
            pass
        office.wait(timeout=60)
    finally:
        if office.poll() is None:
            office.kill()
    """
)


def save_with_password(jobs: list[tuple[Path, Path, str]], directory: Path) -> None:
    assert Path(DEBIAN_PYTHON).exists(), "python3-uno is missing: `make test` installs it"
    script = write(directory, "save_with_password.py", SAVE_WITH_PASSWORD.encode())
    subprocess.run(
        [
            DEBIAN_PYTHON,
            str(script),
            (directory / "uno-profile").as_uri(),
            "s3cret",
            *(f"{source}|{target}|{office_filter}" for source, target, office_filter in jobs),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> a real file of that kind holding the facts, the headings and the table."""
    directory = tmp_path_factory.mktemp("legacy")
    docx = write(directory, "notes.docx", docx_bytes())
    pptx = write(directory, "slides.pptx", pptx_bytes())
    xlsx = write(directory, "census.xlsx", xlsx_bytes())
    for source, targets in ((docx, ("doc", "odt", "rtf")), (pptx, ("ppt", "odp")), (xlsx, ("xls", "ods"))):
        for target in targets:
            soffice([source], target, directory)
    made = {kind: directory / f"{source.stem}.{kind}" for kind, source in _sources(docx, pptx, xlsx)}
    assert all(path.exists() for path in made.values()), sorted(made)
    made["rst"] = write(directory, "notes.rst", RST.encode())
    made["org"] = write(directory, "notes.org", ORG.encode())
    made["msg"] = write(directory, "census.msg", msg_bytes(directory))
    made["eml"] = write(directory, "census.eml", bytes(email_message()))
    made["epub"] = write(directory, "notes.epub", epub_bytes(directory))
    return made


def _sources(docx: Path, pptx: Path, xlsx: Path) -> list[tuple[str, Path]]:
    return [("doc", docx), ("odt", docx), ("rtf", docx), ("ppt", pptx), ("odp", pptx), ("xls", xlsx), ("ods", xlsx)]


def read(path: Path, name: str | None = None) -> list[Section]:
    name = name or path.name
    return parse(path, detect_type(path, name), name)


def flat(text: str) -> str:
    return " ".join(text.split())


def holds_facts(sections: list[Section]) -> None:
    text = "\n".join(section.text for section in sections)
    assert flat(FACT_EN) in flat(text), text
    assert "".join(FACT_ZH.split()) in "".join(text.split()), text


def holds_table(sections: list[Section]) -> None:
    """The table whole in one section: its header, the delimiter and its rows, in order."""
    assert any(TABLE in section.text for section in sections), [section.text for section in sections]


def test_every_legacy_kind_has_a_reader() -> None:
    assert set(LEGACY_KINDS) == legacy.KINDS


@pytest.mark.parametrize("kind", ["doc", "rtf", "odt", "rst", "org", "epub"])
def test_documents_keep_facts_headings_and_tables(files: dict[str, Path], kind: str) -> None:
    path = files[kind]
    assert detect_type(path, path.name) == kind
    sections = read(path)
    holds_facts(sections)
    holds_table(sections)
    # The Chinese fact and the table sit under both headings; the English fact under the first.
    [under_both] = [section for section in sections if FACT_ZH in section.text]
    assert under_both.metadata["heading_path"][-2:] == HEADINGS
    assert TABLE in under_both.text
    assert CLOSING in under_both.text.split(TABLE)[1]  # the table stands where it stood
    [under_first] = [section for section in sections if flat(FACT_EN) in flat(section.text)]
    assert under_first.metadata["heading_path"][-1] == HEADINGS[0]


@pytest.mark.parametrize("kind", ["ppt", "odp"])
def test_presentations_keep_facts_and_tables_per_slide(files: dict[str, Path], kind: str) -> None:
    path = files[kind]
    assert detect_type(path, path.name) == kind
    [slide] = read(path)
    assert slide.metadata == {"slide": 1}
    assert slide.text.startswith(HEADINGS[0])
    holds_facts([slide])
    holds_table([slide])


@pytest.mark.parametrize("kind", ["xls", "ods"])
def test_spreadsheets_are_tables_per_sheet(files: dict[str, Path], kind: str) -> None:
    path = files[kind]
    assert detect_type(path, path.name) == kind
    sections = read(path)
    assert [section.metadata["sheet"] for section in sections] == ["Cats", "Notes"]
    assert sections[0].text == TABLE
    assert sections[1].text == f"| Note |\n|---|\n| {FACT_EN} |\n| {FACT_ZH} |"


@pytest.mark.parametrize("kind", ["msg", "eml"])
def test_messages_keep_their_header_facts_and_table(files: dict[str, Path], kind: str) -> None:
    path = files[kind]
    assert detect_type(path, path.name) == kind
    sections = read(path)
    assert sections[0].text.startswith("Subject: Cat census 猫\nFrom: ")
    assert "ingrid@example.com" in sections[0].text
    assert all(section.metadata["subject"] == "Cat census 猫" for section in sections)
    holds_facts(sections)
    holds_table(sections)


def test_reading_with_unstructured_reaches_no_network(files: dict[str, Path]) -> None:
    """unstructured downloads spaCy's model at first use and reports each partition to its makers
    unless stopped: the child's audit hook refuses and records any attempt, and none is made."""
    for kind in ("odt", "rst", "org", "msg", "rtf"):
        answer = legacy._through_unstructured(files[kind], kind, files[kind].name)
        assert answer["blocked"] == [], (kind, answer["blocked"])
        assert any(element["category"] == "Table" for element in answer["elements"]), kind


def test_the_conversion_process_cannot_reach_the_network(tmp_path: Path) -> None:
    """The audit hook itself: a connection attempt in a process that installed it is refused."""
    script = textwrap.dedent(
        """
        import socket, sys
        from kb.legacy import _offline
        blocked = []
        sys.addaudithook(_offline(blocked))
        for attempt in (lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
                        lambda: socket.getaddrinfo("example.com", 443)):
            try:
                attempt()
            except PermissionError:
                pass
        print(len(blocked))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=legacy.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "2", result.stderr


def test_rtf_without_libreoffice_is_read_by_unstructured_and_doc_says_what_to_install(
    files: dict[str, Path], settings
) -> None:
    settings.KB_LIBREOFFICE = "/nonexistent/soffice"
    sections = read(files["rtf"])
    holds_facts(sections)
    holds_table(sections)
    for kind, package, modern in (
        ("doc", "libreoffice-writer-nogui", ".docx"),
        ("ppt", "libreoffice-impress-nogui", ".pptx"),
        ("ods", "libreoffice-calc-nogui", ".xlsx"),
    ):
        with pytest.raises(ParseError) as refused:
            read(files[kind])
        assert f"needs LibreOffice on the server (/nonexistent/soffice is not installed): install {package}" in str(
            refused.value
        )
        assert f"save the file as {modern} and upload it again" in str(refused.value)


@pytest.fixture(scope="module")
def protected(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a password-protected file."""
    directory = tmp_path_factory.mktemp("protected")
    docx, xlsx = files["doc"].with_suffix(".docx"), files["xls"].with_suffix(".xlsx")
    made = {name: directory / name for name in ("locked.doc", "locked.xls", "locked.odt")}
    save_with_password(
        [
            (docx, made["locked.doc"], "MS Word 97"),
            (xlsx, made["locked.xls"], "MS Excel 97"),
            (docx, made["locked.odt"], "writer8"),
        ],
        directory,
    )
    from msoffcrypto.format.ooxml import OOXMLFile

    made["locked.docx"] = directory / "locked.docx"
    with open(docx, "rb") as source, open(made["locked.docx"], "wb") as target:
        OOXMLFile(source).encrypt("s3cret", target)
    made["locked.ppt"] = _ppt_marked_encrypted(files["ppt"], directory / "locked.ppt")
    return made


def _ppt_marked_encrypted(source: Path, target: Path) -> Path:
    """A real .ppt whose CurrentUserAtom's headerToken says "encrypted" (MS-PPT 2.3.2), as
    PowerPoint writes it for a file with a password; the rest of the file is not encrypted."""
    import olefile

    shutil.copy(source, target)
    with olefile.OleFileIO(str(target), write_mode=True) as ole:
        current_user = bytearray(ole.openstream("Current User").read())
        struct.pack_into("<I", current_user, 12, legacy.PPT_ENCRYPTED_TOKEN)
        ole.write_stream("Current User", bytes(current_user))
    return target


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("locked.doc", "doc"),
        ("locked.xls", "xls"),
        ("locked.odt", "odt"),
        ("locked.docx", "encrypted-office"),
        ("locked.ppt", "ppt"),
    ],
)
def test_password_protected_files_fail_with_the_reason(protected: dict[str, Path], name: str, kind: str) -> None:
    path = protected[name]
    assert detect_type(path, name) == kind
    assert legacy.password_protected(path, kind)
    with pytest.raises(ParseError, match=re.escape(legacy.password_message(name))):
        parse(path, kind, name)


def test_files_without_a_password_are_not_called_protected(files: dict[str, Path]) -> None:
    for kind in ("doc", "xls", "ppt", "odt", "odp", "ods"):
        assert not legacy.password_protected(files[kind], kind), kind


def test_mislabelled_and_damaged_files_fail_with_a_reason(files: dict[str, Path], tmp_path: Path) -> None:
    import olefile
    from aspose.email_foss.cfb import CFBDocument, CFBStorage, CFBStream, CFBWriter

    fake_png = write(tmp_path, "report.doc", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(UnsupportedFile, match=r"report\.doc looks like a PNG image but cannot be read"):
        detect_type(fake_png, "report.doc")
    noise = write(tmp_path, "noise.doc", os.urandom(20000))
    with pytest.raises(UnsupportedFile, match=r"noise\.doc (holds binary data|is not text)"):
        detect_type(noise, "noise.doc")
    broken = write(tmp_path, "broken.doc", legacy.OLE2_SIGNATURE + os.urandom(4000))
    with pytest.raises(UnsupportedFile, match=r"broken\.doc looks like a legacy Office file .* but is damaged"):
        detect_type(broken, "broken.doc")
    drawing = CFBDocument(root=CFBStorage("Root Entry", children=[CFBStream("VisioDocument", b"\x00" * 5000)]))
    other = write(tmp_path, "drawing.doc", CFBWriter.to_bytes(drawing))
    with pytest.raises(UnsupportedFile, match=r"drawing\.doc is a Microsoft compound file, but not a Word"):
        detect_type(other, "drawing.doc")
    # A Word file whose main stream is noise (no Word identifier, so not taken for a protected
    # one): LibreOffice, told it is Word, refuses to load it.
    garbled = tmp_path / "garbled.doc"
    shutil.copy(files["doc"], garbled)
    with olefile.OleFileIO(str(garbled), write_mode=True) as ole:
        ole.write_stream("WordDocument", b"\x00\x00" + os.urandom(ole.get_size("WordDocument") - 2))
    assert detect_type(garbled, "garbled.doc") == "doc"
    with pytest.raises(ParseError, match=r"garbled\.doc could not be read: LibreOffice could not open it: it is dam"):
        parse(garbled, "doc", "garbled.doc")


def test_a_hanging_libreoffice_is_killed_at_the_time_limit_and_the_next_conversion_works(
    files: dict[str, Path], tmp_path: Path, settings
) -> None:
    hanging = write(tmp_path, "soffice", b"#!/usr/bin/env python3\nimport time\ntime.sleep(600)\n")
    hanging.chmod(0o755)
    settings.KB_LIBREOFFICE = str(hanging)
    settings.KB_CONVERT_TIMEOUT_S = 3
    with pytest.raises(ParseError, match=r"notes\.doc: converting it took longer than KB_CONVERT_TIMEOUT_S \(3 s\)"):
        read(files["doc"])
    assert not _running(str(hanging)), "the hanging LibreOffice outlived its conversion"
    assert not _running("kb-convert-"), "a conversion's process outlived it"
    settings.KB_LIBREOFFICE = "soffice"
    settings.KB_CONVERT_TIMEOUT_S = 300
    holds_table(read(files["doc"]))


def test_a_conversion_past_its_memory_bound_fails_saying_so(files: dict[str, Path], settings) -> None:
    settings.KB_CONVERT_MAX_MEMORY_MB = 150  # LibreOffice needs more than that to start
    for kind in ("doc", "rst"):
        with pytest.raises(ParseError, match=r"KB_CONVERT_MAX_MEMORY_MB \(150 MB\)"):
            read(files[kind])


def _running(marker: str) -> list[int]:
    """Processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if marker in command and "zombie" not in state:
            found.append(int(entry.name))
    return found


def test_opendocument_and_rst_org_are_told_apart_by_content_and_name(files: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("odt", "odp", "ods"):
        with zipfile.ZipFile(files[kind]) as archive:
            assert archive.read("mimetype").startswith(b"application/vnd.oasis.opendocument.")
    # .rst and .org read alike with plain text: the name tells them apart, the content stays text.
    assert detect_type(write(tmp_path, "notes.txt", RST.encode()), "notes.txt") == "text"
    assert detect_type(write(tmp_path, "a.rst", RST.encode()), "a.rst") == "rst"
    assert detect_type(write(tmp_path, "a.org", ORG.encode()), "a.org") == "org"
    assert detect_type(write(tmp_path, "fake.rtf", b"{\\rtf1 hello}"), "fake.rtf") == "rtf"


@pytest.mark.django_db(transaction=True)
def test_a_doc_and_an_odt_are_ingested_by_the_worker_and_found(
    team, xinference: XinferenceServer, celery_worker: WorkerProcess, files: dict[str, Path]
) -> None:
    model = embedding_model(team, xinference.endpoint)
    client = bearer_client(member_of(team, Role.ADMIN), team)
    created = client.post("/api/v1/knowledge-bases/", {"name": "Legacy", "embedding_model": model.pk}, format="json")
    kb = KnowledgeBase.objects.get(pk=created.json()["id"])
    response = upload(client, kb, {"notes.doc": files["doc"].read_bytes(), "notes.odt": files["odt"].read_bytes()})
    assert response.status_code == 201, response.json()
    ids = {document["original_name"]: document["id"] for document in response.json()["documents"]}
    wait_until(lambda: all_settled(list(ids.values())))
    for name, document_id in ids.items():
        document = Document.objects.get(pk=document_id)
        assert (document.status, document.error, document.content_type) == (DocumentStatus.READY, "", name[-3:])
        chunks = Chunk.objects.filter(document=document)
        assert any(TABLE in chunk.text for chunk in chunks), name
    hits = search(client, kb, "lighthouse keeper Vardø cats", mode="fulltext", top_k=5)
    assert {hit["document_id"] for hit in hits} == set(ids.values())
    hits = search(client, kb, "青岛啤酒节", mode="fulltext", top_k=5)
    assert {hit["document_id"] for hit in hits} == set(ids.values())
    # Short sections share a chunk, which keeps the first one's heading path.
    assert all(hit["metadata"]["heading_path"][0] == HEADINGS[0] for hit in hits)
