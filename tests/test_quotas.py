"""Quotas hold for answers started at the same moment: tokens are reserved before the model is
called (under a lock on the quota rows) and settled after, so concurrent streams cannot together
spend more than the quota. Real PostgreSQL, one connection per thread."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Quota, QuotaReservation, Role, Usage
from accounts.quotas import (
    QuotaExceeded,
    quota_check,
    quota_release,
    quota_reservations_prune,
    quota_reserve,
    usage_record,
)
from tests.conftest import member_of

pytestmark = pytest.mark.django_db(transaction=True)


def test_answers_started_together_cannot_spend_past_the_quota(team) -> None:
    user = member_of(team, Role.MEMBER)
    Quota.objects.create(team=team, user=None, daily_tokens=2000)
    granted: list[int] = []
    refused: list[str] = []
    start = threading.Barrier(8)

    def ask() -> None:
        try:
            start.wait()
            reservation = quota_reserve(team_id=team.pk, user_id=user.pk, prompt_tokens=100, answer_tokens=512)
            granted.append(100 + reservation.answer_tokens)
        except QuotaExceeded as exc:
            refused.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each answer's reservation bounds what it may generate: all of them together fit the quota.
    assert sum(granted) <= 2000
    assert len(granted) >= 3
    assert refused
    assert "held by answers in progress" in refused[0]
    assert QuotaReservation.objects.filter(team=team).count() == len(granted)


def test_a_reservation_settles_into_usage_and_a_dead_calls_expires(team) -> None:
    user = member_of(team, Role.MEMBER)
    Quota.objects.create(team=team, user=user, daily_tokens=1000)
    first = quota_reserve(team_id=team.pk, user_id=user.pk, prompt_tokens=100, answer_tokens=900)
    assert first.id is not None
    assert first.answer_tokens == 900
    with pytest.raises(QuotaExceeded, match="your daily quota of 1000 tokens"):
        quota_check(team_id=team.pk, user_id=user.pk)
    # The answer used 150 tokens: the rest of the hold comes back.
    usage_record(
        team_id=team.pk, user_id=user.pk, model_name="m", tokens_in=100, tokens_out=150, reservation_id=first.id
    )
    assert not QuotaReservation.objects.filter(pk=first.id).exists()
    assert Usage.objects.get(team=team, user=user).tokens_out == 150
    second = quota_reserve(team_id=team.pk, user_id=user.pk, prompt_tokens=100, answer_tokens=900)
    assert second.answer_tokens == 1000 - 250 - 100
    quota_release(reservation_id=second.id)
    # A call whose process died never settles: its hold stops counting when it expires.
    third = quota_reserve(team_id=team.pk, user_id=user.pk, prompt_tokens=100, answer_tokens=900)
    assert third.id is not None
    QuotaReservation.objects.filter(pk=third.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert quota_reserve(team_id=team.pk, user_id=user.pk, prompt_tokens=100, answer_tokens=10).answer_tokens == 10
    assert quota_reservations_prune() == 1


def test_no_quota_means_no_reservation_row(team) -> None:
    user = member_of(team, Role.MEMBER)
    reservation = quota_reserve(team_id=team.pk, user_id=user.pk, prompt_tokens=10, answer_tokens=64)
    assert reservation.id is None
    assert reservation.answer_tokens == 64
    assert not QuotaReservation.objects.exists()
