"""Ruled tables in PDF text layers (kb.pdf_tables), in PDFs that fpdf2 writes here: a table stands
as a markdown table between the text around it; one that a page break cuts is one table, whether
the next page repeats its header or not, and the splitter never parts a row from that header;
tables of another shape on the next page stay apart; pages that draw no lines never reach the
table finder."""

from __future__ import annotations

from pathlib import Path

import pypdfium2
import pytest

from kb import pdf_tables
from kb.parsing import Section, parse
from kb.splitting import split_sections
from kb.tables import text_and_tables
from tests.documents import write

HEADER = "| City | Cats | Keeper |\n|---|---|---|"
FILLER = "Filler line of the report that pushes the table down the page."


def pdf_with_table(*, rows: int, filler_lines: int, repeat_header: bool, second_table: bool = False) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 6, "Introduction before the census table.", new_x="LMARGIN", new_y="NEXT")
    for _ in range(filler_lines):
        pdf.multi_cell(0, 6, FILLER, new_x="LMARGIN", new_y="NEXT")
    with pdf.table(repeat_headings=1 if repeat_header else 0) as table:
        for number in range(rows + 1):
            row = table.row()
            cells = ("City", "Cats", "Keeper") if number == 0 else (f"Town {number}", str(3 * number), f"K{number}")
            for text in cells:
                row.cell(text)
    if not second_table:
        pdf.multi_cell(0, 6, "Closing words after the census table.", new_x="LMARGIN", new_y="NEXT")
    else:  # the census table ends its page; another table starts the next one
        pdf.add_page()
        with pdf.table(col_widths=(40, 40)) as table:
            for number in range(4):
                row = table.row()
                for text in ("Year", "Visitors") if number == 0 else (str(2020 + number), str(100 * number)):
                    row.cell(text)
    return bytes(pdf.output())


def census(rows: range) -> str:
    return "\n".join([HEADER, *(f"| Town {number} | {3 * number} | K{number} |" for number in rows)])


def pages(path: Path) -> list[Section]:
    return list(parse(path, "pdf", path.name))


def test_a_table_on_one_page_stands_between_its_text(tmp_path: Path) -> None:
    path = write(tmp_path, "short.pdf", pdf_with_table(rows=5, filler_lines=2, repeat_header=True))
    [page] = pages(path)
    assert page.metadata == {"page": 1}
    before, after = page.text.split(census(range(1, 6)))
    assert before.strip().startswith("Introduction before the census table.")
    assert after.strip() == "Closing words after the census table."


@pytest.mark.parametrize("repeat_header", [True, False])
def test_a_table_across_a_page_break_is_one_table(tmp_path: Path, repeat_header: bool) -> None:
    path = write(tmp_path, "long.pdf", pdf_with_table(rows=40, filler_lines=30, repeat_header=repeat_header))
    document = pypdfium2.PdfDocument(path)
    try:
        assert len(document) == 2
        # The second page really holds the rest of the rows (and the header, when repeated).
        second = document[1].get_textpage().get_text_range()
        assert "Town 40" in second
        assert ("City" in second) == repeat_header
    finally:
        document.close()
    first, last = pages(path)
    assert census(range(1, 41)) in first.text  # every row, in order, under the header once
    assert first.text.count("| City |") == 1
    assert "Town" not in last.text
    assert last.text.strip() == "Closing words after the census table."


def test_the_splitter_keeps_every_row_of_a_continued_table_under_its_header(tmp_path: Path) -> None:
    path = write(tmp_path, "long.pdf", pdf_with_table(rows=40, filler_lines=30, repeat_header=True))
    drafts = split_sections(pages(path), splitter="recursive", chunk_size=400, chunk_overlap=0)
    rows_seen = []
    for draft in drafts:
        for segment in text_and_tables(draft.text):
            if isinstance(segment, str):
                assert "| Town" not in segment, draft.text  # no row outside a table
                continue
            assert segment.head == HEADER
            rows_seen.extend(segment.rows)
    assert rows_seen == census(range(1, 41)).split("\n")[2:]


def test_tables_of_another_shape_on_the_next_page_stay_apart(tmp_path: Path) -> None:
    path = write(tmp_path, "two.pdf", pdf_with_table(rows=3, filler_lines=35, repeat_header=True, second_table=True))
    sections = pages(path)
    text = "\n".join(section.text for section in sections)
    assert census(range(1, 4)) in text
    assert "| Year | Visitors |\n|---|---|\n| 2021 | 100 |\n| 2022 | 200 |\n| 2023 | 300 |" in text
    assert [line for line in text.split("\n") if line.startswith("|---")] == ["|---|---|---|", "|---|---|"]


def test_only_pages_that_draw_lines_go_to_the_table_finder(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 6, FILLER)
    pdf.add_page()
    pdf.multi_cell(0, 6, FILLER, new_x="LMARGIN", new_y="NEXT")
    pdf.line(10, 40, 200, 40)  # a rule under a heading is no table
    path = write(tmp_path, "plain.pdf", bytes(pdf.output()))
    table_path = write(tmp_path, "table.pdf", pdf_with_table(rows=3, filler_lines=1, repeat_header=True))
    for name, expected in ((path, [False, False]), (table_path, [True])):
        document = pypdfium2.PdfDocument(name)
        try:
            assert [pdf_tables.looks_tabular(document[index]) for index in range(len(document))] == expected
        finally:
            document.close()
    finder = pdf_tables.TableFinder(path)
    document = pypdfium2.PdfDocument(path)
    try:
        page = document[1]
        assert pdf_tables.page_blocks(page, page.get_textpage(), 1, finder) is None
        assert finder._pdf is None  # pdfplumber never opened the file
    finally:
        document.close()
        finder.close()
