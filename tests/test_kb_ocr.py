"""OCR (kb.ocr): text rendered into PNG, JPEG, WebP, multi-page TIFF and image-only PDF pages, in
English and Chinese, read back; a mixed PDF OCRs only its scanned page; oversized, fake, truncated
and slow images end with a reason while the OCR process is replaced; one scanned PDF through the
real worker to a search hit. Recognised text is compared with a tolerance (character accuracy),
never exactly, and nothing here asserts a duration."""

from __future__ import annotations

import io
import os
import re
import signal
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from accounts.models import Role
from kb import ocr
from kb.ingestion import document_mark_ready
from kb.models import Chunk, Document, DocumentStatus, KnowledgeBase
from kb.parsing import ParseError, ParseReport, Section, UnsupportedFile, detect_type, parse
from kb.services import kb_create
from models_registry.services import provider_create, registration_create
from realservices.workers import WorkerProcess
from realservices.xinference import XinferenceServer
from tests.conftest import bearer_client, member_of
from tests.documents import FACT_EN, write
from tests.test_kb import all_settled, embedding_model, search, upload, wait_until

# Debian's fonts-wqy-microhei: `make test` installs it (a font with Chinese glyphs).
FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
EN = ["The harbour master counts", "seventeen cats at dawn"]
ZH = ["青岛啤酒节每年八月举行", "游客品尝世界各地的啤酒"]


def rendered(lines: list[str], size: int = 40) -> Image.Image:
    """Black text on white, a line per entry."""
    assert FONT.exists(), f"{FONT} is missing: `make test` installs it (apt-get install fonts-wqy-microhei)"
    font = ImageFont.truetype(str(FONT), size)
    width = int(max(font.getlength(line) for line in lines)) + 2 * size
    image = Image.new("L", (width, int(len(lines) * size * 1.6) + 2 * size), 255)
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(lines):
        draw.text((size, size + int(number * size * 1.6)), line, font=font, fill=0)
    return image


def image_bytes(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def accuracy(recognised: str, expected: list[str]) -> float:
    """1 - edit distance / length, blanks aside (OCR may join or split lines and words)."""
    got, want = "".join(recognised.split()), "".join("".join(expected).split())
    previous = list(range(len(want) + 1))
    for row, char in enumerate(got, start=1):
        current = [row]
        for column, wanted in enumerate(want, start=1):
            current.append(min(previous[column] + 1, current[-1] + 1, previous[column - 1] + (char != wanted)))
        previous = current
    return 1 - previous[-1] / len(want)


def read(path: Path, name: str, report: ParseReport | None = None) -> list[Section]:
    return parse(path, detect_type(path, name), name, report)


@pytest.mark.parametrize(("name", "format"), [("scan.png", "PNG"), ("photo.jpg", "JPEG"), ("shot.webp", "WEBP")])
def test_images_are_detected_by_content_and_read_in_english_and_chinese(tmp_path: Path, name: str, format: str) -> None:
    # Named .txt: the content says what it is.
    path = write(tmp_path, f"{name}.txt", image_bytes(rendered(EN + ZH), format, quality=90))
    assert detect_type(path, name) == "image"
    [section] = read(path, name)
    assert section.metadata["page"] == 1
    assert section.metadata["ocr"] is True
    lines = section.text.splitlines()
    assert accuracy("".join(lines[:2]), EN) >= 0.9, section.text
    assert accuracy("".join(lines[2:]), ZH) >= 0.9, section.text


def test_a_multi_page_tiff_is_read_page_by_page_with_progress(tmp_path: Path) -> None:
    english, chinese = rendered(EN), rendered(ZH)
    path = write(tmp_path, "fax.tiff", image_bytes(english, "TIFF", save_all=True, append_images=[chinese]))
    progress: list[tuple[int, int]] = []
    sections = read(path, "fax.tiff", ParseReport(progress=lambda done, total: progress.append((done, total))))
    assert [section.metadata["page"] for section in sections] == [1, 2]
    assert accuracy(sections[0].text, EN) >= 0.9, sections[0].text
    assert accuracy(sections[1].text, ZH) >= 0.9, sections[1].text
    assert progress == [(1, 2), (2, 2)]


def test_an_image_only_pdf_is_read_by_ocr_page_by_page(tmp_path: Path) -> None:
    english, chinese = rendered(EN).convert("RGB"), rendered(ZH).convert("RGB")
    path = write(tmp_path, "scan.pdf", image_bytes(english, "PDF", save_all=True, append_images=[chinese]))
    sections = read(path, "scan.pdf")
    assert [(section.metadata["page"], section.metadata["ocr"]) for section in sections] == [(1, True), (2, True)]
    assert accuracy(sections[0].text, EN) >= 0.9, sections[0].text
    assert accuracy(sections[1].text, ZH) >= 0.9, sections[1].text


def mixed_pdf(tmp_path: Path, scanned: Image.Image) -> bytes:
    """Page 1 with a text layer, page 2 a picture of text (a scanned page)."""
    from fpdf import FPDF

    picture = tmp_path / "page.png"
    scanned.save(picture)
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, FACT_EN.replace("ø", "o"))
    pdf.image(str(picture), x=10, y=10, w=150)  # a logo beside real text changes nothing
    pdf.add_page()
    pdf.image(str(picture), x=10, y=10, w=190)
    return bytes(pdf.output())


def test_a_mixed_pdf_ocrs_only_the_page_without_a_text_layer(tmp_path: Path) -> None:
    path = write(tmp_path, "mixed.pdf", mixed_pdf(tmp_path, rendered(EN)))
    progress: list[tuple[int, int]] = []
    first, second = read(path, "mixed.pdf", ParseReport(progress=lambda done, total: progress.append((done, total))))
    assert first.metadata == {"page": 1}
    assert "seventeen cats every morning" in first.text
    assert second.metadata["page"] == 2
    assert second.metadata["ocr"] is True
    assert accuracy(second.text, EN) >= 0.9, second.text
    assert progress == [(1, 1)]  # one page went through OCR


def test_pages_past_the_page_cap_are_named_and_not_read(tmp_path: Path, settings) -> None:
    settings.KB_OCR_MAX_PAGES = 1

    def pages() -> list[Image.Image]:  # fresh ones per file: Pillow keeps a save's options on the images
        return [rendered(EN).convert("RGB"), rendered(ZH).convert("RGB"), rendered(EN[:1]).convert("RGB")]

    first, *rest = pages()
    path = write(tmp_path, "long.pdf", image_bytes(first, "PDF", save_all=True, append_images=rest))
    report = ParseReport()
    [section] = read(path, "long.pdf", report)
    assert section.metadata["page"] == 1
    assert report.notices == [
        "OCR read 1 of the 3 pages without a text layer (KB_OCR_MAX_PAGES); 2 from page 2 on are not indexed: "
        "split the file to index them"
    ]
    first, *rest = pages()
    path = write(tmp_path, "long.tiff", image_bytes(first, "TIFF", save_all=True, append_images=rest))
    report = ParseReport()
    assert [section.metadata["page"] for section in read(path, "long.tiff", report)] == [1]
    assert "pages 2 to 3 are not indexed" in report.notices[0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width by height, with a few bytes of data: a decompression bomb's
    shape, refused before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_large_image_is_scaled_down_and_one_past_the_pixel_cap_is_refused(tmp_path: Path, settings) -> None:
    # 9.6 megapixels (the 50-megapixel photo at a test's scale): read at MAX_SIDE.
    large = rendered(EN, size=150).resize((6000, 1600))
    path = write(tmp_path, "poster.png", image_bytes(large, "PNG"))
    [section] = read(path, "poster.png")
    assert accuracy(section.text, EN) >= 0.9, section.text

    settings.KB_OCR_MAX_PIXELS = 4_000_000
    with pytest.raises(ParseError, match=r"poster.png is 9.6 megapixels \(6,000 × 1,600\), more than the 4.0 .*"):
        read(path, "poster.png")

    # 1.6 gigapixels claimed: Pillow's own guard would raise; the cap refuses it from the header.
    settings.KB_OCR_MAX_PIXELS = 100_000_000
    bomb = write(tmp_path, "bomb.png", png_header_only(40_000, 40_000))
    assert detect_type(bomb, "bomb.png") == "image"
    with pytest.raises(ParseError, match=r"1600.0 megapixels .*KB_OCR_MAX_PIXELS"):
        read(bomb, "bomb.png")


def test_files_that_only_claim_to_be_images_and_truncated_images_end_with_a_reason(tmp_path: Path) -> None:
    notes = write(tmp_path, "notes.png", b"Not a picture at all: plain notes about the harbour.\n")
    assert detect_type(notes, "notes.png") == "text"
    assert "harbour" in read(notes, "notes.png")[0].text
    fake = write(tmp_path, "fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(UnsupportedFile, match=r"fake\.png looks like a PNG image but cannot be read"):
        detect_type(fake, "fake.png")
    picture = rendered(EN + ZH)
    for name, data in [("cut.png", image_bytes(picture, "PNG")), ("cut.jpg", image_bytes(picture, "JPEG"))]:
        path = write(tmp_path, name, data[: len(data) // 2])
        assert detect_type(path, name) == "image"  # the header is whole
        with pytest.raises(ParseError, match=re.escape(f"{name} is truncated or corrupt")):
            read(path, name)


def test_a_page_past_the_time_limit_fails_with_the_reason_and_the_next_is_read(tmp_path: Path, settings) -> None:
    path = write(tmp_path, "slow.png", image_bytes(rendered(EN), "PNG"))
    settings.KB_OCR_PAGE_TIMEOUT_S = 0.001
    with pytest.raises(ParseError, match=r"slow.png took longer than KB_OCR_PAGE_TIMEOUT_S \(0.001 s\)"):
        read(path, "slow.png")
    settings.KB_OCR_PAGE_TIMEOUT_S = 120
    assert accuracy(read(path, "slow.png")[0].text, EN) >= 0.9


def test_a_dead_ocr_process_is_replaced(tmp_path: Path) -> None:
    path = write(tmp_path, "again.png", image_bytes(rendered(ZH), "PNG"))
    assert accuracy(read(path, "again.png")[0].text, ZH) >= 0.9
    assert ocr._process is not None
    os.kill(ocr._process.process.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    ocr._process.process.wait()
    assert accuracy(read(path, "again.png")[0].text, ZH) >= 0.9


@pytest.mark.django_db
def test_a_ready_document_keeps_what_was_left_out_as_its_notice(team) -> None:
    provider = provider_create(team=team, name="xi", kind="xinference", endpoint="http://127.0.0.1:9")
    model = registration_create(
        provider=provider, kind="embedding", name="MiniLM", provider_model_uid="m", dimensions=384
    )
    kb = kb_create(team=team, name="kb", embedding_model=model)
    document = Document.objects.create(
        knowledge_base=kb,
        team=team,
        original_name="long.pdf",
        file="documents/long.pdf",
        sha256="a" * 64,
        size_bytes=1,
        content_type="pdf",
        status=DocumentStatus.EMBEDDING,
        dispatch_token="00000000-0000-0000-0000-000000000001",
    )
    notice = "OCR read 200 of the 2,000 pages without a text layer (KB_OCR_MAX_PAGES)"
    assert document_mark_ready(document=document, generation=1, chunk_count=3, timings={}, notice=notice)
    document.refresh_from_db()
    assert (document.status, document.error, document.notice) == (DocumentStatus.READY, "", notice)
    # The API gives it as the notice; a failure reason stays empty.
    body = bearer_client(member_of(team, Role.MEMBER), team).get(f"/api/v1/documents/{document.pk}/").json()
    assert (body["error"], body["notice"]) == ("", notice)


@pytest.mark.django_db(transaction=True)
def test_a_scanned_pdf_is_ingested_by_the_worker_and_found(
    team, xinference: XinferenceServer, celery_worker: WorkerProcess
) -> None:
    model = embedding_model(team, xinference.endpoint)
    client = bearer_client(member_of(team, Role.ADMIN), team)
    created = client.post("/api/v1/knowledge-bases/", {"name": "Scans", "embedding_model": model.pk}, format="json")
    kb = KnowledgeBase.objects.get(pk=created.json()["id"])
    scan = image_bytes(rendered(EN).convert("RGB"), "PDF", save_all=True, append_images=[rendered(ZH).convert("RGB")])
    document_id = upload(client, kb, {"scan.pdf": scan}).json()["documents"][0]["id"]
    wait_until(lambda: all_settled([document_id]))
    document = Document.objects.get(pk=document_id)
    assert (document.status, document.error, document.progress) == (DocumentStatus.READY, "", 100)
    chunks = list(Chunk.objects.filter(document=document).order_by("ordinal"))
    assert [(chunk.metadata["page"], chunk.metadata["ocr"]) for chunk in chunks] == [(1, True), (2, True)]
    [hit] = search(client, kb, "harbour master", mode="fulltext", top_k=1)
    assert (hit["document_id"], hit["metadata"]["page"], hit["metadata"]["ocr"]) == (document_id, 1, True)
    [hit] = search(client, kb, "啤酒节", mode="fulltext", top_k=1)
    assert hit["metadata"]["page"] == 2
