"""OCR speed and accuracy (kb.ocr, issue 21): renders pages of known text, English and Chinese at a
few font sizes, reads them back through the platform's own OCR path (the OCR child process that
the worker uses), and writes bench/results/<date>-ocr.md with pages per second and character
accuracy (1 - edit distance / length of the expected text) per language and per font size.

Pages are A4 at 150 dpi (1240 x 1754 pixels, as a scanner's default writes them), black text on
white in WenQuanYi Micro Hei (`apt-get install fonts-wqy-microhei`, which `make test` installs),
lines at 1.6 times the font size, half of them clean (PNG) and half made to look scanned: turned
by up to a degree, blurred, with noise, saved as JPEG at quality 55. A page is read once
unmeasured first: the models load then. Accuracy is measured with blanks collapsed (English: runs
of blanks as one space; Chinese: none), since OCR may join or split lines.

    .venv/bin/python bench/ocr_bench.py

Environment: OCR_BENCH_PAGES (12: English and Chinese, clean and scanned, over the font sizes);
OCR_BENCH_SIZES (18,24,32: font sizes in pixels, 8.6, 11.5 and 15.4 pt at 150 dpi);
OCR_BENCH_REPORT (the report's file name, without .md)."""

from __future__ import annotations

import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
# kb.ocr reads its limits from the settings; importing them connects to nothing.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")
os.environ.setdefault("DATABASE_URL", "postgres://bench@localhost/bench")
os.environ.setdefault("REDIS_URL", "redis://localhost:6379/0")

from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from kb import ocr  # noqa: E402
from kb.parsing import ParseReport  # noqa: E402

FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
PAGE = (1240, 1754)  # A4 at 150 dpi
MARGIN = 100
RESULTS = BASE_DIR / "bench" / "results"

ENGLISH_TEXT = (
    "the harbour master records every ship that arrives before dawn with timber grain salt and iron from the "
    "northern islands while the lighthouse keeper feeds seventeen cats and writes the height of the tide in a "
    "ledger kept since 1887 invoices are paid within 30 days at 4.5% interest unless the council decides "
    "otherwise each quarter the committee publishes a report on fishing quotas weather damage road repairs and "
    "the number of visitors who came by ferry train or bus to see the old fortress and its museum"
)
ENGLISH = ENGLISH_TEXT.split()
CHINESE = (
    "青岛啤酒节每年八月在黄岛金沙滩举行游客可以品尝来自世界各地的啤酒港口管理员记录每一艘在黎明前抵达的船只"
    "灯塔看守人每天早上喂十七只猫并把潮汐的高度写在账本上委员会每个季度发布关于渔业配额天气损失道路维修和游客人数的报告"
    "发票须在三十天内付清否则按月计息古老的城堡和博物馆吸引了乘坐渡轮火车或汽车前来的游客"
)


VARIANTS = ("clean", "scanned")


@dataclass
class PageResult:
    language: str
    variant: str
    size: int
    lines: int
    chars: int
    seconds: float
    distance: int


def page_text(language: str, size: int, font: ImageFont.FreeTypeFont, rng: random.Random) -> list[str]:
    """Lines that fill a page at this size: random words (English) or characters (Chinese)."""
    width = PAGE[0] - 2 * MARGIN
    count = (PAGE[1] - 2 * MARGIN) // int(size * 1.6)
    lines = []
    for _ in range(count):
        line = ""
        while True:
            piece = rng.choice(ENGLISH) if language == "en" else rng.choice(CHINESE)
            candidate = f"{line} {piece}".strip() if language == "en" else line + piece
            if font.getlength(candidate) > width:
                break
            line = candidate
        lines.append(line)
    return lines


def render(lines: list[str], font: ImageFont.FreeTypeFont, size: int) -> Image.Image:
    image = Image.new("L", PAGE, 255)
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + int(number * size * 1.6)), line, font=font, fill=0)
    return image


def scanned(image: Image.Image, rng: random.Random, path: Path) -> None:
    """Saved as a scanner would leave it: a little turned, soft, noisy, JPEG-compressed."""
    import numpy as np
    from PIL import ImageFilter

    turned = image.rotate(rng.uniform(-1, 1), resample=Image.Resampling.BICUBIC, fillcolor=255)
    soft = np.asarray(turned.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 10, soft.shape)
    Image.fromarray(np.clip(soft + noise, 0, 255).astype(np.uint8), "L").save(path, "JPEG", quality=55)


def normalised(text: str, language: str) -> str:
    return " ".join(text.split()) if language == "en" else "".join(text.split())


def edit_distance(first: str, second: str) -> int:
    previous = list(range(len(second) + 1))
    for row, char in enumerate(first, start=1):
        current = [row]
        for column, other in enumerate(second, start=1):
            current.append(min(previous[column] + 1, current[column - 1] + 1, previous[column - 1] + (char != other)))
        previous = current
    return previous[-1]


def read_page(path: Path) -> tuple[str, float]:
    started = time.perf_counter()
    sections = list(ocr.image_sections(path, path.name, ParseReport()))
    return "\n".join(section.text for section in sections), time.perf_counter() - started


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    import django

    django.setup()
    if not FONT.exists():
        sys.exit(f"{FONT} is missing: apt-get install fonts-wqy-microhei")
    pages = int(os.environ.get("OCR_BENCH_PAGES", "12"))
    sizes = [int(size) for size in os.environ.get("OCR_BENCH_SIZES", "18,24,32").split(",")]
    rng = random.Random(21)  # noqa: S311 - the same pages every run, not a secret
    plan = [
        (("en", "zh")[index % 2], VARIANTS[(index // 2) % 2], sizes[(index // 4) % len(sizes)])
        for index in range(pages)
    ]
    results: list[PageResult] = []
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        warm_up = Path(workdir) / "warm-up.png"
        render(["warm up 预热"], ImageFont.truetype(str(FONT), 32), 32).save(warm_up)
        read_page(warm_up)
        startup_s = time.perf_counter() - started
        log(f"OCR process started and models loaded in {startup_s:.1f} s")
        for number, (language, variant, size) in enumerate(plan, start=1):
            font = ImageFont.truetype(str(FONT), size)
            lines = page_text(language, size, font, rng)
            page = render(lines, font, size)
            path = Path(workdir) / f"page-{number}.{'png' if variant == 'clean' else 'jpg'}"
            if variant == "clean":
                page.save(path)
            else:
                scanned(page, rng, path)
            text, seconds = read_page(path)
            expected = normalised("\n".join(lines), language)
            distance = edit_distance(normalised(text, language), expected)
            results.append(PageResult(language, variant, size, len(lines), len(expected), seconds, distance))
            accuracy = 1 - distance / len(expected)
            log(f"page {number}/{len(plan)} {language} {variant} {size}px: {seconds:.1f} s, accuracy {accuracy:.3f}")
    report = markdown(results, sizes, startup_s)
    print(report)
    name = os.environ.get("OCR_BENCH_REPORT", f"{date.today().isoformat()}-ocr")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(report)
    log(f"written to {RESULTS / f'{name}.md'}")


def summary(rows: list[PageResult]) -> tuple[int, int, float, float, float]:
    """Pages, characters, seconds, pages per second, accuracy (all characters together)."""
    chars, seconds = sum(row.chars for row in rows), sum(row.seconds for row in rows)
    accuracy = 1 - sum(row.distance for row in rows) / max(chars, 1)
    return len(rows), chars, seconds, len(rows) / max(seconds, 1e-9), accuracy


def markdown(results: list[PageResult], sizes: list[int], startup_s: float) -> str:
    from django.conf import settings

    languages = {"en": "English", "zh": "Chinese"}
    out = [
        f"# OCR bench, {date.today().isoformat()}",
        "",
        f"`bench/ocr_bench.py`: {len(results)} rendered A4 pages at 150 dpi ({PAGE[0]} x {PAGE[1]}), clean (PNG) and "
        "made to look scanned (turned up to 1 degree, blurred, noise, JPEG at quality 55), read through kb.ocr's "
        f"OCR process. rapidocr {version('rapidocr')} (PP-OCRv6 small detection and recognition, no direction "
        f"classifier), onnxruntime {version('onnxruntime')} on the CPU; {platform.machine()}, {os.cpu_count()} "
        f"cores, Python {platform.python_version()}. Images larger than {ocr.MAX_SIDE} px on a side are scaled "
        f"down first; KB_OCR_PAGE_TIMEOUT_S {settings.KB_OCR_PAGE_TIMEOUT_S:g}.",
        "",
        f"Starting the OCR process and loading the models: {startup_s:.1f} s (once per worker process).",
        "",
        "| language | pages | characters | seconds | pages/s | characters/s | character accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for code, language in [*languages.items(), ("all", "all")]:
        rows = [row for row in results if code in ("all", row.language)]
        if rows:
            pages, chars, seconds, rate, accuracy = summary(rows)
            out.append(
                f"| {language} | {pages} | {chars:,} | {seconds:.1f} | {rate:.3f} | {chars / seconds:.0f} | "
                f"{accuracy:.3f} |"
            )
    out += [
        "",
        "By page (font size in pixels at 150 dpi: 18 px is 8.6 pt, 24 px 11.5 pt, 32 px 15.4 pt):",
        "",
        "| language | page | size | lines/page | seconds/page | character accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for code, language in languages.items():
        for variant in VARIANTS:
            for size in sizes:
                rows = [row for row in results if (row.language, row.variant, row.size) == (code, variant, size)]
                if rows:
                    pages, _chars, seconds, _rate, accuracy = summary(rows)
                    lines = sum(row.lines for row in rows) / pages
                    out.append(
                        f"| {language} | {variant} | {size} | {lines:.0f} | {seconds / pages:.1f} | {accuracy:.3f} |"
                    )
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
