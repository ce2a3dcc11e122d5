"""Per-key and per-team request limits for API-key traffic, counted in Redis so every web process
shares the count. A sliding one-minute window: this minute's count plus last minute's, weighted by
how much of last minute the window still covers. Fixed windows would let a client send twice its
limit across a minute boundary, and would forget a burst the moment a new minute starts.

Checked when a key authenticates, which is the one step every API request passes (DRF views, the
streaming views and /v1 alike).

While Redis is down the limits are not counted and requests go through (logged): the limits guard
against a runaway client, and an outage of the counter should not take the whole API down with
it. Token quotas, which are about money, live in PostgreSQL and still hold."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from redis import RedisError
from rest_framework.exceptions import Throttled

from accounts.models import ApiKey
from runtime.redis_cache import shared_redis_client

WINDOW_S = 60
logger = logging.getLogger(__name__)


def _sliding_counts(buckets: list[str], now: float) -> list[float]:
    """Count this request in each bucket's minute and return each bucket's requests in the minute
    that ends now. One round trip for all buckets: this runs before every API request's view."""
    window = int(now // WINDOW_S)
    pipeline = shared_redis_client().pipeline(transaction=False)
    for bucket in buckets:
        current = f"ratelimit:{bucket}:{window}"
        pipeline.incr(current)
        # Kept two windows, so the next minute can still weigh this one.
        pipeline.expire(current, WINDOW_S * 2)
        pipeline.get(f"ratelimit:{bucket}:{window - 1}")
    replies = pipeline.execute()
    share_of_previous = 1 - (now % WINDOW_S) / WINDOW_S
    counts = []
    for index in range(len(buckets)):
        current_count, _expire_set, previous_count = replies[index * 3 : index * 3 + 3]
        counts.append(int(current_count) + int(previous_count or 0) * share_of_previous)
    return counts


def rate_limit_check(key: ApiKey) -> None:
    """Count this request against the key and its team; raise 429 (with Retry-After) past a limit."""
    try:
        _check(key)
    except RedisError as exc:
        logger.warning("rate limits not counted for API key %s: Redis is unavailable (%s)", key.pk, exc)


def _check(key: ApiKey) -> None:
    now = time.time()
    # A hint: by then this minute's requests start to count less.
    retry_after = WINDOW_S - int(now % WINDOW_S)
    key_count, team_count = _sliding_counts([f"key:{key.pk}", f"team:{key.team_id}"], now)
    key_limit = key.rate_limit_per_minute or settings.API_RATE_LIMIT_KEY_PER_MINUTE
    if key_count > key_limit:
        raise Throttled(
            wait=retry_after,
            detail=f"This API key allows {key_limit} requests per minute: retry in {retry_after} s, "
            "or ask a team admin for a higher limit.",
        )
    team_limit = key.team.rate_limit_per_minute or settings.API_RATE_LIMIT_TEAM_PER_MINUTE
    if team_count > team_limit:
        raise Throttled(
            wait=retry_after,
            detail=f"The team's API keys together allow {team_limit} requests per minute: retry in "
            f"{retry_after} s, or ask the operator for a higher team limit.",
        )
