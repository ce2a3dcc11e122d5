"""The admin console's dashboard, /admin/dashboard/: usage per team, model and day as inline SVG
bar charts (drawn here, no script) beside tables of the exact figures; ingestion (the Celery
queues' depths, documents per status, the latest failures); and every model registration with
its status, last health and Launch / Terminate buttons.

Staff only (the admin site's own check); launching and terminating need the change permission
on model registrations, and go through the same code as the registration admin's actions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import redis
from django.conf import settings
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet, Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from kombu.transport.redis import PRIORITY_STEPS, Channel

from accounts.models import Usage
from kb.models import Document, DocumentStatus
from models_registry.admin import LIFECYCLE_ACTIONS, ModelRegistrationAdmin
from models_registry.models import ModelEvent, ModelRegistration
from workers.celery import QUEUES

PERIODS = (14, 30)
TOP_BARS = 15
LATEST_FAILURES = 10
REDIS_TIMEOUT_S = 2.0


# --- charts -----------------------------------------------------------------------------------


def _short(label: str, length: int = 24) -> str:
    return label if len(label) <= length else label[: length - 1] + "…"


def _svg(title: str, width: int, height: int, parts: Sequence[SafeString]) -> SafeString:
    return format_html(
        '<svg class="chart" role="img" aria-label="{title}" width="{width}" height="{height}" '
        'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{body}</svg>',
        title=title,
        width=width,
        height=height,
        body=format_html_join("", "{}", ((part,) for part in parts)),
    )


def bar_chart(title: str, bars: Sequence[tuple[str, int]]) -> SafeString:
    """Horizontal bars, one per (label, value), the value written after each bar. Labels are
    user input (team and model names): format_html escapes each, in the text and the tooltip."""
    label_w, bar_w, value_w, row_h = 170, 290, 90, 22
    top = max((value for _label, value in bars), default=0) or 1
    rows = []
    for index, (label, value) in enumerate(bars):
        length = max(1, round(value / top * bar_w)) if value else 0
        rows.append(
            format_html(
                "<g><title>{label}: {value}</title>"
                '<text class="chart-label" x="{label_x}" y="{text_y}" text-anchor="end">{short}</text>'
                '<rect class="chart-bar" x="{bar_x}" y="{y}" width="{length}" height="14" rx="2"></rect>'
                '<text class="chart-value" x="{value_x}" y="{text_y}">{value}</text></g>',
                label=label,
                short=_short(label),
                value=value,
                y=index * row_h + 4,
                text_y=index * row_h + 16,
                label_x=label_w - 8,
                bar_x=label_w,
                length=length,
                value_x=label_w + length + 6,
            )
        )
    return _svg(title, label_w + bar_w + value_w, len(bars) * row_h + 8, rows)


def column_chart(title: str, columns: Sequence[tuple[date, int]]) -> SafeString:
    """One column per day, oldest left; about seven dates under the axis, each value in its
    column's tooltip and the largest on the axis (the table beside the chart has them all)."""
    width, plot_h, axis_h, left = 560, 150, 34, 56
    step = (width - left) / max(len(columns), 1)
    top = max((value for _day, value in columns), default=0)
    every = max(1, math.ceil(len(columns) / 7))
    parts = [
        format_html(
            '<text class="chart-value" x="{x}" y="12" text-anchor="end">{top}</text>'
            '<line class="chart-axis" x1="{left}" y1="{axis_y}" x2="{width}" y2="{axis_y}"></line>',
            x=left - 6,
            top=top,
            left=left,
            axis_y=plot_h + 4,
            width=width,
        )
    ]
    for index, (day, value) in enumerate(columns):
        height = round(value / top * (plot_h - 8)) if top else 0
        x = left + index * step
        parts.append(
            format_html(
                "<g><title>{day}: {value}</title>"
                '<rect class="chart-bar" x="{x}" y="{y}" width="{w}" height="{height}"></rect></g>',
                day=day.isoformat(),
                value=value,
                x=round(x + 1, 1),
                y=plot_h + 4 - height,
                w=round(max(step - 2, 1), 1),
                height=height,
            )
        )
        if index % every == 0:
            parts.append(
                format_html(
                    '<text class="chart-label" x="{x}" y="{y}" text-anchor="middle">{day}</text>',
                    x=round(x + step / 2, 1),
                    y=plot_h + 22,
                    day=day.strftime("%m-%d"),
                )
            )
    return _svg(title, width, plot_h + axis_h, parts)


# --- usage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageLine:
    label: str
    requests: int
    tokens_in: int
    tokens_out: int

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


def _sums(rows: QuerySet[Usage], *group: str) -> list[dict[str, Any]]:
    return list(
        rows.values(*group).annotate(
            total_requests=Sum("requests"), total_in=Sum("tokens_in"), total_out=Sum("tokens_out")
        )
    )


def _line(label: str, row: dict[str, Any]) -> UsageLine:
    return UsageLine(label, row["total_requests"] or 0, row["total_in"] or 0, row["total_out"] or 0)


def usage_summary(*, days: int, today: date) -> dict[str, Any]:
    """Tokens and requests in the last `days` days (Usage.day is a UTC date), per team, per model
    (most tokens first) and per day (every day, empty ones as zero)."""
    start = today - timedelta(days=days - 1)
    rows = Usage.objects.filter(day__gte=start, day__lte=today)
    by_team = sorted(
        (_line(row["team__name"], row) for row in _sums(rows, "team_id", "team__name")),
        key=lambda line: (-line.tokens, line.label),
    )
    by_model = sorted(
        (_line(row["model_name"], row) for row in _sums(rows, "model_name")),
        key=lambda line: (-line.tokens, line.label),
    )
    per_day = {row["day"]: _line(row["day"].isoformat(), row) for row in _sums(rows, "day")}
    every_day = [start + timedelta(days=offset) for offset in range(days)]
    by_day = [per_day.get(day, UsageLine(day.isoformat(), 0, 0, 0)) for day in every_day]
    team_bars = [(line.label, line.tokens) for line in by_team[:TOP_BARS]]
    model_bars = [(line.label, line.tokens) for line in by_model[:TOP_BARS]]
    return {
        "start": start,
        "by_team": by_team,
        "by_model": by_model,
        # The table lists the days with usage; the chart shows every day, empty ones too.
        "days_with_usage": [line for line in by_day if line.requests or line.tokens],
        "team_chart": bar_chart(_("Tokens per team"), team_bars) if team_bars else None,
        "model_chart": bar_chart(_("Tokens per model"), model_bars) if model_bars else None,
        "day_chart": column_chart(
            _("Tokens per day"), [(day, line.tokens) for day, line in zip(every_day, by_day, strict=True)]
        ),
    }


# --- ingestion --------------------------------------------------------------------------------


def queue_depths() -> dict[str, int]:
    """Messages waiting in each Celery queue. The broker is the Redis of REDIS_URL (settings build
    CELERY_BROKER_URL from it), where kombu keeps a queue as one list per priority step: the
    queue's name, then name + separator + step. Raises redis.RedisError when Redis is down."""
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in QUEUES:
                for step in PRIORITY_STEPS:
                    pipe.llen(f"{queue}{Channel.sep}{step}" if step else queue)
            sizes = pipe.execute()
    finally:
        client.close()
    steps = len(PRIORITY_STEPS)
    return {queue: sum(sizes[index * steps : (index + 1) * steps]) for index, queue in enumerate(QUEUES)}


def ingestion_summary() -> dict[str, Any]:
    counts = dict(Document.objects.values_list("status").annotate(count=Count("id")).order_by())
    try:
        depths: dict[str, int] | None = queue_depths()
        queue_error = ""
    except redis.RedisError as exc:
        depths, queue_error = None, str(exc)
    return {
        "queue_depths": depths,
        "queue_error": queue_error,
        "documents_per_status": [
            (status.label, status.value, counts.get(status.value, 0)) for status in DocumentStatus
        ],
        "failures": Document.objects.filter(status=DocumentStatus.FAILED)
        .select_related("knowledge_base", "team")
        .order_by("-updated_at")[:LATEST_FAILURES],
    }


# --- models -----------------------------------------------------------------------------------


def registrations_with_health() -> list[tuple[ModelRegistration, ModelEvent | None]]:
    """Every registration with its latest event (one query: PostgreSQL's DISTINCT ON)."""
    registrations = list(ModelRegistration.objects.select_related("team", "provider"))
    latest = ModelEvent.objects.filter(registration__in=registrations).order_by("registration_id", "-created_at")
    events = {event.registration_id: event for event in latest.distinct("registration_id")}
    return [(registration, events.get(registration.pk)) for registration in registrations]


def _registration_admin(site: AdminSite) -> ModelRegistrationAdmin:
    model_admin = site.get_model_admin(ModelRegistration)
    assert isinstance(model_admin, ModelRegistrationAdmin)
    return model_admin


# --- views ------------------------------------------------------------------------------------


def dashboard_view(request: HttpRequest, site: AdminSite) -> HttpResponse:
    try:
        days = int(request.GET.get("days", PERIODS[0]))
    except ValueError:
        days = PERIODS[0]
    if days not in PERIODS:
        days = PERIODS[0]
    context = {
        **site.each_context(request),
        "title": _("Dashboard"),
        "days": days,
        "periods": PERIODS,
        "usage": usage_summary(days=days, today=timezone.now().date()),
        "ingestion": ingestion_summary(),
        "registrations": registrations_with_health(),
        "can_manage_models": _registration_admin(site).has_change_permission(request),
    }
    return render(request, "admin/dashboard.html", context)


@require_POST
def model_action_view(request: HttpRequest, site: AdminSite, pk: int, action: str) -> HttpResponse:
    if action not in LIFECYCLE_ACTIONS:
        raise Http404(_("No such model action."))
    registration = get_object_or_404(ModelRegistration, pk=pk)
    model_admin = _registration_admin(site)
    if not model_admin.has_change_permission(request, registration):
        raise PermissionDenied
    model_admin.run_lifecycle(request, registration, action)
    return HttpResponseRedirect(reverse(f"{site.name}:dashboard") + "#models")
