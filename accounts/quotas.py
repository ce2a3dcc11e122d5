"""Daily token quotas and usage: every model call is metered to its team and user.

A call that may use many tokens (an answer) reserves them first: the quota rows are locked, the
tokens already used today and those reserved by calls still in flight are counted, and what is
left bounds the call's answer. The call then settles: the reservation becomes usage. So streams
started at the same moment cannot together spend more than the quota (checking before and
recording after let each of them see the quota unspent). Short calls (query rewrites, summaries,
titles) are recorded when they return."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db import transaction
from django.db.models import F, Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import Quota, QuotaReservation, Usage
from core.domain_errors import DomainError

# A reservation whose call never settled (its process died) stops counting after this long.
RESERVATION_TTL = timedelta(minutes=15)
# Fewer tokens than this left for the answer is refused rather than cut to a stub.
MIN_ANSWER_TOKENS = 16


class QuotaExceeded(DomainError):
    status_code = 429
    code = "quota_exceeded"


@dataclass(frozen=True)
class Reservation:
    """Tokens held for one call; `answer_tokens` is what the answer may use (at most the ask)."""

    id: int | None  # None: no quota applies, nothing was written
    answer_tokens: int


def _today() -> date:
    return timezone.now().astimezone(UTC).date()


def _next_reset() -> datetime:
    return datetime.combine(_today() + timedelta(days=1), time.min, tzinfo=UTC)


def _quotas(team_id: int, user_id: int) -> QuerySet[Quota]:
    """The team-wide quota and the user's own in the team, whichever exist."""
    return Quota.objects.filter(Q(team_id=team_id, user__isnull=True) | Q(team_id=team_id, user_id=user_id))


def _spent(quota: Quota) -> tuple[int, int]:
    """Tokens used today and tokens reserved by calls in flight, under this quota."""
    used_rows = Usage.objects.filter(team_id=quota.team_id, day=_today())
    reserved_rows = QuotaReservation.objects.filter(team_id=quota.team_id, expires_at__gt=timezone.now())
    if quota.user_id is not None:
        used_rows = used_rows.filter(user_id=quota.user_id)
        reserved_rows = reserved_rows.filter(user_id=quota.user_id)
    used = used_rows.aggregate(total=Sum(F("tokens_in") + F("tokens_out")))["total"] or 0
    reserved = reserved_rows.aggregate(total=Sum("tokens"))["total"] or 0
    return used, reserved


def _refusal(quota: Quota, used: int, reserved: int) -> QuotaExceeded:
    whose = "your" if quota.user_id else "the team's"
    reset = _next_reset()
    hours, rest = divmod(int((reset - timezone.now()).total_seconds()), 3600)
    in_flight = f", {reserved} held by answers in progress" if reserved else ""
    return QuotaExceeded(
        f"{whose} daily quota of {quota.daily_tokens} tokens is used up ({used} used{in_flight}); it resets at "
        f"{reset:%Y-%m-%d %H:%M} UTC, in {hours} h {rest // 60} min"
    )


def quota_check(*, team_id: int, user_id: int) -> None:
    """Refuse before any model call when a quota that applies is used up (calls in flight count)."""
    for quota in _quotas(team_id, user_id):
        used, reserved = _spent(quota)
        if used + reserved >= quota.daily_tokens:
            raise _refusal(quota, used, reserved)


def quota_reserve(*, team_id: int, user_id: int, prompt_tokens: int, answer_tokens: int) -> Reservation:
    """Hold the prompt's tokens and up to `answer_tokens` for the answer, or refuse (429). The
    answer gets what the tightest quota has left, so the call cannot spend past it."""
    with transaction.atomic():
        # The row locks serialise reservations under the same quotas: two streams at once see
        # each other's holds.
        quotas = list(_quotas(team_id, user_id).select_for_update().order_by("pk"))
        if not quotas:
            return Reservation(id=None, answer_tokens=answer_tokens)
        allowed = answer_tokens
        for quota in quotas:
            used, reserved = _spent(quota)
            left = quota.daily_tokens - used - reserved - prompt_tokens
            if left < min(MIN_ANSWER_TOKENS, answer_tokens):
                raise _refusal(quota, used, reserved)
            allowed = min(allowed, left)
        expires_at = timezone.now() + RESERVATION_TTL
        row = QuotaReservation.objects.create(
            team_id=team_id, user_id=user_id, tokens=prompt_tokens + allowed, expires_at=expires_at
        )
    return Reservation(id=row.pk, answer_tokens=allowed)


def usage_record(
    *, team_id: int, user_id: int, model_name: str, tokens_in: int, tokens_out: int, reservation_id: int | None = None
) -> None:
    """Meter one model call (and release what it had reserved, if anything)."""
    with transaction.atomic():
        if reservation_id is not None:
            QuotaReservation.objects.filter(pk=reservation_id).delete()
        row, _ = Usage.objects.get_or_create(team_id=team_id, user_id=user_id, model_name=model_name, day=_today())
        Usage.objects.filter(pk=row.pk).update(
            requests=F("requests") + 1, tokens_in=F("tokens_in") + tokens_in, tokens_out=F("tokens_out") + tokens_out
        )


def quota_release(*, reservation_id: int | None) -> None:
    """Give back a reservation whose call never reached the model (nothing to meter)."""
    if reservation_id is not None:
        QuotaReservation.objects.filter(pk=reservation_id).delete()


def quota_reservations_prune() -> int:
    """Delete reservations that stopped counting (expired); they no longer affect any quota."""
    deleted, _ = QuotaReservation.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
