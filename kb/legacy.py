"""The long tail of formats, which the dedicated parsers in kb.parsing do not read.

- Legacy Office and OpenDocument files that only an office suite reads (.doc, .ppt, .xls, .odp,
  .ods, and .rtf) are converted by LibreOffice (`soffice --headless --convert-to`) into .docx,
  .pptx or .xlsx, which the dedicated parsers then read: a .doc's headings and tables come out as a
  .docx's do. (unstructured's partition_doc and partition_ppt do the same conversion, but run
  soffice without a time limit or a profile of their own, and its pptx reader drops a text box that
  LibreOffice's conversion leaves partly off the slide.) Without LibreOffice, .rtf is read by
  unstructured instead (pandoc, which loses its headings); the others fail saying what to install.
- .odt, .rst, .org and Outlook .msg are read by `unstructured` (pandoc for the first three, which
  pypandoc-binary carries; python-oxmsg for .msg): its titles become heading paths and its tables
  (`text_as_html`) markdown tables.

Each conversion runs in a child process (`python -m kb.legacy`) in a session of its own, with its
own temporary folder (LibreOffice's profile, pandoc's files) and at most KB_CONVERT_MAX_MEMORY_MB
of address space, which LibreOffice and pandoc inherit. Past KB_CONVERT_TIMEOUT_S the whole
session is killed and the document fails with the reason; the worker goes on. The child never
reaches the network: unstructured's telemetry is switched off, an audit hook refuses every
connection and name lookup (and names any attempt in the worker's log), and the spaCy model
unstructured downloads at first use to label text (narrative or not, which the platform does not
use) is replaced by a blank pipeline.

Password-protected files fail before any conversion, from a few bytes of their structure: the
Word FIB's fEncrypted bit, PowerPoint's encrypted CurrentUser token, Excel's FILEPASS record, an
encrypted OOXML package (EncryptionInfo and EncryptedPackage streams) and ODF's encryption data."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from kb.parsing import (
    ParseError,
    Section,
    UnsupportedFile,
    check_package,
    html_sections,
    parse_docx,
    parse_pptx,
    parse_xlsx,
)

logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent.parent
OLE2_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# An OOXML package (.docx, .xlsx, .pptx) saved with a password is an OLE2 file holding these two
# streams; nothing can be read from it without the password.
ENCRYPTED_OOXML = "encrypted-office"


@dataclass(frozen=True)
class Conversion:
    """What LibreOffice converts a kind into, with which of its import filters (named, so that a
    damaged file fails instead of being imported as plain text, LibreOffice's fallback), which of
    its parts does it (the library Debian's package for that part brings), and how the file is
    named in messages."""

    target: str
    infilter: str
    part: str
    package: str
    label: str


LIBREOFFICE_KINDS: dict[str, Conversion] = {
    "doc": Conversion("docx", "MS Word 97", "sw", "libreoffice-writer-nogui", "Word (.doc)"),
    "rtf": Conversion("docx", "Rich Text Format", "sw", "libreoffice-writer-nogui", "RTF (.rtf)"),
    "ppt": Conversion("pptx", "MS PowerPoint 97", "sd", "libreoffice-impress-nogui", "PowerPoint (.ppt)"),
    "odp": Conversion("pptx", "impress8", "sd", "libreoffice-impress-nogui", "OpenDocument presentation (.odp)"),
    "xls": Conversion("xlsx", "MS Excel 97", "sc", "libreoffice-calc-nogui", "Excel (.xls)"),
    "ods": Conversion("xlsx", "calc8", "sc", "libreoffice-calc-nogui", "OpenDocument spreadsheet (.ods)"),
}
EXCEL_95_FILTER = "MS Excel 95"  # a workbook in a "Book" stream (BIFF5) rather than "Workbook"
MODERN_PARSERS: dict[str, Callable[[Path, str], Iterator[Section]]] = {
    "docx": parse_docx,
    "pptx": parse_pptx,
    "xlsx": parse_xlsx,
}
UNSTRUCTURED_KINDS = frozenset(("odt", "rtf", "rst", "org", "msg"))
KINDS = frozenset((*LIBREOFFICE_KINDS, *UNSTRUCTURED_KINDS, ENCRYPTED_OOXML))

# Word's FIB starts with its identifier; its flags at offset 10 hold fEncrypted (MS-DOC 2.5.2).
WORD_IDENTIFIER = 0xA5EC
WORD_ENCRYPTED = 0x0100
# PowerPoint's CurrentUserAtom: its headerToken at offset 12 says whether the file is encrypted
# (MS-PPT 2.3.2).
PPT_ENCRYPTED_TOKEN = 0xF3D1C4DF
# Excel's BIFF records: FILEPASS in the workbook's globals (before their EOF) means a password.
XLS_FILEPASS, XLS_EOF = 0x002F, 0x000A
XLS_GLOBALS_SCAN_BYTES = 1024 * 1024
ODF_MANIFEST = "META-INF/manifest.xml"
ODF_MANIFEST_MAX_BYTES = 4 * 1024 * 1024

# The child's own answer is a few MB at most; its log lines are kept for the worker's log.
LOG_TAIL_CHARS = 4000


def password_message(original_name: str) -> str:
    return f"{original_name} is password-protected: remove the password and upload it again"


# --- detection ---------------------------------------------------------------------------------


def ole_kind(path: Path, original_name: str) -> str:
    """doc, ppt, xls, msg, or ENCRYPTED_OOXML for an OLE2 compound file, from its streams;
    UnsupportedFile for a damaged one or one of another kind (an installer, a Visio drawing)."""
    import olefile

    try:
        with olefile.OleFileIO(str(path)) as ole:
            if ole.exists("EncryptionInfo") and ole.exists("EncryptedPackage"):
                return ENCRYPTED_OOXML
            if ole.exists("WordDocument"):
                return "doc"
            if ole.exists("PowerPoint Document"):
                return "ppt"
            if ole.exists("Workbook") or ole.exists("Book"):
                return "xls"
            if any(entry[0].startswith("__substg1.0_") for entry in ole.listdir(streams=True, storages=False)):
                return "msg"
    except Exception as exc:  # olefile's errors on a hostile file are many kinds; none is ours
        raise UnsupportedFile(
            f"{original_name} looks like a legacy Office file (.doc, .xls, .ppt, .msg) but is damaged "
            f"({_without(path, exc)}): save it again from its application"
        ) from exc
    raise UnsupportedFile(
        f"{original_name} is a Microsoft compound file, but not a Word, Excel, PowerPoint or Outlook "
        "file: not a document the platform reads"
    )


def password_protected(path: Path, kind: str) -> bool:
    """Whether the file needs a password to be read, from a few bytes of its structure. A file
    too damaged to tell is not called protected: its conversion says what is wrong."""
    if kind == ENCRYPTED_OOXML:
        return True
    try:
        if kind in ("odt", "odp", "ods"):
            return _odf_encrypted(path)
        if kind in ("doc", "ppt", "xls"):
            return _ole_encrypted(path, kind)
    except Exception:  # damaged: the converter reports it
        logger.info("could not tell whether %s is password-protected", path, exc_info=True)
    return False


def _ole_encrypted(path: Path, kind: str) -> bool:
    import olefile

    with olefile.OleFileIO(str(path)) as ole:
        if kind == "doc":
            identifier, *_, flags = struct.unpack_from("<6H", ole.openstream("WordDocument").read(12))
            return identifier == WORD_IDENTIFIER and bool(flags & WORD_ENCRYPTED)
        if kind == "ppt":
            if ole.exists("EncryptedSummary"):
                return True
            if not ole.exists("Current User"):
                return False
            head = ole.openstream("Current User").read(16)
            return len(head) == 16 and struct.unpack_from("<I", head, 12)[0] == PPT_ENCRYPTED_TOKEN
        stream = "Workbook" if ole.exists("Workbook") else "Book"
        data = ole.openstream(stream).read(XLS_GLOBALS_SCAN_BYTES)
        position = 0
        while position + 4 <= len(data):
            record, length = struct.unpack_from("<HH", data, position)
            if record == XLS_FILEPASS:
                return True
            if record == XLS_EOF:
                return False
            position += 4 + length
        return False


def _odf_encrypted(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(ODF_MANIFEST)
        except KeyError:
            return False
        if info.file_size > ODF_MANIFEST_MAX_BYTES:
            return False
        return b"encryption-data" in archive.read(info)


# --- the worker side ---------------------------------------------------------------------------


def sections(path: Path, kind: str, original_name: str) -> list[Section]:
    """The document's sections, read through LibreOffice or unstructured (see the module's text)."""
    path.stat()  # a stored file that is gone is the caller's FileNotFoundError
    if password_protected(path, kind):
        raise ParseError(password_message(original_name))
    if kind in LIBREOFFICE_KINDS:
        missing = libreoffice_missing(kind)
        if missing is None:
            return _through_libreoffice(path, kind, original_name)
        if kind not in UNSTRUCTURED_KINDS:
            conversion = LIBREOFFICE_KINDS[kind]
            raise ParseError(
                f"{original_name}: a legacy {conversion.label} file needs LibreOffice on the server ({missing}): "
                f"install {conversion.package} there, or save the file as {_modern(kind)} and upload it again"
            )
    return list(_element_sections(_through_unstructured(path, kind, original_name), original_name))


def libreoffice_missing(kind: str) -> str | None:
    """Why LibreOffice cannot convert this kind on this machine, or None when it can."""
    binary = shutil.which(settings.KB_LIBREOFFICE)
    if binary is None:
        return f"{settings.KB_LIBREOFFICE} is not installed"
    conversion = LIBREOFFICE_KINDS[kind]
    program = Path(os.path.realpath(binary)).parent
    # Debian splits LibreOffice into packages per application; each brings its library.
    if any(program.glob("lib*lo.so")) and not (program / f"lib{conversion.part}lo.so").exists():
        return f"{conversion.package} is not installed"
    return None


def _modern(kind: str) -> str:
    return f".{LIBREOFFICE_KINDS[kind].target}" if kind in LIBREOFFICE_KINDS else ".docx"


def _through_libreoffice(path: Path, kind: str, original_name: str) -> list[Section]:
    conversion = LIBREOFFICE_KINDS[kind]
    infilter = conversion.infilter
    if kind == "xls" and _is_excel_95(path):
        infilter = EXCEL_95_FILTER
    with tempfile.TemporaryDirectory(prefix="kb-convert-") as work:
        request = {
            "op": "libreoffice",
            "soffice": shutil.which(settings.KB_LIBREOFFICE),
            "path": str(path.resolve()),
            "kind": kind,
            "target": conversion.target,
            "infilter": infilter,
        }
        answer = _run(request, Path(work), kind, original_name)
        converted = Path(answer["converted"])
        check_package(converted, original_name)  # what LibreOffice wrote gets a package's guards too
        return list(MODERN_PARSERS[conversion.target](converted, original_name))


def _is_excel_95(path: Path) -> bool:
    import olefile

    with olefile.OleFileIO(str(path)) as ole:
        return not ole.exists("Workbook") and ole.exists("Book")


def _through_unstructured(path: Path, kind: str, original_name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kb-convert-") as work:
        answer = _run({"op": "unstructured", "path": str(path), "kind": kind}, Path(work), kind, original_name)
    if answer.get("blocked"):
        logger.warning("unstructured tried to reach the network (refused) reading %s: %s", path, answer["blocked"])
    return answer


def _run(request: dict[str, Any], work: Path, kind: str, original_name: str) -> dict[str, Any]:
    """One request to a new child process in its own session, killed whole (LibreOffice and pandoc
    with it) past KB_CONVERT_TIMEOUT_S; its answer, or ParseError with the reason."""
    timeout = settings.KB_CONVERT_TIMEOUT_S
    request = {**request, "work": str(work), "max_memory_mb": settings.KB_CONVERT_MAX_MEMORY_MB}
    environment = {
        **os.environ,
        "TMPDIR": str(work),
        "HOME": str(work),
        # unstructured reports every partition (and each import) to its makers unless told not to.
        "DO_NOT_TRACK": "1",
        "SCARF_NO_ANALYTICS": "1",
        "UNSTRUCTURED_DISABLE_NOTICE": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kb.legacy"],
        cwd=BASE_DIR,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        output, log = process.communicate(json.dumps(request).encode(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_session(process)
        process.communicate()
        raise ParseError(
            f"{original_name}: converting it took longer than KB_CONVERT_TIMEOUT_S ({timeout:g} s) and was "
            f"stopped: split it, or save it as {_modern(kind)} and upload it again"
        ) from exc
    except BaseException:  # the task's own time limit, a worker shutting down
        _kill_session(process)
        process.communicate()
        raise
    _kill_session(process)  # whatever LibreOffice left running
    if log:
        logger.info("converting %s: %s", original_name, log.decode(errors="replace")[-LOG_TAIL_CHARS:])
    if process.returncode != 0 or not output:
        code = process.returncode
        cause = "killed, perhaps for running out of memory (KB_CONVERT_MAX_MEMORY_MB)" if code < 0 else "an error"
        raise ParseError(
            f"{original_name} crashed the converter (exit code {code}: {cause}): save it again from its "
            f"application, or as {_modern(kind)}, and upload it again"
        )
    answer: dict[str, Any] = json.loads(output)
    if "error" in answer:
        raise ParseError(f"{original_name} could not be read: {answer['error']}")
    return answer


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the session has ended already
        os.killpg(process.pid, signal.SIGKILL)


SKIPPED_CATEGORIES = frozenset(("PageBreak",))


def _element_sections(answer: dict[str, Any], original_name: str) -> Iterator[Section]:
    """unstructured's elements as sections: a title starts one (its depth places it in the heading
    path), a table is a markdown table where it stands, any other text a line. A message's header
    (subject, from, to) is a section of its own, as an .eml's is."""
    message: dict[str, str] = answer.get("message") or {}
    if message:
        yield Section("\n".join(f"{key.title()}: {value}" for key, value in message.items()), dict(message))
    headings: list[str] = []
    parts: list[str] = []
    for element in answer["elements"]:
        category, text = element["category"], element["text"]
        if category == "Title" and answer["titles"] and text.strip():
            yield Section("\n".join(parts), {**message, "heading_path": list(headings)})
            parts = []
            depth = min(max(int(element.get("depth") or 0), 0), len(headings))
            headings = [*headings[:depth], " ".join(text.split())]
        elif category == "Table":
            html = element.get("html")
            table = "\n".join(section.text for section in html_sections(html, {}, original_name)) if html else text
            parts.append(f"\n{table.strip()}\n")
        elif category not in SKIPPED_CATEGORIES:
            parts.append(text)
    yield Section("\n".join(parts), {**message, "heading_path": list(headings)})


# --- the child process -------------------------------------------------------------------------


def _serve() -> None:
    """Answer the one request on stdin (JSON) with one answer on stdout (JSON), then exit."""
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever the libraries print goes to the log, not into the answer
    request = json.loads(sys.stdin.buffer.read())
    limit = int(request["max_memory_mb"]) * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # LibreOffice and pandoc inherit it
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    blocked: list[str] = []
    sys.addaudithook(_offline(blocked))
    try:
        if request["op"] == "libreoffice":
            answer = _convert(request)
        else:
            answer = _partition(request["kind"], Path(request["path"]))
    except Exception as exc:
        if _out_of_memory(exc):
            answer = {"error": f"it ran out of memory{_memory_hint(request)}"}
        else:
            answer = {"error": f"{type(exc).__name__}: {_without(Path(request['path']), exc)}"}
    answer["blocked"] = blocked
    answers.write(json.dumps(answer, ensure_ascii=False))
    answers.flush()


def _out_of_memory(exc: Exception) -> bool:
    """A MemoryError, or the dynamic loader failing to load a library under the memory bound,
    raised as an ImportError or OSError ("failed to map segment from shared object", "cannot
    allocate memory"): which of the two came first varied from run to run."""
    if isinstance(exc, MemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, ImportError | OSError) and (
        "failed to map segment" in message or "cannot allocate memory" in message
    )


def _offline(blocked: list[str]) -> Callable[[str, tuple[Any, ...]], None]:
    """An audit hook refusing every network connection and name lookup in this process."""

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
            if event == "socket.connect" and getattr(args[0], "family", None) == socket.AF_UNIX:
                return
            target = args[1] if event == "socket.connect" else args[0]
            blocked.append(f"{event} {target!r}")
            raise PermissionError(f"kb.legacy reads documents offline: {event} {target!r} refused")

    return hook


def _convert(request: dict[str, Any]) -> dict[str, Any]:
    """LibreOffice's conversion of the document, with a profile of its own in the work folder (two
    conversions at once do not share one, and nothing is left behind)."""
    work = Path(request["work"])
    source = work / f"document.{request['kind']}"
    source.symlink_to(request["path"])  # the name tells LibreOffice what it holds
    out = work / "out"
    command = [
        request["soffice"],
        f"-env:UserInstallation={(work / 'profile').as_uri()}",
        "--headless",
        "--invisible",
        "--nologo",
        "--nodefault",
        "--norestore",
        "--nolockcheck",
        f"--infilter={request['infilter']}",
        "--convert-to",
        request["target"],
        "--outdir",
        str(out),
        str(source),
    ]
    result = subprocess.run(command, cwd=work, capture_output=True, check=False)  # noqa: S603
    converted = out / f"document.{request['target']}"
    if converted.is_file():
        return {"converted": str(converted)}
    # soffice exits with 0 whatever happened: its last words tell a file it could not load from
    # a crash (a backtrace, a library it could not map for want of address space).
    log = result.stderr.decode(errors="replace")
    if "source file could not be loaded" in log:
        return {
            "error": "LibreOffice could not open it: it is damaged, or not the kind of file it looks like; "
            "save it again from its application"
        }
    lines = [line.strip() for line in log.splitlines() if line.strip() and "javaldx" not in line]
    detail = lines[-1][:200] if lines else f"exit code {result.returncode}"
    return {"error": f"LibreOffice stopped without converting it ({detail}){_memory_hint(request)}"}


def _memory_hint(request: dict[str, Any]) -> str:
    return (
        f"; a large file may need more memory than KB_CONVERT_MAX_MEMORY_MB ({request['max_memory_mb']} MB) "
        "gives a conversion"
    )


def _partition(kind: str, path: Path) -> dict[str, Any]:
    _blank_spacy()
    from unstructured.documents.elements import Element

    elements: list[Element]
    message: dict[str, str] = {}
    titles = True
    if kind == "odt":
        from unstructured.partition.odt import partition_odt

        elements = partition_odt(filename=str(path))
    elif kind == "rtf":
        from unstructured.partition.rtf import partition_rtf

        elements = partition_rtf(filename=str(path))
    elif kind == "rst":
        from unstructured.partition.rst import partition_rst

        elements = partition_rst(filename=str(path))
    elif kind == "org":
        from unstructured.partition.org import partition_org

        elements = partition_org(filename=str(path))
    else:
        from oxmsg import Message
        from unstructured.partition.msg import partition_msg

        # A plain-text body's "titles" are guesses (short lines); an HTML body's are its headings.
        titles = Message.load(str(path)).html_body is not None
        elements = partition_msg(filename=str(path), process_attachments=False)
        if elements:
            metadata = elements[0].metadata
            sent_from, sent_to = metadata.sent_from or [], metadata.sent_to or []
            message = {
                key: value
                for key, value in (
                    ("subject", metadata.subject or ""),
                    ("from", ", ".join(sent_from)),
                    ("to", ", ".join(sent_to)),
                )
                if value
            }
    return {
        "elements": [
            {
                "category": element.category,
                "text": element.text,
                "depth": element.metadata.category_depth,
                "html": element.metadata.text_as_html,
            }
            for element in elements
        ],
        "titles": titles,
        "message": message,
    }


def _blank_spacy() -> None:
    """unstructured labels each piece of text (narrative or not) with spaCy's en_core_web_sm, which
    it downloads from GitHub at first use. The platform reads none of those labels, only titles
    (heading styles and tags) and tables, so a blank pipeline that splits sentences stands in:
    the same elements, some labelled Text rather than NarrativeText, and nothing downloaded."""
    import spacy
    import unstructured.nlp.tokenize as tokenize

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    tokenize._get_nlp = lambda: nlp  # type: ignore[assignment]


def _without(path: Path, exc: BaseException) -> str:
    """An error's message without the server's path to the file."""
    return str(exc).replace(str(path), "the file")


if __name__ == "__main__":
    _serve()
