"""An evaluation set's history as an inline SVG line chart (drawn here, no script, as the admin
dashboard draws its charts): one polyline per metric over the set's finished runs, oldest left,
scores on a fixed 0..1 axis so that two sets' charts read alike."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

# What the chart follows: the ranking figures (latency has its own scale and lives in the table).
CHART_METRICS = ("recall@1", "recall@5", "mrr@10", "ndcg@10", "answer_in_chunk@5")
Y_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_X_LABELS = 8

WIDTH, LEFT, PLOT_W, TOP, PLOT_H = 720, 52, 420, 12, 180
LEGEND_X = LEFT + PLOT_W + 24


@dataclass(frozen=True)
class ChartPoint:
    """One finished run: its label under the axis and its figures (None where not measured)."""

    label: str
    values: Mapping[str, float | None]


def _x(index: int, count: int) -> float:
    if count == 1:
        return LEFT + PLOT_W / 2
    pad = 12
    return LEFT + pad + index * (PLOT_W - 2 * pad) / (count - 1)


def _y(value: float) -> float:
    return TOP + PLOT_H - max(0.0, min(1.0, value)) * PLOT_H


def _dot_radius(series: int, count: int) -> float:
    """Earlier series are drawn wider (lines too, in the stylesheet), so metrics with the same
    figures still show each colour around the next instead of one hiding the others."""
    return round(2.5 + (count - 1 - series) * 0.9, 1)


def _tick_label(value: float) -> str:
    return f"{value:g}"


def line_chart(title: str, points: Sequence[ChartPoint], metrics: Sequence[str] = CHART_METRICS) -> SafeString:
    """The chart for `points` (oldest first). Labels come from the caller (run numbers); each one
    is escaped by format_html like every other piece of text here."""
    bottom = TOP + PLOT_H
    parts: list[SafeString] = []
    for tick in Y_TICKS:
        parts.append(
            format_html(
                '<line class="chart-grid" x1="{left}" y1="{y}" x2="{right}" y2="{y}"></line>'
                '<text class="chart-label" x="{label_x}" y="{text_y}" text-anchor="end">{label}</text>',
                left=LEFT,
                right=LEFT + PLOT_W,
                y=round(_y(tick), 1),
                label_x=LEFT - 6,
                text_y=round(_y(tick) + 4, 1),
                label=_tick_label(tick),
            )
        )
    parts.append(
        format_html(
            '<line class="chart-axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"></line>'
            '<line class="chart-axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"></line>'
            '<text class="chart-title" x="14" y="{middle}" text-anchor="middle" '
            'transform="rotate(-90 14 {middle})">{y_title}</text>'
            '<text class="chart-title" x="{center}" y="{x_title_y}" text-anchor="middle">{x_title}</text>',
            left=LEFT,
            top=TOP,
            bottom=bottom,
            right=LEFT + PLOT_W,
            middle=TOP + PLOT_H / 2,
            y_title=_("score (0 to 1)"),
            center=LEFT + PLOT_W / 2,
            x_title_y=bottom + 36,
            x_title=_("runs, oldest to newest"),
        )
    )
    every = max(1, math.ceil(len(points) / MAX_X_LABELS))
    for index, point in enumerate(points):
        if index % every == 0 or index == len(points) - 1:
            parts.append(
                format_html(
                    '<text class="chart-label" x="{x}" y="{y}" text-anchor="middle">{label}</text>',
                    x=round(_x(index, len(points)), 1),
                    y=bottom + 16,
                    label=point.label,
                )
            )
    for series, metric in enumerate(metrics):
        measured = [
            (index, point, value)
            for index, point in enumerate(points)
            if (value := point.values.get(metric)) is not None
        ]
        coordinates = [(round(_x(index, len(points)), 1), round(_y(value), 1)) for index, _point, value in measured]
        if len(coordinates) >= 2:
            parts.append(
                format_html(
                    '<polyline class="chart-line series-{series}" data-metric="{metric}" points="{points}"></polyline>',
                    series=series,
                    metric=metric,
                    points=" ".join(f"{x},{y}" for x, y in coordinates),
                )
            )
        parts.append(
            format_html_join(
                "",
                '<circle class="chart-dot series-{}" cx="{}" cy="{}" r="{}"><title>{} · {}: {}</title></circle>',
                (
                    (series, x, y, _dot_radius(series, len(metrics)), point.label, metric, f"{value:.3f}")
                    for (x, y), (_index, point, value) in zip(coordinates, measured, strict=True)
                ),
            )
        )
        legend_y = TOP + 8 + series * 22
        parts.append(
            format_html(
                '<g class="chart-legend"><line class="chart-line series-{series}" x1="{x1}" y1="{y}" x2="{x2}" '
                'y2="{y}"></line><text class="chart-label" x="{text_x}" y="{text_y}">{metric}{missing}</text></g>',
                series=series,
                x1=LEGEND_X,
                x2=LEGEND_X + 22,
                y=legend_y,
                text_x=LEGEND_X + 28,
                text_y=legend_y + 4,
                metric=metric,
                missing="" if measured else " " + _("(not measured)"),
            )
        )
    height = bottom + 46
    return format_html(
        '<svg class="chart metric-chart" role="img" aria-label="{title}" data-testid="metric-chart" '
        'width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        "<title>{title}</title>{body}</svg>",
        title=title,
        width=WIDTH,
        height=height,
        body=format_html_join("", "{}", ((part,) for part in parts)),
    )
