"""Ruled tables in a PDF's text layer as markdown tables where they stand, and a table that a page
break cuts as one table.

pypdfium2 reads the text (about 3 ms a page); pdfplumber's table finder, which builds tables from
the lines a page draws, costs about 0.3 s a page (50 pages of text: 0.17 s against 15 s), so only
a page that draws at least TABULAR_MIN_PATHS paths is given to it. On such a page the text
outside the tables is read by pypdfium2 band by band (above, beside and below each table), so
the table stands between the text around it instead of being read row by row as lines.

A table that ends its page (at most a short line, a page number, after it) and one that starts
the next page (at most a short line, a running header, before it) with as many columns at the
same left and right edges are one table: the second's rows join the first's on the first's page,
without the header row the second repeats, if it does. The splitter then keeps it whole or cuts
it between rows, each piece under the header (kb.splitting)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb.tables import markdown_table

if TYPE_CHECKING:
    from pypdfium2 import PdfPage, PdfTextPage

logger = logging.getLogger(__name__)

# A ruled table draws a few lines or rectangles at least; a page of text draws none.
TABULAR_MIN_PATHS = 4
# A page drawing more than this is a drawing or a map; the table finder would take seconds on it.
TABULAR_MAX_PATHS = 5000
# Text this short between a table and its page's edge is a page number or a running header.
SHORT_TEXT_CHARS = 80
EDGE_TOLERANCE = 3.0  # points: how far a continued table's edges may be from the first part's
BAND_MARGIN = 0.5  # points added around a table's box, so text touching its rules stays out


@dataclass
class PdfTable:
    rows: list[list[str]]
    x0: float
    x1: float

    @property
    def columns(self) -> int:
        return max((len(row) for row in self.rows), default=0)

    @property
    def markdown(self) -> str:
        return markdown_table(self.rows)


Block = str | PdfTable


def looks_tabular(page: PdfPage) -> bool:
    import pypdfium2.raw as pdfium_c

    count = 0
    for _ in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_PATH,), max_depth=4):
        count += 1
        if count > TABULAR_MAX_PATHS:
            return False
    return count >= TABULAR_MIN_PATHS


class TableFinder:
    """pdfplumber on one document, opened when a page first needs it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pdf: Any = None

    def tables(self, index: int, width: float, height: float) -> list[tuple[PdfTable, float, float]]:
        """The page's tables with their top and bottom (from the page's top, in points), top
        first; none when pdfplumber cannot read the page or measures it differently."""
        try:
            if self._pdf is None:
                import pdfplumber

                self._pdf = pdfplumber.open(self.path)
            page = self._pdf.pages[index]
            if abs(page.width - width) > 1 or abs(page.height - height) > 1 or tuple(page.bbox[:2]) != (0, 0):
                return []  # a page box pdfplumber places elsewhere: the bands would miss
            found = page.find_tables()
        except Exception:  # a page pdfplumber cannot read keeps its text as it was
            logger.info("pdfplumber could not look for tables on page %s of %s", index + 1, self.path, exc_info=True)
            return []
        tables = []
        for table in found:
            rows = [[" ".join((cell or "").split()) for cell in row] for row in table.extract()]
            if len(rows) >= 2 and max(len(row) for row in rows) >= 2:
                x0, top, x1, bottom = table.bbox
                tables.append((PdfTable(rows, x0, x1), top, bottom))
        return sorted(tables, key=lambda item: item[1])

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()


def page_blocks(page: PdfPage, textpage: PdfTextPage, index: int, finder: TableFinder) -> list[Block] | None:
    """The page as text and tables in reading order, None when it has no table (its text as read
    whole stands)."""
    if page.get_rotation() != 0 or not looks_tabular(page):
        return None
    width, height = page.get_size()
    tables = finder.tables(index, width, height)
    if not tables:
        return None

    def text(left: float, top: float, right: float, bottom: float) -> str:
        """The text inside a box given from the page's top; pypdfium2 measures from its bottom."""
        if right <= left or bottom <= top:
            return ""
        return str(textpage.get_text_bounded(left, height - bottom, right, height - top)).replace("\r\n", "\n").strip()

    blocks: list[Block] = []
    above = 0.0
    for table, top, bottom in tables:
        top, bottom = max(top - BAND_MARGIN, above), bottom + BAND_MARGIN
        blocks.append(text(0, above, width, top))
        blocks.append(table)
        # Text beside the table (a note in the margin) follows it.
        blocks.append(text(0, top, table.x0 - BAND_MARGIN, bottom))
        blocks.append(text(table.x1 + BAND_MARGIN, top, width, bottom))
        above = bottom
    blocks.append(text(0, above, width, height))
    return [block for block in blocks if not isinstance(block, str) or block]


def page_texts(pages: list[list[Block]]) -> list[str]:
    """Each page's text with its tables as markdown, after joining the tables a page break cut."""
    _join_continued(pages)
    return [
        "\n".join(f"\n{block.markdown}\n" if isinstance(block, PdfTable) else block for block in page) for page in pages
    ]


def _join_continued(pages: list[list[Block]]) -> None:
    open_table: PdfTable | None = None  # the table that ended the previous page
    for blocks in pages:
        first = _first_table(blocks)
        if open_table is None or first is None or not _continues(open_table, blocks[first]):
            open_table = _last_table(blocks)
            continue
        continued = blocks.pop(first)
        assert isinstance(continued, PdfTable)
        rows = continued.rows
        open_table.rows.extend(rows[1:] if rows[0] == open_table.rows[0] else rows)
        if _substantial(blocks[first:]):  # the page goes on after the table
            open_table = _last_table(blocks)
        # else the table filled the page, and the next one may go on with it


def _first_table(blocks: list[Block]) -> int | None:
    for index, block in enumerate(blocks):
        if isinstance(block, PdfTable):
            return index if not _substantial(blocks[:index]) else None
    return None


def _last_table(blocks: list[Block]) -> PdfTable | None:
    for index in range(len(blocks) - 1, -1, -1):
        block = blocks[index]
        if isinstance(block, PdfTable):
            return block if not _substantial(blocks[index + 1 :]) else None
    return None


def _substantial(blocks: list[Block]) -> bool:
    """More than a page number or a running header: a table, or longer text."""
    if any(isinstance(block, PdfTable) for block in blocks):
        return True
    return sum(len(block) for block in blocks if isinstance(block, str)) > SHORT_TEXT_CHARS


def _continues(first: PdfTable, second: Block) -> bool:
    return (
        isinstance(second, PdfTable)
        and second.columns == first.columns
        and abs(second.x0 - first.x0) <= EDGE_TOLERANCE
        and abs(second.x1 - first.x1) <= EDGE_TOLERANCE
    )
