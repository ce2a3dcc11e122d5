"""Parse and check the service URLs (DATABASE_URL, REDIS_URL) with one-line, actionable errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import environ

DATABASE_SCHEMES = ("postgres", "postgresql", "pgsql")
REDIS_SCHEMES = ("redis", "rediss", "unix")


def parse_database_url(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for DATABASE_URL; ValueError naming the variable when malformed."""
    scheme = urlsplit(url).scheme
    if scheme not in DATABASE_SCHEMES:
        raise ValueError(
            f"DATABASE_URL must start with postgres:// (PostgreSQL with pgvector), got scheme {scheme or 'none'!r}"
        )
    try:
        config: dict[str, Any] = environ.Env.db_url_config(url)
    except Exception as exc:  # django-environ raises several kinds for malformed URLs
        raise ValueError(f"DATABASE_URL is malformed: {exc}") from exc
    # A unix socket directory travels percent-encoded in the host part (postgres://user@%2Frun%2Fpg/db).
    config["HOST"] = unquote(str(config.get("HOST") or ""))
    if not config.get("NAME"):
        raise ValueError(
            "DATABASE_URL names no database: add one, as in postgres://user:password@host:5432/chatplatform"
        )
    if not config.get("HOST"):
        raise ValueError("DATABASE_URL names no host: add one, as in postgres://user:password@host:5432/chatplatform")
    return config


def parse_redis_url(url: str) -> None:
    """ValueError naming REDIS_URL when it is not a redis://, rediss:// or unix:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"REDIS_URL must start with redis://, rediss:// or unix://, got scheme {parts.scheme or 'none'!r}"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("REDIS_URL unix:// names no socket path, as in unix:///run/redis.sock?db=0")
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ValueError("REDIS_URL names no host, as in redis://redis:6379/0")
        try:
            parts.port  # noqa: B018  # urllib validates the port lazily
        except ValueError as exc:
            raise ValueError(f"REDIS_URL has an invalid port: {exc}") from exc


def celery_broker_url(redis_url: str) -> str:
    """Kombu spells a Redis unix socket redis+socket://; redis-py spells it unix://."""
    parts = urlsplit(redis_url)
    if parts.scheme != "unix":
        return redis_url
    database = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={database}"
