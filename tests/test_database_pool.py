"""The web processes' pooled database connections (settings' DATABASE_POOL_MAX_SIZE): a connection
goes back to the pool before a long wait on a model (core.database), and a request that finds
every connection busy past the pool's wait is a 503 that says to retry, not a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from django.db import connection, transaction

from accounts.models import Role
from core.database import release_pooled_connection
from tests.conftest import bearer_client, member_of


@pytest.fixture
def pooled_connection() -> Iterator[Any]:
    """The default connection borrowing from a pool of one, as a web process's does; the test run's
    own settings have no pool. Put back as it was afterwards."""
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = 0
    connection.settings_dict["OPTIONS"] = {
        **saved.get("OPTIONS", {}),
        "pool": {"min_size": 1, "max_size": 1, "timeout": 1},
    }
    try:
        yield cast(Any, connection).pool  # the PostgreSQL backend's; django-stubs type the base class
    finally:
        connection.close()
        cast(Any, connection).close_pool()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def select(value: int) -> Any:
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s", [value])
        return cursor.fetchone()


@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_goes_back_before_a_wait_and_is_borrowed_again(pooled_connection: Any) -> None:
    assert select(1) == (1,)
    assert pooled_connection.get_stats()["pool_available"] == 0  # this thread holds the only one
    release_pooled_connection()
    assert connection.connection is None
    assert pooled_connection.get_stats()["pool_available"] == 1
    assert select(2) == (2,)  # borrowed again for the answer's save
    assert pooled_connection.get_stats()["pool_available"] == 0
    with transaction.atomic():
        select(3)
        release_pooled_connection()  # a transaction keeps its connection
        assert connection.connection is not None
        assert select(4) == (4,)


@pytest.mark.django_db(transaction=True)
def test_without_a_pool_the_threads_own_connection_is_kept() -> None:
    select(1)
    held = connection.connection
    release_pooled_connection()
    assert connection.connection is held
    assert select(2) == (2,)


@pytest.mark.django_db(transaction=True)
def test_a_request_that_finds_every_connection_busy_is_a_503_that_says_retry(team, pooled_connection: Any) -> None:
    client = bearer_client(member_of(team, Role.MEMBER), team)
    release_pooled_connection()
    # Another request's thread holds the pool's only connection past the pool's one-second wait.
    busy = pooled_connection.getconn()
    try:
        response = client.get("/api/v1/teams/")
    finally:
        pooled_connection.putconn(busy)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "busy"
    assert "retry in a few seconds" in response.json()["error"]["message"]
    connection.close()
    assert client.get("/api/v1/teams/").status_code == 200
