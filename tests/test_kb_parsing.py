"""Type detection from content and parsing of every supported format, with structure kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb import fulltext
from kb.embedding_batches import REQUEST_COST_TOKENS, embedding_batches, embedding_lengths
from kb.models import Splitter
from kb.parsing import ParseError, UnsupportedFile, detect_type, parse
from kb.splitting import split_sections, token_counter, tokenizer_path_for
from kb.uploads import sanitize_name
from models_registry import embedded_xinference
from tests.documents import FACT_EN, FACT_ZH, pdf_bytes, samples, write

EXPECTED_KINDS = {
    "notes.txt": "text",
    "guide.md": "markdown",
    "page.html": "html",
    "report.pdf": "pdf",
    "notes.docx": "docx",
    "slides.pptx": "pptx",
    "census.xlsx": "xlsx",
    "census.csv": "csv",
    "record.json": "json",
    "records.jsonl": "jsonl",
    "mail.eml": "eml",
    "book.epub": "epub",
    "中文.txt": "text",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_every_format_is_detected_and_parsed(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, samples()[name])
    kind = detect_type(path, name)
    assert kind == EXPECTED_KINDS[name]
    text = "\n".join(section.text for section in parse(path, kind, name))
    if name == "中文.txt":
        assert FACT_ZH in text
    elif name == "census.xlsx":  # a markdown table (tests/test_kb_tables.py)
        assert "| town | cats | note |\n|---|---|---|\n| Vardø | 17 | fed at dawn by the lighthouse keeper |" in text
    elif name == "census.csv":
        assert "town: Vardø; cats: 17; note: fed at dawn by the lighthouse keeper" in text
    else:
        assert " ".join(FACT_EN.split()) in " ".join(text.split())


def test_structure_is_kept(tmp_path: Path) -> None:
    data = samples()
    pdf = parse(write(tmp_path, "r.pdf", data["report.pdf"]), "pdf", "r.pdf")
    assert [section.metadata["page"] for section in pdf] == [1, 2]
    markdown = parse(write(tmp_path, "g.md", data["guide.md"]), "markdown", "g.md")
    assert markdown[-1].metadata["heading_path"] == ["Guide", "Cats"]
    docx = parse(write(tmp_path, "n.docx", data["notes.docx"]), "docx", "n.docx")
    assert any(section.metadata.get("heading_path") == ["Field notes", "Animals"] for section in docx)
    slides = parse(write(tmp_path, "s.pptx", data["slides.pptx"]), "pptx", "s.pptx")
    assert [section.metadata["slide"] for section in slides] == [1, 2]
    html = parse(write(tmp_path, "p.html", data["page.html"]), "html", "p.html")
    assert "alert" not in " ".join(section.text for section in html)
    assert html[-1].metadata["heading_path"] == ["Guide", "Cats"]


def test_xhtml_with_an_encoding_declaration_keeps_its_headings_and_chinese_text(tmp_path: Path) -> None:
    markup = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><body>'
        f"<h1>参考</h1><p>{FACT_ZH}</p><ul><li>列表 <p>内文</p></li></ul><!-- 注释 --></body></html>"
    )
    sections = parse(write(tmp_path, "ref.zh-cn.html", markup.encode()), "html", "ref.zh-cn.html")
    assert [(section.text, section.metadata["heading_path"]) for section in sections] == [
        (f"{FACT_ZH}\n列表 内文", ["参考"])
    ]


def test_html_furniture_is_dropped_and_inline_code_keeps_its_shape(tmp_path: Path) -> None:
    """Sphinx and DocBook pages: the sidebar, the related-pages bar, the table of contents and the
    heading anchors are not content; a signature made of inline elements reads as written."""
    page = tmp_path / "shutil.html"
    page.write_text(
        "<html><body><div class='related' role='navigation'>previous | next | modules</div>"
        "<div class='toc'><ul><li>1. Copying</li></ul></div>"
        "<h1>shutil<a class='headerlink' href='#x'>¶</a></h1>"
        "<dl><dt><code>shutil.</code><code>copytree</code>(<em>src</em>, <em>dst</em>)</dt>"
        "<dd><p>Copy a tree.</p><p>Symlinks are followed.</p></dd></dl>"
        "<div class='sphinxsidebar' role='navigation'><h3>Table of Contents</h3><p>shutil, os, glob</p></div>"
        "<div class='footer'>© Copyright</div></body></html>"
    )
    sections = parse(page, "html", "shutil.html")
    text = "\n".join(section.text for section in sections)
    assert "shutil.copytree(src, dst)" in text
    assert "Copy a tree. Symlinks are followed." in text
    for furniture in ("previous | next", "1. Copying", "¶", "Table of Contents", "shutil, os, glob", "Copyright"):
        assert furniture not in text
    assert sections[-1].metadata["heading_path"] == ["shutil"]
    # A page that is nothing but a table of contents keeps it: it is that page's content.
    contents = tmp_path / "index.html"
    contents.write_text("<html><body><div class='toc'><ul><li>1. Copying files</li></ul></div></body></html>")
    assert "1. Copying files" in parse(contents, "html", "index.html")[0].text


def test_deeply_nested_html_is_read_whole_or_refused_with_a_reason(tmp_path: Path) -> None:
    def nested(depth: int) -> bytes:
        return ("<p>before</p>" + "<div>" * depth + "<p>deep</p>" + "</div>" * depth + "<p>after</p>").encode()

    sections = parse(write(tmp_path, "deep.html", nested(500)), "html", "deep.html")
    assert sections[0].text == "before\ndeep\nafter"
    # Past the parser's limit the rest of the document would be dropped without a word.
    with pytest.raises(ParseError, match="too deeply"):
        parse(write(tmp_path, "abyss.html", nested(5000)), "html", "abyss.html")


def test_type_comes_from_content_not_the_name(tmp_path: Path) -> None:
    assert detect_type(write(tmp_path, "report.txt", pdf_bytes(["hello"])), "report.txt") == "pdf"
    assert detect_type(write(tmp_path, "data.pdf", b"just words, no pdf at all\n"), "data.pdf") == "text"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.txt", b"", "is empty"),
        ("binary.txt", bytes(range(256)) * 4, "binary data"),
        ("picture.txt", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "PNG image"),
        ("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "legacy Office"),
        ("latin1.txt", "caf\xe9 cr\xe8me ".encode("latin-1") * 3 + b"\xff\xfe\xfd", "not text"),
    ],
)
def test_unsupported_content_is_refused_with_a_reason(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    with pytest.raises(UnsupportedFile, match=message):
        detect_type(write(tmp_path, name, data), name)


def test_corrupt_and_encrypted_pdfs_fail_with_a_reason(tmp_path: Path) -> None:
    corrupt = write(tmp_path, "corrupt.pdf", b"%PDF-1.7\n" + b"garbage " * 200)
    with pytest.raises(ParseError, match="not a readable PDF"):
        parse(corrupt, detect_type(corrupt, "corrupt.pdf"), "corrupt.pdf")
    locked = write(tmp_path, "locked.pdf", pdf_bytes([FACT_EN], password="s3cret"))
    with pytest.raises(ParseError, match="encrypted"):
        parse(locked, "pdf", "locked.pdf")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd.txt", "passwd.txt"),
        ("..\\..\\boot.ini", "boot.ini"),
        (".hidden.md", "hidden.md"),
        ("a\x00b<c>.txt", "a_b_c_.txt"),
        ("", "unnamed"),
        ("报告 2026.pdf", "报告 2026.pdf"),
    ],
)
def test_names_are_sanitised(raw: str, clean: str) -> None:
    assert sanitize_name(raw) == clean


def test_splitters_respect_size_chinese_punctuation_and_headings(tmp_path: Path, xinference_venv: Path) -> None:
    text = "。".join(["青岛是一座美丽的海滨城市"] * 40) + "。"
    sections = parse(write(tmp_path, "zh.txt", text.encode()), "text", "zh.txt")
    chunks = split_sections(sections, splitter=Splitter.RECURSIVE, chunk_size=100, chunk_overlap=10)
    assert len(chunks) > 3
    assert all(len(chunk.text) <= 100 for chunk in chunks)
    assert all(chunk.text.endswith("。") for chunk in chunks[:-1])  # cut at sentence ends

    headed = parse(write(tmp_path, "g.md", samples()["guide.md"]), "markdown", "g.md")
    chunks = split_sections(headed, splitter=Splitter.HEADINGS, chunk_size=500, chunk_overlap=0)
    assert chunks[-1].text.startswith("Guide > Cats\n\n")
    assert chunks[-1].metadata["heading_path"] == ["Guide", "Cats"]
    # Chunk headers: the recursive splitter starts each chunk with its heading path when asked.
    plain = split_sections(headed, splitter=Splitter.RECURSIVE, chunk_size=500, chunk_overlap=0)
    assert not any(chunk.text.startswith("Guide > ") for chunk in plain)
    headed_chunks = split_sections(headed, splitter=Splitter.RECURSIVE, chunk_size=500, chunk_overlap=0, headers=True)
    assert [chunk.text.split("\n\n", 1)[0] for chunk in headed_chunks] == [
        " > ".join(chunk.metadata["heading_path"]) for chunk in headed_chunks
    ]

    tokenizer = tokenizer_path_for(embedded_xinference.embedding_spec(xinference_venv))
    assert tokenizer is not None
    chunks = split_sections(
        sections, splitter=Splitter.TOKENS, chunk_size=50, chunk_overlap=5, tokenizer_path=tokenizer
    )
    count = token_counter(tokenizer)
    assert all(count(chunk.text) <= 50 for chunk in chunks)
    assert max(count(chunk.text) for chunk in chunks) > 30


def test_fulltext_terms_segment_chinese_and_drop_stop_words() -> None:
    assert "啤酒节" in fulltext.terms(FACT_ZH) or "啤酒" in fulltext.terms(FACT_ZH)
    assert "the" not in fulltext.terms("The cats of the keeper")
    assert fulltext.query_terms("What do the cats eat? Cats!") == ["cats", "eat"]


def test_embedding_requests_take_chunks_longest_first_and_split_only_where_padding_costs_more() -> None:
    lengths = [12, 256, 250, 30, 256, 200, 31, 240, 5, 256] * 7
    batches = embedding_batches(lengths, max_batch=16)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    assert all(len(batch) <= 16 for batch in batches)
    flat = [lengths[index] for batch in batches for index in batch]
    assert flat == sorted(lengths, reverse=True)
    # 32 long and 32 short chunks: padding the short ones to 256 costs more than a second request.
    long_and_short = [256] * 32 + [10] * 32
    assert [[long_and_short[i] for i in batch] for batch in embedding_batches(long_and_short, 64)] == [
        [256] * 32,
        [10] * 32,
    ]
    # Four short ones: padding them costs less than another request would.
    few = [256] * 4 + [10] * 4
    assert len(embedding_batches(few, 64)) == 1
    assert REQUEST_COST_TOKENS > (256 - 10) * 4
    # Equal lengths: as few requests as the cap allows.
    equal = embedding_batches([100] * 70, 32)
    assert len(equal) == 3
    assert all(len(batch) <= 32 for batch in equal)


def test_embedding_lengths_count_the_models_tokens_up_to_its_window(xinference_venv: Path) -> None:
    spec = embedded_xinference.embedding_spec(xinference_venv)
    english, chinese = FACT_EN, FACT_ZH * 20
    lengths = embedding_lengths([english, chinese], spec)
    assert lengths[0] == token_counter(tokenizer_path_for(spec))(english) + 2
    assert lengths[1] == spec["max_tokens"] == 256  # MiniLM reads 256 tokens and cuts the rest
    assert embedding_lengths([english, chinese], None) == [len(english) // 4, len(chinese) // 4]
