"""A SQL result as an inline SVG bar chart, where one fits: two columns, a label and a number, and
2 to 30 rows (a category and its count or total, the commonest shape of a question in numbers).
Drawn here with no script, like the evaluation chart; labels are escaped by format_html."""

from __future__ import annotations

from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

MAX_BARS = 30
WIDTH, LABEL_W, BAR_H, GAP = 640, 180, 16, 6
PLOT_W = WIDTH - LABEL_W - 80


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def sql_result_chart(columns: list[str], rows: list[list[Any]]) -> SafeString | None:
    """Horizontal bars, one per row, or None when the result is not a label and a number."""
    if len(columns) != 2 or not 2 <= len(rows) <= MAX_BARS:
        return None
    values = [_number(row[1]) for row in rows]
    if any(value is None for value in values):
        return None
    numbers = [value for value in values if value is not None]
    top = max(max(numbers), 0.0) or 1.0
    height = len(rows) * (BAR_H + GAP) + GAP
    bars = format_html_join(
        "",
        '<text x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>'
        '<rect x="{}" y="{}" width="{}" height="{}"></rect>'
        '<text x="{}" y="{}" dominant-baseline="middle">{}</text>',
        (
            (
                LABEL_W - 6,
                GAP + index * (BAR_H + GAP) + BAR_H / 2,
                str(row[0])[:28],
                LABEL_W,
                GAP + index * (BAR_H + GAP),
                f"{max(value, 0.0) / top * PLOT_W:.1f}",
                BAR_H,
                LABEL_W + max(value, 0.0) / top * PLOT_W + 4,
                GAP + index * (BAR_H + GAP) + BAR_H / 2,
                f"{value:g}",
            )
            for index, (row, value) in enumerate(zip(rows, numbers, strict=True))
        ),
    )
    return format_html(
        '<svg class="sql-chart" viewBox="0 0 {} {}" role="img" aria-label="{} by {}" '
        'data-testid="tool-call-chart">{}</svg>',
        WIDTH,
        height,
        columns[1],
        columns[0],
        bars,
    )
