"""Detect a file's type from its content and turn it into sections of text with structure
(page, slide, sheet, heading path). Dedicated fast parsers throughout: pypdfium2, python-docx,
python-pptx, openpyxl, lxml, the standard library for e-mail, CSV, JSON and EPUB. The long tail
(.doc, .ppt, .xls, .rtf, OpenDocument, .rst, .org, Outlook .msg) goes through LibreOffice or
`unstructured` in a child process (kb.legacy); for the formats above `unstructured` gives the same
text several times slower."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import posixpath
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings

from core.domain_errors import DomainError
from kb.tables import MAX_SPAN, markdown_table, span, table_cell

if TYPE_CHECKING:
    from docx.table import Table as DocxTable
    from pptx.table import Table as PptxTable

SNIFF_BYTES = 8192
CHUNK_BYTES = 1024 * 1024


class UnsupportedFile(DomainError):
    """Refused at upload: the content is not a format the platform reads."""

    code = "unsupported_file"


class ParseError(DomainError):
    """The file claims a format but cannot be read (corrupt, encrypted, no text)."""

    code = "parse_error"


@dataclass
class Section:
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _no_progress(done: int, total: int) -> None:
    pass


@dataclass
class ParseReport:
    """What a parser tells its caller besides the sections: progress through the pages it reads
    slowly (OCR), as (done, total), and notices of what it left out (pages past a limit)."""

    progress: Callable[[int, int], None] = _no_progress
    notices: list[str] = field(default_factory=list)


# --- detection --------------------------------------------------------------------------------

# Images are read by OCR (kb.ocr); Pillow confirms what the signature says.
IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
}
BINARY_SIGNATURES = {
    b"GIF8": "a GIF image",
    b"\x7fELF": "an executable",
    b"MZ": "a Windows executable",
    b"\x1f\x8b": "a gzip archive",
    b"Rar!": "a RAR archive",
    b"7z\xbc\xaf": "a 7-Zip archive",
}
OLE2_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy Office and Outlook files (kb.legacy)
RTF_SIGNATURE = b"{\\rtf"
TEXT_SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".rst": "rst",
    ".org": "org",
}


def detect_type(path: Path, original_name: str) -> str:
    """One of pdf, docx, pptx, xlsx, epub, zip, html, markdown, csv, json, jsonl, eml, text, image
    (PNG, JPEG, TIFF, WebP), doc, ppt, xls, msg, encrypted-office (an OOXML file saved with a
    password), odt, odp, ods, rtf, rst, org. The content decides; the name only tells text formats
    apart (markdown, csv, rst, org) that read alike."""
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if not head:
        raise UnsupportedFile(f"{original_name} is empty")
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path, original_name)
    if head.startswith(OLE2_SIGNATURE):
        from kb import legacy

        return legacy.ole_kind(path, original_name)
    if head.startswith(RTF_SIGNATURE):
        return "rtf"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _image_kind(path, original_name, "a WebP image")
    for signature, what in IMAGE_SIGNATURES.items():
        if head.startswith(signature):
            return _image_kind(path, original_name, what)
    for signature, what in BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise UnsupportedFile(f"{original_name} is {what}, not a document the platform reads")
    text = decode_text(head, original_name, partial=True)
    return _text_kind(text, original_name, path)


def _image_kind(path: Path, original_name: str, what: str) -> str:
    """An image, once Pillow reads its header (nothing is decoded here). Its size is the worker's
    to judge (KB_OCR_MAX_PIXELS, kb.ocr), so Pillow's decompression-bomb guard is no answer here."""
    from PIL import Image, UnidentifiedImageError

    from kb.ocr import IMAGE_FORMATS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS):
                return "image"
    except Image.DecompressionBombError:
        return "image"
    except UnidentifiedImageError as exc:  # its message names the server's path
        raise UnsupportedFile(f"{original_name} looks like {what} but cannot be read: it is damaged") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnsupportedFile(f"{original_name} looks like {what} but cannot be read ({exc})") from exc


EPUB_MIMETYPE = b"application/epub+zip"
ODF_MIMETYPES = {
    b"application/vnd.oasis.opendocument.text": "odt",
    b"application/vnd.oasis.opendocument.presentation": "odp",
    b"application/vnd.oasis.opendocument.spreadsheet": "ods",
}


def _zip_kind(path: Path, original_name: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "word/document.xml" in names:
                return "docx"
            if "ppt/presentation.xml" in names:
                return "pptx"
            if "xl/workbook.xml" in names:
                return "xlsx"
            mimetype = _read_head(archive, "mimetype", original_name).strip() if "mimetype" in names else b""
            if mimetype == EPUB_MIMETYPE:
                return "epub"
            if mimetype in ODF_MIMETYPES:
                return ODF_MIMETYPES[mimetype]
    except zipfile.BadZipFile as exc:
        raise UnsupportedFile(f"{original_name} looks like a ZIP file but is corrupt: {exc}") from exc
    return "zip"


def _read_head(archive: zipfile.ZipFile, name: str, original_name: str) -> bytes:
    """The first bytes of a member, without expanding the rest of it."""
    info = archive.getinfo(name)
    if info.compress_type not in SAFE_COMPRESSION:
        raise UnsupportedFile(_unsafe_compression(original_name, info))
    with archive.open(info) as member:
        return member.read(64)


# --- ZIP guards -------------------------------------------------------------------------------
# Shared by uploaded archives (kb.uploads) and the ZIP-based formats (docx, pptx, xlsx, epub, OpenDocument):
# what a small upload may expand to on the server.

MAX_COMPRESSION_RATIO = 100  # larger ratios are what zip bombs are made of
# Office packages hold a few parts per slide or sheet plus their media: large decks pass the
# 1,000 files allowed in an uploaded archive; the declared sizes below bound them anyway.
MAX_PACKAGE_MEMBERS = 10_000
# Below this a part cannot expand into anything that matters, and small XML parts of real
# documents (styles, settings) may compress better than 100:1.
RATIO_CHECKED_ABOVE_BYTES = 1024 * 1024
# What OOXML and EPUB allow and zip tools write by default. bzip2 and LZMA are refused:
# Python's zipfile expands a whole read of those before it applies the member's size, so a few
# kilobytes under a header that says 1 KB expand to gigabytes in memory.
SAFE_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
PACKAGE_KINDS = frozenset(("docx", "pptx", "xlsx", "epub", "odt", "odp", "ods"))


class MemberTooLarge(UnsupportedFile):
    """An archive member expanded past the size its header declares."""

    def __init__(self) -> None:
        super().__init__("the archive member is larger than its header says: refused")


class BoundedReader:
    """Reads at most the declared size (+1 byte to notice a lie): headers cannot understate a bomb."""

    def __init__(self, stream: IO[bytes], declared: int) -> None:
        self.stream = stream
        self.remaining = declared + 1

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            raise MemberTooLarge()
        block = self.stream.read(min(size if size > 0 else CHUNK_BYTES, self.remaining))
        self.remaining -= len(block)
        if self.remaining <= 0 and block:
            raise MemberTooLarge()
        return block


COMPRESSION_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 9: "Deflate64", 98: "PPMd"}


def compression_name(info: zipfile.ZipInfo) -> str:
    return COMPRESSION_NAMES.get(info.compress_type, f"compression method {info.compress_type}")


def _unsafe_compression(original_name: str, info: zipfile.ZipInfo) -> str:
    return (
        f"{original_name}: {info.filename} is compressed with {compression_name(info)}, which the platform "
        "does not expand: save it again with standard (deflate) compression"
    )


def check_package(path: Path, original_name: str) -> None:
    """Refuse a ZIP-based document built to exhaust the worker before any parser opens it, with
    the guards an uploaded archive gets: member count, each declared size against
    KB_MAX_UPLOAD_BYTES and their total against KB_MAX_ARCHIVE_BYTES, the compression ratio, and
    every member read once, bounded by its declared size (and its checksum checked), so a header
    that lies about a size fails here instead of inside python-docx, openpyxl or python-pptx."""
    limit, budget = settings.KB_MAX_UPLOAD_BYTES, settings.KB_MAX_ARCHIVE_BYTES
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_PACKAGE_MEMBERS:
                raise ParseError(
                    f"{original_name} holds more than {MAX_PACKAGE_MEMBERS:,} parts, as zip bombs do: "
                    "split the document"
                )
            if sum(info.file_size for info in members) > budget:
                raise ParseError(
                    f"{original_name} expands to more than {budget // (1024 * 1024)} MB "
                    "(KB_MAX_ARCHIVE_BYTES): split the document"
                )
            for info in members:
                _check_member(info, original_name, limit)
            for info in members:
                with archive.open(info) as member:
                    reader = BoundedReader(member, info.file_size)
                    while reader.read(CHUNK_BYTES):
                        pass
    except MemberTooLarge as exc:
        raise ParseError(f"{original_name}: {exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        # A checksum or size that does not match the data is how a lying header shows here:
        # zipfile stops at the declared size, then finds the checksum wrong.
        raise ParseError(
            f"{original_name} is corrupt or does not match its own headers ({exc}): save it again from its application"
        ) from exc


def _check_member(info: zipfile.ZipInfo, original_name: str, limit: int) -> None:
    if info.flag_bits & 0x1:
        raise ParseError(f"{original_name}: {info.filename} is encrypted: save the document without a password")
    if info.compress_type not in SAFE_COMPRESSION:
        raise ParseError(_unsafe_compression(original_name, info))
    if info.file_size > limit:
        raise ParseError(
            f"{original_name}: {info.filename} expands to more than the limit of {limit // (1024 * 1024)} MB "
            "(KB_MAX_UPLOAD_BYTES): split the document"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_CHECKED_ABOVE_BYTES and ratio > MAX_COMPRESSION_RATIO:
        raise ParseError(
            f"{original_name}: {info.filename} is compressed more than {MAX_COMPRESSION_RATIO}:1 "
            f"({info.file_size // (1024 * 1024)} MB from {info.compress_size:,} bytes), as zip bombs are: refused"
        )


def decode_text(data: bytes, original_name: str, *, partial: bool = False) -> str:
    if b"\x00" in data and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnsupportedFile(f"{original_name} holds binary data, not text (whatever its name says)")
    for encoding in ("utf-8-sig", "utf-16", "gb18030"):
        if encoding == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            continue
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            # A sniffed prefix may end inside a multi-byte character.
            if partial and exc.start >= len(data) - 4:
                return data[: exc.start].decode(encoding)
    raise UnsupportedFile(f"{original_name} is not text in UTF-8, UTF-16 or GB18030")


def _text_kind(text: str, original_name: str, path: Path) -> str:
    stripped = text.lstrip()
    suffix = Path(original_name).suffix.lower()
    if suffix in (".jsonl", ".ndjson") or (suffix not in (".json",) and _looks_like_jsonl(stripped)):
        return "jsonl"
    if stripped.startswith(("{", "[")):
        try:
            json.loads(path.read_bytes().decode("utf-8-sig"))
            return "json"
        except (ValueError, UnicodeDecodeError):
            pass
    lowered = stripped[:2000].lower()
    if lowered.startswith(("<!doctype html", "<html")) or re.search(r"<(body|div|p|h[1-6])[\s>]", lowered):
        return "html"
    if re.match(r"(?:(?:received|from|to|subject|date|mime-version|message-id|return-path):[^\n]*\n){2,}", lowered):
        return "eml"
    return TEXT_SUFFIXES.get(suffix, "markdown" if re.search(r"^#{1,6} \S", text, re.MULTILINE) else "text")


def _looks_like_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines()[:5] if line.strip()]
    if len(lines) < 2 or not all(line.lstrip().startswith("{") for line in lines):
        return False
    try:
        for line in lines[:-1]:  # the last sniffed line may be cut short
            json.loads(line)
    except ValueError:
        return False
    return True


# --- parsing ----------------------------------------------------------------------------------


def parse(path: Path, kind: str, original_name: str, report: ParseReport | None = None) -> list[Section]:
    """`report` hears the progress through pages read by OCR, and gets notices of what was left out."""
    parser = PARSERS.get(kind)
    if parser is None:
        raise UnsupportedFile(f"{original_name}: {kind} files are not parsed")
    if kind in PACKAGE_KINDS:
        check_package(path, original_name)
    report = report if report is not None else ParseReport()
    reporting = REPORTING_PARSERS.get(kind)
    found = reporting(path, original_name, report) if reporting else parser(path, original_name)
    sections = [section for section in found if section.text.strip()]
    if not sections:
        hint = {"pdf": " (no text layer, and none that OCR could read)", "image": " that OCR could read"}.get(kind, "")
        left_out = f" ({'; '.join(report.notices)})" if report.notices else ""
        raise ParseError(f"{original_name} contains no text{hint}{left_out}")
    return sections


def parse_pdf(path: Path, original_name: str, report: ParseReport | None = None) -> Iterator[Section]:
    """Page by page: the text layer, or for a page without one that shows an image (a scan), the
    text OCR reads in it (kb.ocr), so a mixed document OCRs only the pages that need it. Ruled
    tables become markdown tables, one across a page break one table (kb.pdf_tables)."""
    import pypdfium2

    from kb import ocr, pdf_tables

    try:
        pdf = pypdfium2.PdfDocument(path)
    except pypdfium2.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise ParseError(f"{original_name} is encrypted: upload it without a password") from exc
        raise ParseError(f"{original_name} is not a readable PDF ({exc})") from exc
    pages: list[list[pdf_tables.Block]] = []
    scanned: list[int] = []
    tables = pdf_tables.TableFinder(path)
    try:
        for number in range(len(pdf)):
            page = pdf[number]
            textpage = page.get_textpage()
            text = textpage.get_text_range()
            blocks = None
            if ocr.page_needs_ocr(page, text):
                scanned.append(number + 1)
            else:
                blocks = pdf_tables.page_blocks(page, textpage, number, tables)
            textpage.close()
            page.close()
            pages.append(blocks or [text.replace("\r\n", "\n")])
    finally:
        tables.close()
        pdf.close()
    texts = pdf_tables.page_texts(pages)
    recognised = ocr.pdf_sections(path, scanned, report or ParseReport()) if scanned else {}
    for number, text in enumerate(texts, start=1):
        yield recognised.get(number) or Section(text, {"page": number})


def parse_image(path: Path, original_name: str, report: ParseReport | None = None) -> Iterator[Section]:
    from kb import ocr

    yield from ocr.image_sections(path, original_name, report or ParseReport())


def parse_docx(path: Path, original_name: str) -> Iterator[Section]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ParseError(f"{original_name} is not a readable Word document ({exc})") from exc
    headings: list[str] = []
    paragraphs: list[str] = []
    # Paragraphs and tables in body order: a table stays between the paragraphs around it.
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            if table := _docx_table(block):
                paragraphs.append(f"\n{table}\n")  # blank lines around it, as markdown wants
            continue
        paragraph = block
        style = paragraph.style.name if paragraph.style is not None else ""
        level = _heading_level(style)
        if level and paragraph.text.strip():
            yield Section("\n".join(paragraphs), {"heading_path": list(headings)})
            paragraphs = []
            headings = [*headings[: level - 1], paragraph.text.strip()]
        else:
            paragraphs.append(paragraph.text)
    yield Section("\n".join(paragraphs), {"heading_path": list(headings)})


def _docx_table(table: DocxTable) -> str:
    """Read from the XML grid rather than `row.cells`, which repeats a merged cell in every
    position (and walks up a vertical merge again for each row of it): a merged cell's text
    once, in its first position; leading grid positions a row skips kept blank."""
    from docx.table import _Cell

    rows: list[list[str]] = []
    for tr in table._tbl.tr_lst:
        row = [""] * min(tr.grid_before, MAX_SPAN)
        for tc in tr.tc_lst:
            text = "" if tc.vMerge == "continue" else _Cell(tc, table).text
            row.extend([text, *[""] * (span(tc.grid_span) - 1)])
        rows.append(row)
    return markdown_table(rows)


def _heading_level(style_name: str) -> int:
    match = re.match(r"(?:Heading|标题)\s*(\d)", style_name)
    if match:
        return int(match.group(1))
    return 1 if style_name == "Title" else 0


def parse_pptx(path: Path, original_name: str) -> Iterator[Section]:
    import pptx
    from pptx.shapes.graphfrm import GraphicFrame

    try:
        presentation = pptx.Presentation(str(path))
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ParseError(f"{original_name} is not a readable PowerPoint file ({exc})") from exc
    for number, slide in enumerate(presentation.slides, start=1):
        texts = []
        for shape in slide.shapes:  # in the slide's order: a table between the texts around it
            if shape.has_text_frame:
                texts.append(shape.text_frame.text)
            elif isinstance(shape, GraphicFrame) and shape.has_table and (table := _pptx_table(shape.table)):
                texts.append(f"\n{table}\n")
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            texts.append(slide.notes_slide.notes_text_frame.text)
        yield Section("\n".join(texts), {"slide": number})


def _pptx_table(table: PptxTable) -> str:
    """A merged cell's text once, at its origin; the cells it spans blank."""
    return markdown_table(["" if cell.is_spanned else cell.text for cell in row.cells] for row in table.rows)


ROWS_PER_SECTION = 40


def parse_xlsx(path: Path, original_name: str) -> Iterator[Section]:
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ParseError(f"{original_name} is not a readable Excel workbook ({exc})") from exc
    try:
        for sheet in workbook.worksheets:
            rows = ([("" if cell is None else str(cell)) for cell in row] for row in sheet.iter_rows(values_only=True))
            yield from _sheet_tables(rows, {"sheet": sheet.title})
    finally:
        workbook.close()


def _sheet_tables(rows: Iterator[list[str]], metadata: dict[str, Any]) -> Iterator[Section]:
    """A sheet as markdown tables of at most ROWS_PER_SECTION rows, each under the sheet's first
    row with text (its header), so every part of a long sheet still says what its columns are.
    `rows` in the metadata: the sheet's row numbers of the table's first and last row."""
    header: list[str] = []
    block: list[list[str]] = []
    numbers: list[int] = []
    tables = 0
    for number, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if not header:
            header = row
            continue
        block.append(row)
        numbers.append(number)
        if len(block) == ROWS_PER_SECTION:
            yield Section(markdown_table([header, *block]), {**metadata, "rows": [numbers[0], numbers[-1]]})
            block, numbers, tables = [], [], tables + 1
    if block:
        yield Section(markdown_table([header, *block]), {**metadata, "rows": [numbers[0], numbers[-1]]})
    elif header and not tables:
        yield Section(markdown_table([header]), dict(metadata))  # a sheet of one row


def parse_csv(path: Path, original_name: str) -> Iterator[Section]:
    text = decode_text(path.read_bytes(), original_name)
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    yield from _table_sections(csv.reader(io.StringIO(text), dialect), {})


def _table_sections(rows: Iterator[list[str]], metadata: dict[str, Any]) -> Iterator[Section]:
    """Each row as `header: value` pairs, so a chunk of rows still says what each value is."""
    header: list[str] | None = None
    lines: list[str] = []
    first_row = 2
    for number, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() or f"column {index + 1}" for index, cell in enumerate(row)]
            continue
        lines.append("; ".join(f"{name}: {value}" for name, value in zip(header, row, strict=False) if value.strip()))
        if len(lines) == ROWS_PER_SECTION:
            yield Section("\n".join(lines), {**metadata, "rows": [first_row, number]})
            lines, first_row = [], number + 1
    if lines:
        yield Section("\n".join(lines), {**metadata, "rows": [first_row, first_row + len(lines) - 1]})
    elif header is not None and first_row == 2:
        yield Section("; ".join(header), dict(metadata))


def parse_json(path: Path, original_name: str) -> Iterator[Section]:
    try:
        value = json.loads(decode_text(path.read_bytes(), original_name))
    except ValueError as exc:
        raise ParseError(f"{original_name} is not valid JSON ({exc})") from exc
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield Section("\n".join(_flatten(item)), {"record": index})
    else:
        yield Section("\n".join(_flatten(value)), {})


def parse_jsonl(path: Path, original_name: str) -> Iterator[Section]:
    for number, line in enumerate(decode_text(path.read_bytes(), original_name).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ParseError(f"{original_name}, line {number}, is not valid JSON ({exc})") from exc
        yield Section("\n".join(_flatten(record)), {"line": number})


def _flatten(value: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        for index, inner in enumerate(value):
            yield from _flatten(inner, f"{prefix}[{index}]")
    elif isinstance(value, list):
        yield f"{prefix}: {', '.join(str(item) for item in value)}" if prefix else ", ".join(map(str, value))
    elif value is not None and str(value).strip():
        yield f"{prefix}: {value}" if prefix else str(value)


def parse_html(path: Path, original_name: str) -> Iterator[Section]:
    yield from html_sections(decode_text(path.read_bytes(), original_name), {}, original_name)


HTML_DROPPED_TAGS = ("script", "style", "noscript", "nav", "header", "footer", "template", "svg")
HTML_TEXT_TAGS = frozenset(
    (
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "p",
        "li",
        "pre",
        "td",
        "th",
        "dt",
        "dd",
        "blockquote",
        "figcaption",
        "caption",
    )
)
HTML_HEADING_TAGS = frozenset(("h1", "h2", "h3", "h4", "h5", "h6"))
# Elements that break the text inside a text element (a list in a cell, paragraphs in an item):
# a space goes between their pieces. Inline elements (code, links, emphasis) join as written, so
# `copytree(src, dst)` stays one piece of text and not `copytree ( src , dst )`.
HTML_BREAK_TAGS = frozenset(("br", "p", "div", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "td", "th", "pre"))
# Page furniture, not content: navigation bars, sidebars, tables of contents, footers and heading
# anchors, by ARIA role and by the classes documentation generators give them (Sphinx, DocBook,
# MkDocs). Indexed, every page's sidebar matched questions about the pages it lists.
HTML_FURNITURE_ROLES = frozenset(("navigation", "banner", "contentinfo", "search"))
HTML_FURNITURE_CLASSES = frozenset(
    (
        "sphinxsidebar",
        "related",
        "footer",
        "navheader",
        "navfooter",
        "toc",
        "breadcrumb",
        "breadcrumbs",
        "sidebar",
        "navbar",
        "headerlink",
    )
)


def html_sections(markup: str, metadata: dict[str, Any], source_name: str) -> Iterator[Section]:
    """Text between headings, each with its heading path; scripts, styles and navigation dropped.

    lxml directly rather than through BeautifulSoup: the same text, 13 times faster (100 bench
    documents: 0.8 s against 10.8 s), and parsing shares the CPU with the embedding model."""
    import lxml.html
    from lxml import etree

    # Bytes with the encoding named: lxml refuses a str that carries an XML encoding declaration
    # (Debian's XHTML docs, EPUB chapters). huge_tree lifts the nesting limit from 256 to 2048;
    # past a limit libxml2 silently drops the rest of the document, so that is an error here.
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, huge_tree=True)
    try:
        document = lxml.html.document_fromstring(markup.encode("utf-8", errors="replace"), parser=parser)
    except etree.ParserError:
        return  # no elements at all: the caller reports a file without text
    if any(error.type_name == "ERR_RESOURCE_LIMIT" for error in parser.error_log):
        raise ParseError(
            f"{source_name} nests its HTML elements too deeply to be read whole (over 2048 levels): "
            "save it as plain text or flatten it, then upload it again"
        )
    etree.strip_elements(document, *HTML_DROPPED_TAGS, with_tail=False)
    body = document.find("body")
    root = body if body is not None else document
    content = _without_furniture(root)
    # A page that is all furniture (a table of contents page) keeps it: it is the page's content.
    yield from _html_blocks(content if content.text_content().strip() else root, metadata)


def _without_furniture(root: Any) -> Any:
    """A copy of `root` without navigation, sidebars, tables of contents and footers."""
    import copy

    content = copy.deepcopy(root)
    for element in list(content.iter()):
        if not isinstance(element.tag, str) or element.getparent() is None:
            continue
        classes = set((element.get("class") or "").split())
        if element.get("role") in HTML_FURNITURE_ROLES or classes & HTML_FURNITURE_CLASSES:
            element.drop_tree()  # keeps the text that follows it
    return content


def _html_blocks(root: Any, metadata: dict[str, Any]) -> Iterator[Section]:
    """One walk over the tree, each piece of text read once. The outermost text element (a
    paragraph, a list item, a cell, a quote) owns every text inside it, nested text elements
    included; a heading inside one ends the text before it and starts a section. Asking each
    nested element for its own text instead repeated a piece once per level (2,048 levels of
    quotes: 2,048 copies) and walked the ancestors of every element."""
    from lxml import etree

    layout = _html_layout_tables(root) if root.find(".//table") is not None else set()
    headings: list[str] = []
    parts: list[str] = []
    owner: Any = None  # the element whose text is being gathered
    outer: Any = None  # the element a heading inside it interrupted, resumed after the heading
    pieces: list[str] = []
    walk = etree.iterwalk(root, events=("start", "end"))
    for event, element in walk:
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            table = ""
            if tag == "table" and element not in layout and (owner is None or owner.tag not in HTML_HEADING_TAGS):
                table = _html_table(element)
            if table:  # a markdown table, read whole: the text gathered before it ends there
                if owner is not None:
                    parts.extend(_html_text(owner, pieces))
                    pieces = []
                parts.append(table)
                walk.skip_subtree()
                continue
            if owner is None and tag in HTML_TEXT_TAGS:
                owner, pieces = element, []
            elif tag in HTML_HEADING_TAGS and owner is not None and owner.tag not in HTML_HEADING_TAGS:
                parts.extend(_html_text(owner, pieces))
                outer, owner, pieces = owner, element, []
            if owner is not None and element is not owner and tag in HTML_BREAK_TAGS:
                pieces.append(" ")
            if owner is not None and element.text:
                pieces.append(element.text)
            continue
        if element is owner:
            text = "".join(_html_text(owner, pieces))
            if tag in HTML_HEADING_TAGS and text:
                yield Section("\n".join(parts), {**metadata, "heading_path": list(headings)})
                parts = []
                headings = [*headings[: int(tag[1:]) - 1], text]
            elif text:
                parts.append(text)
            owner, outer, pieces = outer, None, []
        if owner is not None and element.tail:
            pieces.append(element.tail)  # the text after an element belongs to its parent
    yield Section("\n".join(parts), {**metadata, "heading_path": list(headings)})


def _html_layout_tables(root: Any) -> set[Any]:
    """Tables that lay a page out rather than hold data, read as text: those holding a table or
    a heading, and those marked role=presentation. One pass from the leaves up, so tables nested
    2,000 deep cost no more than their elements."""
    from lxml import etree

    holding: set[Any] = set()  # elements with a table or a heading somewhere inside
    layout: set[Any] = set()
    for _event, element in etree.iterwalk(root, events=("end",)):
        tag = element.tag if isinstance(element.tag, str) else ""
        inner = element in holding
        if tag == "table" and (inner or element.get("role") in ("presentation", "none")):
            layout.add(element)
        parent = element.getparent()
        if parent is not None and (inner or tag == "table" or tag in HTML_HEADING_TAGS):
            holding.add(parent)
    return layout


HTML_ROWSPAN_LIMIT = 65534  # HTML's own


def _html_table(table: Any) -> str:
    """A data table as a markdown table (its caption on a line before it), between blank lines;
    "" for one of a single row or column, which is layout or a box of text: read as text."""
    markdown = markdown_table(_html_table_rows(table))
    lines = markdown.split("\n")
    if len(lines) < 3 or lines[1].count("|") < 3:
        return ""
    caption = table.find("caption")
    title = table_cell(_html_cell_text(caption)).replace("<br>", " ") if caption is not None else ""
    return f"\n{title}\n\n{markdown}\n" if title else f"\n{markdown}\n"


def _html_table_rows(table: Any) -> list[list[str]]:
    """The cells' text row by row; a cell spanning rows or columns has its text in its first
    position, the positions it covers blank (spans clipped: kb.tables.MAX_SPAN)."""
    rows: list[list[str]] = []
    covered: list[int] = []  # per column, how many more rows a cell above still covers
    for tr in _html_table_trs(table):
        row: list[str] = []
        for cell in tr:
            if cell.tag not in ("td", "th"):
                continue
            while len(row) < len(covered) and covered[len(row)]:
                row.append("")
            start = len(row)
            colspan = span(cell.get("colspan"), max(MAX_SPAN - start, 1))
            row.extend([_html_cell_text(cell), *[""] * (colspan - 1)])
            rowspan = span(cell.get("rowspan"), HTML_ROWSPAN_LIMIT)
            if rowspan > 1:
                covered.extend([0] * (start + colspan - len(covered)))
                covered[start : start + colspan] = [rowspan] * colspan
        covered = [max(count - 1, 0) for count in covered]
        rows.append(row)
    return rows


def _html_table_trs(table: Any) -> Iterator[Any]:
    """The table's own rows (not those of a table inside it), in order."""
    for child in table:
        if child.tag == "tr":
            yield child
        elif child.tag in ("thead", "tbody", "tfoot"):
            yield from (row for row in child if row.tag == "tr")


HTML_BLANKS = re.compile(r"\s+")


def _html_cell_text(cell: Any) -> str:
    """A cell's text as a browser shows it: blanks collapsed, a line break at `<br>` and at each
    block inside it (paragraphs, list items), inline elements joined as written."""
    from lxml import etree

    pieces: list[str] = []
    for event, element in etree.iterwalk(cell, events=("start", "end")):
        if event == "start":
            if element is not cell and element.tag in HTML_BREAK_TAGS:
                pieces.append("\n")
            if element.text:
                pieces.append(HTML_BLANKS.sub(" ", element.text))
        elif element is not cell and element.tail:
            pieces.append(HTML_BLANKS.sub(" ", element.tail))
    return "".join(pieces)


def _html_text(owner: Any, pieces: list[str]) -> list[str]:
    """The gathered text as one block (none when blank): preformatted text as written, any other
    with its whitespace collapsed between pieces."""
    text = "".join(pieces) if owner.tag == "pre" else " ".join("".join(pieces).split())
    return [text] if text else []


def parse_markdown(path: Path, original_name: str) -> Iterator[Section]:
    headings: list[str] = []
    lines: list[str] = []
    in_code = False
    for line in decode_text(path.read_bytes(), original_name).splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        heading = None if in_code else _markdown_heading(line)
        if heading:
            yield Section("\n".join(lines), {"heading_path": list(headings)})
            lines = []
            level, title = heading
            headings = [*headings[: level - 1], title]
        else:
            lines.append(line)
    yield Section("\n".join(lines), {"heading_path": list(headings)})


MARKDOWN_HEADING_OPENER = re.compile(r"(#{1,6})\s")


def _markdown_heading(line: str) -> tuple[int, str] | None:
    """(level, title) of an ATX heading line, None for any other line.

    String methods strip the blanks and closing hashes around the title. The single pattern this
    replaces, `^(#{1,6})\\s+(.+?)\\s*#*\\s*$`, gave the same results but backtracked in cubic
    time over a run of blanks inside a title: a line "# a", 13,000 spaces, "b" held a worker for
    about an hour."""
    opener = MARKDOWN_HEADING_OPENER.match(line)
    if opener is None:
        return None
    rest = line[opener.end() :]
    stripped = rest.strip()
    # A title of closing hashes or blanks only kept its first character under the old pattern.
    title = stripped.rstrip("#").rstrip() or stripped[:1] or rest[-1:]
    return (len(opener.group(1)), title) if title else None


def parse_text(path: Path, original_name: str) -> Iterator[Section]:
    yield Section(decode_text(path.read_bytes(), original_name), {})


def parse_eml(path: Path, original_name: str) -> Iterator[Section]:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    metadata = {key: str(message[key]) for key in ("subject", "from", "to", "date") if message[key]}
    # The HTML part when there is one: its tables and headings are flattened in the plain part
    # (an Outlook .msg is read the same way, kb.legacy).
    body = message.get_body(preferencelist=("html", "plain")) if hasattr(message, "get_body") else None
    if body is None:
        raise ParseError(f"{original_name} is an e-mail without a text body")
    content = body.get_content()
    header = "\n".join(f"{key.title()}: {value}" for key, value in metadata.items())
    if body.get_content_type() == "text/html":
        yield Section(header, metadata)
        yield from html_sections(content, metadata, original_name)
    else:
        yield Section(f"{header}\n\n{content}", metadata)


def parse_epub(path: Path, original_name: str) -> Iterator[Section]:
    try:
        with zipfile.ZipFile(path) as archive:
            for number, chapter in enumerate(_epub_spine(archive), start=1):
                markup = archive.read(chapter).decode("utf-8", errors="replace")
                yield from html_sections(markup, {"chapter": number}, original_name)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ParseError(f"{original_name} is not a readable EPUB ({exc})") from exc


def _epub_spine(archive: zipfile.ZipFile) -> list[str]:
    from bs4 import BeautifulSoup

    container = BeautifulSoup(archive.read("META-INF/container.xml"), "xml")
    rootfile = container.find("rootfile")
    if rootfile is None:
        raise KeyError("META-INF/container.xml names no package")
    opf_path = str(rootfile["full-path"])
    opf = BeautifulSoup(archive.read(opf_path), "xml")
    base = posixpath.dirname(opf_path)
    manifest = {item["id"]: item["href"] for item in opf.find_all("item")}
    return [
        posixpath.join(base, str(manifest[ref["idref"]])) for ref in opf.find_all("itemref") if ref["idref"] in manifest
    ]


def _legacy_parser(kind: str) -> Callable[[Path, str], Iterator[Section]]:
    """A reader of the long tail (kb.legacy: LibreOffice or unstructured in a child process)."""

    def parser(path: Path, original_name: str) -> Iterator[Section]:
        from kb import legacy

        yield from legacy.sections(path, kind, original_name)

    return parser


LEGACY_KINDS = ("doc", "ppt", "xls", "msg", "encrypted-office", "odt", "odp", "ods", "rtf", "rst", "org")
PARSERS: dict[str, Callable[[Path, str], Iterator[Section]]] = {
    **{kind: _legacy_parser(kind) for kind in LEGACY_KINDS},
    "pdf": parse_pdf,
    "docx": parse_docx,
    "pptx": parse_pptx,
    "xlsx": parse_xlsx,
    "csv": parse_csv,
    "json": parse_json,
    "jsonl": parse_jsonl,
    "html": parse_html,
    "markdown": parse_markdown,
    "text": parse_text,
    "eml": parse_eml,
    "epub": parse_epub,
    "image": parse_image,
}
# Parsers that report progress through slow pages and what they left out (OCR).
REPORTING_PARSERS: dict[str, Callable[[Path, str, ParseReport], Iterator[Section]]] = {
    "pdf": parse_pdf,
    "image": parse_image,
}
