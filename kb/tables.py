"""Markdown tables: written from the rows the readers find (DOCX, PPTX, XLSX, HTML) and found
again in a section's text by the splitter, which keeps a table whole or cuts it between rows.

One shape everywhere: GitHub-flavoured markdown, the first row as the header, the `|---|`
delimiter row, one line per row. A cell's `|` is escaped as `\\|` and its line breaks written as
`<br>` (so a row stays one line); blank rows and trailing blank columns are dropped. A merged
cell's text stands once, in its first (top-left) position, and the positions it covers are blank,
whatever the format: repeating it would let a small file expand without bound (one long cell
spanning thousands of rows), and that is how Excel stores a merge anyway."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# A span larger than this is clipped: HTML's own limit for colspan, far more than a real table
# spans, and it bounds the blank cells a small file can ask for.
MAX_SPAN = 1000

_PIPE = re.compile(r"(\\*)\|")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_DELIMITER_CELL = re.compile(r":?-+:?")


def span(value: object, limit: int = MAX_SPAN) -> int:
    """A colspan, rowspan or grid span as a count from 1 to `limit` (1 when it is not a number)."""
    try:
        count = int(str(value).strip()) if value is not None else 1
    except ValueError:
        return 1
    return min(max(count, 1), limit)


def table_cell(text: str) -> str:
    """A cell's text on one line: blanks collapsed, blank lines dropped, line breaks as `<br>`,
    `|` escaped (with the backslashes before it, so `\\|` in the text stays text)."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    joined = "<br>".join(line for line in lines if line)
    return _PIPE.sub(lambda match: match.group(1) * 2 + "\\|", joined)


def markdown_table(rows: Iterable[Sequence[str]]) -> str:
    """The rows as one markdown table, the first row with text as its header; "" when no cell
    has text. Every line has the table's width: its last column with text in any row."""
    cleaned = [[table_cell(cell) for cell in row] for row in rows]
    cleaned = [row for row in cleaned if any(row)]
    if not cleaned:
        return ""
    width = max(max(index for index, cell in enumerate(row) if cell) + 1 for row in cleaned)
    lines = [_table_line([*row[:width], *[""] * (width - len(row))]) for row in cleaned]
    lines.insert(1, "|" + "---|" * width)
    return "\n".join(lines)


def _table_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# --- finding tables in text -------------------------------------------------------------------


@dataclass(frozen=True)
class MarkdownTable:
    header: str
    delimiter: str
    rows: list[str]

    @property
    def head(self) -> str:
        """The header and delimiter rows: what every piece of a cut table starts with."""
        return f"{self.header}\n{self.delimiter}"

    @property
    def text(self) -> str:
        return "\n".join([self.head, *self.rows])


def text_and_tables(text: str) -> list[str | MarkdownTable]:
    """`text` as runs of plain text and the markdown tables between them, in order. A table is a
    header line, a delimiter row with as many cells (`| --- | :-: |`, at least one `|`) and the
    lines after it up to a blank line or a line without `|`, as GitHub reads them. Plain runs are
    stripped; blank ones are left out. Read line by line, without patterns that backtrack."""
    lines = text.split("\n")
    segments: list[str | MarkdownTable] = []
    plain_from = 0
    index = 1
    while index < len(lines):
        header = lines[index - 1]
        if not _is_delimiter_row(lines[index]) or "|" not in header:
            index += 1
            continue
        if len(_row_cells(header)) != len(_row_cells(lines[index])):
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() and "|" in lines[end]:
            end += 1
        plain = "\n".join(lines[plain_from : index - 1]).strip()
        if plain:
            segments.append(plain)
        segments.append(
            MarkdownTable(header.strip(), lines[index].strip(), [line.strip() for line in lines[index + 1 : end]])
        )
        plain_from = end
        index = end + 1
    plain = "\n".join(lines[plain_from:]).strip()
    if plain:
        segments.append(plain)
    return segments


def _is_delimiter_row(line: str) -> bool:
    if "|" not in line or "-" not in line:
        return False
    return all(_DELIMITER_CELL.fullmatch(cell.strip()) for cell in _row_cells(line))


def _row_cells(line: str) -> list[str]:
    inner = line.strip()
    if inner.startswith("|"):
        inner = inner[1:]
    if inner.endswith("|") and not inner.endswith("\\|"):
        inner = inner[:-1]
    return _UNESCAPED_PIPE.split(inner)
