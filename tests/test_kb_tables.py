"""Tables stay tables: DOCX, PPTX, XLSX and HTML tables become markdown tables where they stand,
and every splitter keeps a table whole when it fits, else cuts it between rows under its header."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from kb.models import Splitter
from kb.parsing import ROWS_PER_SECTION, Section, parse
from kb.splitting import split_sections, token_counter, tokenizer_path_for
from kb.tables import markdown_table, table_cell, text_and_tables
from models_registry import embedded_xinference
from tests.documents import write

# Cells that need escaping, Chinese text and numbers.
HEADER = ["town", "cats", "note"]
ROWS = [["Vardø", "17", "fed at dawn | dusk"], ["青岛", "3.5", "啤酒节\n八月"]]
EXPECTED_TABLE = (
    "| town | cats | note |\n|---|---|---|\n| Vardø | 17 | fed at dawn \\| dusk |\n| 青岛 | 3.5 | 啤酒节<br>八月 |"
)


def docx_with_table(*, rows: list[list[str]], page_break_after_row: int | None = None) -> bytes:
    import docx
    from docx.enum.text import WD_BREAK

    document = docx.Document()
    document.add_heading("Census", level=1)
    document.add_paragraph("Before the table.")
    table = document.add_table(rows=len(rows), cols=len(rows[0]))
    for row_index, row in enumerate(rows):
        for column, text in enumerate(row):
            table.cell(row_index, column).text = text
    if page_break_after_row is not None:
        table.cell(page_break_after_row, 0).paragraphs[-1].add_run().add_break(WD_BREAK.PAGE)
    document.add_paragraph("After the table.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_a_docx_table_is_a_markdown_table_between_the_paragraphs_around_it(tmp_path: Path) -> None:
    data = docx_with_table(rows=[HEADER, *ROWS])
    sections = parse(write(tmp_path, "census.docx", data), "docx", "census.docx")
    assert [(section.text, section.metadata) for section in sections if section.text.strip()] == [
        (f"Before the table.\n\n{EXPECTED_TABLE}\n\nAfter the table.", {"heading_path": ["Census"]})
    ]


def test_a_docx_table_across_a_page_break_stays_one_table(tmp_path: Path) -> None:
    rows = [HEADER, *[[f"town {number}", str(number), f"note {number}"] for number in range(60)]]
    data = docx_with_table(rows=rows, page_break_after_row=30)
    (section,) = [s for s in parse(write(tmp_path, "long.docx", data), "docx", "long.docx") if s.text.strip()]
    (table,) = [segment for segment in text_and_tables(section.text) if not isinstance(segment, str)]
    assert table.header == "| town | cats | note |"
    assert table.rows == [f"| town {number} | {number} | note {number} |" for number in range(60)]
    assert section.text.startswith("Before the table.\n\n| town |")
    assert section.text.endswith("| note 59 |\n\nAfter the table.")


def test_merged_docx_cells_keep_their_text_once_in_their_first_position(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    table = document.add_table(rows=3, cols=3)
    for row_index, row in enumerate([["region", "town", "cats"], ["North", "Vardø", "17"], ["", "Tromsø", "3"]]):
        for column, text in enumerate(row):
            table.cell(row_index, column).text = text
    table.cell(1, 0).merge(table.cell(2, 0))  # North, down two rows
    table.cell(0, 1).merge(table.cell(0, 2)).text = "town and cats"  # across two columns
    buffer = io.BytesIO()
    document.save(buffer)
    (section,) = parse(write(tmp_path, "merged.docx", buffer.getvalue()), "docx", "merged.docx")
    assert section.text.strip() == (
        "| region | town and cats |  |\n|---|---|---|\n| North | Vardø | 17 |\n|  | Tromsø | 3 |"
    )


def test_a_pptx_table_is_a_markdown_table_on_its_slide(tmp_path: Path) -> None:
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    presentation.slides.add_slide(presentation.slide_layouts[5]).shapes.title.text = "Agenda"
    slide = presentation.slides.add_slide(presentation.slide_layouts[5])
    slide.shapes.title.text = "Census"
    shape = slide.shapes.add_table(4, 3, Inches(1), Inches(2), Inches(6), Inches(3))
    for row_index, row in enumerate([HEADER, *ROWS, ["", "", ""]]):  # a blank last row: dropped
        for column, text in enumerate(row):
            shape.table.cell(row_index, column).text = text
    footnote = slide.shapes.add_textbox(Inches(1), Inches(5.5), Inches(6), Inches(1))
    footnote.text_frame.text = "Counted in May."
    buffer = io.BytesIO()
    presentation.save(buffer)
    sections = parse(write(tmp_path, "census.pptx", buffer.getvalue()), "pptx", "census.pptx")
    assert [(section.text, section.metadata) for section in sections] == [
        ("Agenda", {"slide": 1}),
        (f"Census\n\n{EXPECTED_TABLE}\n\nCounted in May.", {"slide": 2}),
    ]


def test_merged_pptx_cells_keep_their_text_once(tmp_path: Path) -> None:
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[6])
    table = slide.shapes.add_table(3, 2, Inches(1), Inches(1), Inches(6), Inches(3)).table
    for row_index, row in enumerate([["region", "town"], ["North", "Vardø"], ["", "Tromsø"]]):
        for column, text in enumerate(row):
            table.cell(row_index, column).text = text
    table.cell(1, 0).merge(table.cell(2, 0))
    buffer = io.BytesIO()
    presentation.save(buffer)
    (section,) = parse(write(tmp_path, "merged.pptx", buffer.getvalue()), "pptx", "merged.pptx")
    assert section.text.strip() == "| region | town |\n|---|---|\n| North | Vardø |\n|  | Tromsø |"


def big_workbook(rows: int) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Census"
    sheet.append(["town", "cats", "note", None])  # a blank trailing column: dropped
    for number in range(1, rows + 1):
        sheet.append([f"town {number}", number, f"note {number} | {'青岛' if number % 2 else 'Vardø'}", None])
    sheet.append([None, None, None, None])  # a blank trailing row: dropped
    other = workbook.create_sheet("Notes")
    other.append(["item", "value"])
    other.append(["cats", 3.5])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


SHEET_HEAD = "| town | cats | note |\n|---|---|---|"


def test_a_sheet_of_thousands_of_rows_is_tables_that_each_repeat_the_header(tmp_path: Path) -> None:
    sections = parse(write(tmp_path, "census.xlsx", big_workbook(2500)), "xlsx", "census.xlsx")
    census = [section for section in sections if section.metadata["sheet"] == "Census"]
    assert len(census) == math.ceil(2500 / ROWS_PER_SECTION)
    assert all(section.text.startswith(SHEET_HEAD + "\n") for section in census)
    assert census[0].text.split("\n")[2:4] == ["| town 1 | 1 | note 1 \\| 青岛 |", "| town 2 | 2 | note 2 \\| Vardø |"]
    assert census[0].metadata["rows"] == [2, ROWS_PER_SECTION + 1]  # sheet rows; row 1 is the header
    assert census[-1].metadata["rows"][1] == 2501
    assert census[-1].text.endswith("| town 2500 | 2500 | note 2500 \\| Vardø |")
    assert sections[-1].text == "| item | value |\n|---|---|\n| cats | 3.5 |"
    assert sections[-1].metadata == {"sheet": "Notes", "rows": [2, 2]}

    # Chunked as ingestion chunks them: no chunk holds a row without the header above it.
    chunks = split_sections(sections, splitter=Splitter.RECURSIVE, chunk_size=1000, chunk_overlap=150)
    rows_seen = []
    for chunk in chunks:
        assert len(chunk.text) <= 1000
        for table in text_and_tables(chunk.text):
            assert not isinstance(table, str), chunk.text  # nothing but whole tables
            rows_seen.extend(table.rows)
            if chunk.metadata["sheet"] == "Census":
                assert table.head == SHEET_HEAD
    census_rows = [row for row in rows_seen if row.startswith("| town ")]
    assert census_rows == [f"| town {n} | {n} | note {n} \\| {'青岛' if n % 2 else 'Vardø'} |" for n in range(1, 2501)]


def test_html_data_tables_become_markdown_and_layout_tables_stay_text(tmp_path: Path) -> None:
    markup = (
        "<html><body><h1>Cats</h1><p>Counted in May.</p>"
        "<table><caption>Census</caption><thead><tr><th>town</th><th>cats</th><th>note</th></tr></thead>"
        "<tbody><tr><td rowspan='2'>Vardø</td><td>17</td><td>fed at dawn | dusk</td></tr>"
        "<tr><td>3.5</td><td><p>啤酒节</p><p>八月</p></td></tr>"
        "<tr><td colspan='2'>total</td><td>20.5</td></tr></tbody></table>"
        "<p>Next year again.</p>"
        "<table role='presentation'><tr><td>left column</td><td>right column</td></tr>"
        "<tr><td>more</td><td>words</td></tr></table>"
        "<table><tr><td>one box of text</td></tr></table></body></html>"
    )
    sections = parse(write(tmp_path, "cats.html", markup.encode()), "html", "cats.html")
    assert [(section.text, section.metadata) for section in sections if section.text.strip()] == [
        (
            "Counted in May.\n\nCensus\n\n"
            "| town | cats | note |\n|---|---|---|\n"
            "| Vardø | 17 | fed at dawn \\| dusk |\n|  | 3.5 | 啤酒节<br>八月 |\n| total |  | 20.5 |"
            "\n\nNext year again.\nleft column\nright column\nmore\nwords\none box of text",
            {"heading_path": ["Cats"]},
        )
    ]


def test_cells_are_escaped_and_trailing_blanks_dropped() -> None:
    assert table_cell(" a\\|b |\r\n\n c\vd ") == "a\\\\\\|b \\|<br>c<br>d"
    assert markdown_table([["", "", ""], ["a", "", ""], ["1", "2", ""], ["", "", ""]]) == (
        "| a |  |\n|---|---|\n| 1 | 2 |"
    )
    assert markdown_table([["", ""]]) == ""


# --- the splitters ----------------------------------------------------------------------------

INTRO = "The census of the northern coast counts the cats of every town. " * 3
OUTRO = "Counts were taken at dawn, when the cats come to be fed by the keepers. " * 3


def census_table(rows: int) -> str:
    lines = ["| town | cats | note |", "|---|---|---|"]
    lines += [f"| town {n} | {n} | fed by keeper {n} \\| 青岛 {n} |" for n in range(1, rows + 1)]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def splitter_lengths(xinference_venv: Path) -> dict[str, tuple[Callable[[str], int], Path | None, int]]:
    """Per splitter: how it counts, the tokenizer it needs, and a chunk size."""
    tokenizer = tokenizer_path_for(embedded_xinference.embedding_spec(xinference_venv))
    assert tokenizer is not None
    return {
        Splitter.RECURSIVE: (len, None, 600),
        Splitter.HEADINGS: (len, None, 600),
        Splitter.TOKENS: (token_counter(tokenizer), tokenizer, 220),
    }


@pytest.mark.parametrize("splitter", [Splitter.RECURSIVE, Splitter.TOKENS, Splitter.HEADINGS])
def test_every_splitter_keeps_a_fitting_table_whole(
    splitter: str, splitter_lengths: dict[str, tuple[Callable[[str], int], Path | None, int]]
) -> None:
    length, tokenizer, chunk_size = splitter_lengths[splitter]
    rows = 1
    while length(census_table(rows + 1)) <= chunk_size:
        rows += 1
    table = census_table(rows)  # as many rows as fit in one chunk
    # Lines, as a DOCX cell or a markdown file may hold them: no blank line around the table.
    text = f"{INTRO}\n{INTRO}\n{table}\n{OUTRO}\n{OUTRO}"
    assert length(text) > chunk_size
    section = Section(text, {"heading_path": ["Census"]})
    chunks = split_sections(
        [section], splitter=splitter, chunk_size=chunk_size, chunk_overlap=20, tokenizer_path=tokenizer
    )
    holding = [chunk.text for chunk in chunks if "| town |" in chunk.text]
    assert len(holding) == 1
    assert table in holding[0]
    # The text around it is split as before: every word of it is in some chunk.
    assert all(sentence.strip() in "\n".join(chunk.text for chunk in chunks) for sentence in (INTRO, OUTRO))


@pytest.mark.parametrize("splitter", [Splitter.RECURSIVE, Splitter.TOKENS, Splitter.HEADINGS])
def test_every_splitter_cuts_an_oversize_table_between_rows_under_its_header(
    splitter: str, splitter_lengths: dict[str, tuple[Callable[[str], int], Path | None, int]]
) -> None:
    length, tokenizer, chunk_size = splitter_lengths[splitter]
    table = census_table(120)
    text = f"{INTRO}\n\n{table}\n\n{OUTRO}"
    section = Section(text, {"heading_path": ["Census"]})
    chunks = split_sections(
        [section], splitter=splitter, chunk_size=chunk_size, chunk_overlap=20, tokenizer_path=tokenizer
    )
    prefix = "Census\n\n" if splitter == Splitter.HEADINGS else ""
    rows_seen: list[str] = []
    for chunk in chunks:
        assert chunk.text.startswith(prefix)
        body = chunk.text.removeprefix(prefix)
        assert length(body) <= chunk_size
        tables = [segment for segment in text_and_tables(body) if not isinstance(segment, str)]
        for piece in tables:
            assert piece.head == "| town | cats | note |\n|---|---|---|"
            rows_seen.extend(piece.rows)
        if "| town " in body:
            assert tables, body  # no row without its header
    assert rows_seen == table.split("\n")[2:]  # every row once, whole, in order
    assert len([chunk for chunk in chunks if "|---|" in chunk.text]) > 2
    text_chunks = "\n".join(chunk.text for chunk in chunks)
    assert INTRO.strip() in text_chunks
    assert OUTRO.strip() in text_chunks


def test_a_row_longer_than_a_chunk_is_never_cut() -> None:
    long_row = "| " + "word " * 300 + "| 1 |"
    table = f"| text | n |\n|---|---|\n| short | 2 |\n{long_row}\n| short | 3 |"
    chunks = split_sections([Section(table, {})], splitter=Splitter.RECURSIVE, chunk_size=200, chunk_overlap=0)
    assert [chunk.text for chunk in chunks] == [
        "| text | n |\n|---|---|\n| short | 2 |",
        f"| text | n |\n|---|---|\n{long_row.strip()}",
        "| text | n |\n|---|---|\n| short | 3 |",
    ]


def test_text_without_tables_is_split_as_before() -> None:
    text = "\n\n".join(f"Paragraph {n}: " + "cats and keepers " * 20 for n in range(10))
    text += "\n\na | b is not a table without its delimiter row\n---\nnor is a heading"
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from kb.splitting import SEPARATORS

    before = RecursiveCharacterTextSplitter(
        separators=SEPARATORS, keep_separator="end", chunk_size=300, chunk_overlap=50, strip_whitespace=True
    ).split_text(text)
    chunks = split_sections([Section(text, {})], splitter=Splitter.RECURSIVE, chunk_size=300, chunk_overlap=50)
    assert [chunk.text for chunk in chunks] == before
