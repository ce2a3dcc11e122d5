"""OCR of scanned PDF pages and images: rapidocr with PP-OCR's text detection and recognition
models (ONNX on the CPU, one recognition model for Chinese and English), which its wheel carries,
so nothing is downloaded at run time.

The work runs in a child process (`python -m kb.ocr`), one per worker process, started on first
use and reused. Images are decoded and pages rendered there too, so a page that takes longer than
KB_OCR_PAGE_TIMEOUT_S is stopped by killing the child, and a hostile file that crashes a decoder
or exhausts memory costs that page, not the Celery worker. The child exits when its parent does
(its stdin closes) or after IDLE_EXIT_S without work, so an idle worker does not keep the models'
memory.

Bounds: at most KB_OCR_MAX_PAGES pages (PDF pages without a text layer, TIFF frames) of a document
are read and the rest are named in the document's notice; an image larger than KB_OCR_MAX_PIXELS
is refused from its header, before it is decoded (this check replaces Pillow's decompression-bomb
guard in the child); a larger image is scaled to MAX_SIDE on its longer side before OCR (a JPEG is
decoded at reduced size), which is all the detection model reads anyway."""

from __future__ import annotations

import atexit
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from kb.parsing import ParseError, ParseReport, Section

if TYPE_CHECKING:
    from PIL.Image import Image
    from pypdfium2 import PdfPage

BASE_DIR = Path(__file__).resolve().parent.parent
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")  # a camera's multi-picture JPEG opens as JPEG
MAX_SIDE = 2000  # pixels on the longer side: the pipeline's own limit (rapidocr's max_side_len)
PDF_RENDER_DPI = 200  # a page is rendered at this resolution, or less to stay within MAX_SIDE
# A PDF page whose text layer holds fewer characters than this (blanks aside) and that shows an
# image is a scan: a page number or a stray header is not its text.
MIN_TEXT_CHARS = 16
# rapidocr's defaults but two. No direction classifier: on upright pages it turned a line in ten
# upside down before recognition, which then read garbage (bench/ocr_bench.py's pages: character
# accuracy 0.77-0.98 with it, 1.000 without); EXIF orientation and a PDF page's /Rotate are
# applied before OCR. Detection at the image's own size: the default enlarges anything under
# 736 pixels on its shorter side (a line of text: 4 times the work, read no better), and the
# image is at most MAX_SIDE already.
ENGINE_PARAMS = {
    "Global.log_level": "error",
    "Global.max_side_len": MAX_SIDE,
    "Global.use_cls": False,
    "Det.limit_type": "max",
    "Det.limit_side_len": MAX_SIDE,
}
# OCR of one document stops (the rest named in its notice) after this share of the task's time
# limit, so a long scan of dense pages leaves time to embed what was read instead of being
# killed at the limit and handed out again.
TASK_TIME_SHARE = 0.5
START_TIMEOUT_S = 60.0
IDLE_EXIT_S = 300.0
# Pages that time out or kill the OCR process one after another mean the rest will too: stop.
MAX_FAILURES_IN_A_ROW = 3


class OcrFailed(Exception):
    """The OCR process did not answer for a page: it took too long, or it died. The message is a
    predicate: `page 3 <message>`."""


# --- the worker side ---------------------------------------------------------------------------


def page_needs_ocr(page: PdfPage, text: str) -> bool:
    """A page with no usable text layer (almost no characters) that shows an image."""
    import pypdfium2.raw as pdfium_c

    if len("".join(text.split())) >= MIN_TEXT_CHARS:
        return False
    return any(True for _ in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=4))


def pdf_sections(path: Path, numbers: list[int], report: ParseReport) -> dict[int, Section]:
    """The OCR'd text of these PDF pages (numbered from 1), by page number: at most
    KB_OCR_MAX_PAGES of them, the rest named in the report's notices."""
    cap = settings.KB_OCR_MAX_PAGES
    if len(numbers) > cap:
        skipped = numbers[cap:]
        report.notices.append(
            f"OCR read {cap:,} of the {len(numbers):,} pages without a text layer (KB_OCR_MAX_PAGES); "
            f"{len(skipped):,} from page {skipped[0]:,} on are not indexed: split the file to index them"
        )
    requests = [(number, {"op": "pdf", "path": str(path), "page": number - 1}) for number in numbers[:cap]]
    return _read_pages(requests, report)


def image_sections(path: Path, original_name: str, report: ParseReport) -> Iterator[Section]:
    """An image's text by OCR, a section per page (a multi-page TIFF's frames), at most
    KB_OCR_MAX_PAGES of them."""
    path.stat()  # a stored file that is gone is the caller's FileNotFoundError, not a bad image
    max_pixels = settings.KB_OCR_MAX_PIXELS
    try:
        answer = _ask({"op": "frames", "path": str(path)}, settings.KB_OCR_PAGE_TIMEOUT_S)
    except OcrFailed as exc:
        raise ParseError(f"{original_name} {exc}") from exc
    if "error" in answer:
        raise ParseError(f"{original_name} {answer['error']}")
    frames, cap = int(answer["frames"]), settings.KB_OCR_MAX_PAGES
    if frames > cap:
        report.notices.append(
            f"OCR read the first {cap:,} of its {frames:,} pages (KB_OCR_MAX_PAGES); pages {cap + 1:,} to "
            f"{frames:,} are not indexed: split the file to index them"
        )
    requests = [
        (number, {"op": "image", "path": str(path), "frame": number - 1, "max_pixels": max_pixels})
        for number in range(1, min(frames, cap) + 1)
    ]
    if len(requests) == 1:  # a single picture: what went wrong is the reason the document failed
        try:
            answer = _ask(requests[0][1], settings.KB_OCR_PAGE_TIMEOUT_S)
        except OcrFailed as exc:
            raise ParseError(f"{original_name} {exc}") from exc
        if "error" in answer:
            raise ParseError(f"{original_name} {answer['error']}")
        report.progress(1, 1)
        yield _section(1, answer)
        return
    sections = _read_pages(requests, report)
    if not sections and report.notices:
        raise ParseError(f"{original_name}: no page could be read ({report.notices[-1]})")
    for number in sorted(sections):
        yield sections[number]


def _read_pages(requests: list[tuple[int, dict[str, Any]]], report: ParseReport) -> dict[int, Section]:
    """OCR page by page, reporting progress after each; what could not be read goes to the notices."""
    sections: dict[int, Section] = {}
    problems: list[str] = []
    stopped = ""
    in_a_row = 0
    budget_s = settings.CELERY_TASK_SOFT_TIME_LIMIT * TASK_TIME_SHARE
    deadline = time.monotonic() + budget_s
    for done, (number, request) in enumerate(requests, start=1):
        if time.monotonic() > deadline:
            stopped = (
                f"OCR stopped after {budget_s:,.0f} s (half the task time limit, CELERY_TASK_TIME_LIMIT): "
                f"{len(requests) - done + 1:,} pages from page {number:,} on are not indexed"
            )
            break
        try:
            answer = _ask(request, settings.KB_OCR_PAGE_TIMEOUT_S)
        except OcrFailed as exc:
            problems.append(f"page {number:,} {exc}")
            in_a_row += 1
            if in_a_row >= MAX_FAILURES_IN_A_ROW and done < len(requests):
                stopped = (
                    f"OCR stopped after {in_a_row} such pages in a row: "
                    f"{len(requests) - done:,} more from page {requests[done][0]:,} on are not indexed"
                )
                break
        else:
            in_a_row = 0
            if "error" in answer:
                problems.append(f"page {number:,} {answer['error']}")
            elif answer["text"].strip():
                sections[number] = _section(number, answer)
        report.progress(done, len(requests))
    if problems:
        more = f"; and {len(problems) - 5:,} more pages" if len(problems) > 5 else ""
        report.notices.append("not indexed: " + "; ".join(problems[:5]) + more)
    if stopped:
        report.notices.append(stopped)
    return sections


def _section(number: int, answer: dict[str, Any]) -> Section:
    return Section(answer["text"], {"page": number, "ocr": True, "ocr_confidence": answer["confidence"]})


class OcrProcess:
    """The child that runs OCR, spoken to in JSON lines: a request on its stdin, an answer on its
    stdout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kb.ocr"],
            cwd=BASE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.owner = os.getpid()
        self.buffer = b""
        self.last_used = time.monotonic()
        try:
            self._answer(time.monotonic() + START_TIMEOUT_S, "did not start the OCR process in time")
        except BaseException:
            self.kill()
            raise

    def fresh(self) -> bool:
        """Still usable: running, this process's own, and not about to exit for idleness."""
        return (
            self.process.poll() is None
            and self.owner == os.getpid()
            and time.monotonic() - self.last_used < IDLE_EXIT_S / 2
        )

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise OcrFailed(self._death()) from exc
        answer = self._answer(time.monotonic() + timeout, f"took longer than KB_OCR_PAGE_TIMEOUT_S ({timeout:g} s)")
        self.last_used = time.monotonic()
        return answer

    def _answer(self, deadline: float, too_slow: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OcrFailed(too_slow)
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                block = os.read(fd, 65536)
                if not block:
                    raise OcrFailed(self._death())
                self.buffer += block
        line, _, self.buffer = self.buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped the OCR process from answering"
        cause = "killed, perhaps for running out of memory" if code < 0 else "an error; see the worker's log"
        return f"crashed the OCR process (exit code {code}: {cause})"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


_lock = threading.Lock()
_process: OcrProcess | None = None


def _ask(request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request to this process's OCR child, started (again) when needed; a child that timed
    out or failed is killed, and the next request starts a new one."""
    global _process
    with _lock:
        if _process is not None and not _process.fresh():
            if _process.owner == os.getpid():
                _process.kill()
            _process = None
        if _process is None:
            _process = OcrProcess()
        try:
            return _process.ask(request, timeout)
        except BaseException:
            _process.kill()
            _process = None
            raise


@atexit.register
def _stop() -> None:
    if _process is not None and _process.owner == os.getpid():
        _process.kill()


# --- the OCR process ---------------------------------------------------------------------------


class _Refused(Exception):
    """A page that will not be read, and why (a predicate: `photo.png <message>`)."""


def _serve() -> None:
    """Answer requests until stdin closes (the worker is gone) or none comes for IDLE_EXIT_S."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the libraries print goes to the worker's log, not into the answers
    from PIL import Image
    from rapidocr import RapidOCR

    Image.MAX_IMAGE_PIXELS = None  # each request's own cap is checked from the header, before decoding
    engine = RapidOCR(params=ENGINE_PARAMS)
    pdf_cache: dict[str, Any] = {}

    def reply(answer: dict[str, Any]) -> None:
        answers.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
        answers.flush()

    reply({"ready": True})
    while select.select([sys.stdin], [], [], IDLE_EXIT_S)[0]:
        line = sys.stdin.buffer.readline()
        if not line:
            return
        request = json.loads(line)
        try:
            reply(_handle(engine, request, pdf_cache))
        except _Refused as exc:
            reply({"error": str(exc)})
        except Exception as exc:
            message = str(exc).replace(request.get("path", "\0"), "the file")
            reply({"error": f"could not be read ({type(exc).__name__}: {message})"})


def _handle(engine: Any, request: dict[str, Any], pdf_cache: dict[str, Any]) -> dict[str, Any]:
    if request["op"] == "frames":
        return {"frames": _frames(Path(request["path"]))}
    if request["op"] == "image":
        image = _load_image(Path(request["path"]), request["frame"], request["max_pixels"])
    else:
        image = _render_pdf_page(Path(request["path"]), request["page"], pdf_cache)
    return _recognise(engine, image)


def _open(path: Path) -> Image:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path, formats=IMAGE_FORMATS)
    except UnidentifiedImageError as exc:  # its message names the server's path
        raise _Refused("is not an image the platform reads: it is damaged") from exc
    except (SyntaxError, ValueError, EOFError) as exc:
        raise _Refused(f"is not an image the platform reads ({_without(path, exc)})") from exc


def _frames(path: Path) -> int:
    """Pages: a TIFF's frames. An animation (WebP, MPO) is read by its first frame."""
    with _open(path) as image:
        return int(getattr(image, "n_frames", 1)) if image.format == "TIFF" else 1


def _load_image(path: Path, frame: int, max_pixels: int) -> Image:
    from PIL import ImageOps

    image = _open(path)
    try:
        image.seek(frame)
        width, height = image.size
        if width * height > max_pixels:
            raise _Refused(
                f"is {width * height / 1e6:.1f} megapixels ({width:,} × {height:,}), more than the "
                f"{max_pixels / 1e6:.1f} that OCR reads (KB_OCR_MAX_PIXELS): scale it down and upload it again"
            )
        scale = MAX_SIDE / max(width, height)
        if scale < 1:  # JPEG: decode at a fraction of the size, never the whole picture
            image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        if frame == 0:
            image = ImageOps.exif_transpose(image)
        return _fitted(image)
    except _Refused:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise _Refused(f"is truncated or corrupt ({_without(path, exc)}): save it again from its application") from exc
    finally:
        image.close()


def _without(path: Path, exc: BaseException) -> str:
    """An error's message without the server's path to the file."""
    return str(exc).replace(str(path), "the file")


def _render_pdf_page(path: Path, index: int, cache: dict[str, Any]) -> Image:
    import pypdfium2

    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in cache:  # the document stays open for its next pages
        for previous in cache.values():
            previous.close()
        cache.clear()
        cache[key] = pypdfium2.PdfDocument(path)
    page = cache[key][index]
    try:
        width, height = page.get_size()
        scale = min(PDF_RENDER_DPI / 72, MAX_SIDE / max(width, height, 1))
        return _fitted(page.render(scale=scale, grayscale=True).to_pil())
    finally:
        page.close()


def _fitted(image: Image) -> Image:
    """RGB on white, at most MAX_SIDE on its longer side."""
    import numpy as np
    from PIL import Image as PILImage

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit and float scans
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        values = (values - low) * (255.0 / max(high - low, 1e-6))
        image = PILImage.fromarray(values.astype(np.uint8), "L")
    elif image.mode in ("1", "P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
        # Scaled as they are, a fax scan's or a palette's pixels would be picked, not averaged.
        transparent = image.mode in ("PA", "LA") or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "L" if image.mode == "1" else "RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    if image.mode == "RGBA":
        image = PILImage.alpha_composite(PILImage.new("RGBA", image.size, "white"), image)
    return image.convert("RGB")


def _recognise(engine: Any, image: Image) -> dict[str, Any]:
    result = engine(image)
    if not result.txts:
        return {"text": "", "confidence": 0.0}
    return {
        "text": _lines(result.boxes.tolist(), list(result.txts)),
        "confidence": round(sum(result.scores) / len(result.scores), 3),
    }


def _lines(boxes: list[list[list[float]]], texts: list[str]) -> str:
    """Boxes in reading order joined into lines: boxes side by side on one line (their vertical
    middles within half a line of each other) with a space, lines with a newline."""
    rows: list[list[tuple[float, float, float, str]]] = []  # (left, middle, height, text)
    for box, text in zip(boxes, texts, strict=True):
        ys = [point[1] for point in box]
        left, top, bottom = min(point[0] for point in box), min(ys), max(ys)
        middle, height = (top + bottom) / 2, bottom - top
        row = rows[-1] if rows else None
        if row is not None and abs(row[0][1] - middle) < max(row[0][2], height) / 2:
            row.append((left, middle, height, text))
        else:
            rows.append([(left, middle, height, text)])
    return "\n".join(" ".join(text for *_, text in sorted(row)) for row in rows)


if __name__ == "__main__":
    _serve()
