"""Real sample files of every supported format, built by the tests (no binary fixtures in git)."""

from __future__ import annotations

import io
import json
import zipfile
from email.message import EmailMessage
from pathlib import Path

FACT_EN = "The lighthouse keeper of Vardø feeds seventeen cats every morning at dawn."
FACT_ZH = "青岛啤酒节每年八月在黄岛金沙滩举行，游客可以品尝来自世界各地的啤酒。"


def pdf_bytes(pages: list[str], password: str | None = None) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    if password:
        pdf.set_encryption(owner_password=password, user_password=password)
    return bytes(pdf.output())


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Field notes", level=1)
    document.add_paragraph("Introductory remarks about the northern coast.")
    document.add_heading("Animals", level=2)
    document.add_paragraph(FACT_EN)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "town", "cats"
    table.cell(1, 0).text, table.cell(1, 1).text = "Vardø", "17"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def pptx_bytes() -> bytes:
    import pptx

    presentation = pptx.Presentation()
    for title, body in [("Agenda", "Welcome and plans"), ("Findings", FACT_EN)]:
        slide = presentation.slides.add_slide(presentation.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    buffer = io.BytesIO()
    presentation.save(buffer)
    return buffer.getvalue()


def xlsx_bytes() -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Census"
    sheet.append(["town", "cats", "note"])
    sheet.append(["Vardø", 17, "fed at dawn by the lighthouse keeper"])
    sheet.append(["Tromsø", 3, "indoor cats"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def epub_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
            '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
            "</rootfiles></container>",
        )
        archive.writestr(
            "OEBPS/content.opf",
            '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0"><manifest>'
            '<item id="c1" href="ch1.xhtml" media-type="application/xhtml+xml"/>'
            '<item id="c2" href="ch2.xhtml" media-type="application/xhtml+xml"/></manifest>'
            '<spine><itemref idref="c1"/><itemref idref="c2"/></spine></package>',
        )
        archive.writestr("OEBPS/ch1.xhtml", "<html><body><h1>Chapter one</h1><p>Snow on the roofs.</p></body></html>")
        archive.writestr("OEBPS/ch2.xhtml", f"<html><body><h1>Chapter two</h1><p>{FACT_EN}</p></body></html>")
    return buffer.getvalue()


def eml_bytes() -> bytes:
    message = EmailMessage()
    message["From"] = "keeper@example.com"
    message["To"] = "team@example.com"
    message["Subject"] = "Morning report"
    message["Date"] = "Mon, 02 Nov 2026 07:00:00 +0000"
    message.set_content(f"Hello team,\n\n{FACT_EN}\n\nRegards")
    return bytes(message)


def html_bytes() -> bytes:
    return (
        "<!doctype html><html><head><title>t</title><script>alert('x')</script></head><body>"
        "<nav>Home | About</nav><h1>Guide</h1><p>General words.</p><h2>Cats</h2>"
        f"<p>{FACT_EN}</p></body></html>"
    ).encode()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def samples() -> dict[str, bytes]:
    """file name -> content, one per supported format, each carrying FACT_EN (or FACT_ZH)."""
    return {
        "notes.txt": f"Plain notes.\n\n{FACT_EN}\n".encode(),
        "guide.md": f"# Guide\n\nIntro.\n\n## Cats\n\n{FACT_EN}\n".encode(),
        "page.html": html_bytes(),
        "report.pdf": pdf_bytes(["Cover page of the report.", FACT_EN]),
        "notes.docx": docx_bytes(),
        "slides.pptx": pptx_bytes(),
        "census.xlsx": xlsx_bytes(),
        "census.csv": "town,cats,note\nVardø,17,fed at dawn by the lighthouse keeper\nTromsø,3,indoor\n".encode(),
        "record.json": json.dumps({"report": {"title": "cats", "body": FACT_EN}}).encode(),
        "records.jsonl": (
            json.dumps({"n": 1, "text": "first"}) + "\n" + json.dumps({"n": 2, "text": FACT_EN}) + "\n"
        ).encode(),
        "mail.eml": eml_bytes(),
        "book.epub": epub_bytes(),
        "中文.txt": f"关于节日的说明。\n\n{FACT_ZH}\n".encode("gb18030"),
    }


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path
