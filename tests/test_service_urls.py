import pytest

from runtime.service_urls import celery_broker_url, parse_database_url, parse_redis_url


def test_socket_directory_in_database_url_is_decoded() -> None:
    config = parse_database_url("postgres://postgres@%2Fvar%2Frun%2Fpg/chatplatform")
    assert config["HOST"] == "/var/run/pg"
    assert config["NAME"] == "chatplatform"


def test_tcp_database_url() -> None:
    config = parse_database_url("postgres://app:secret@db:5433/chat")
    assert (config["HOST"], config["PORT"], config["USER"], config["PASSWORD"]) == ("db", 5433, "app", "secret")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "must start with postgres://"),
        ("not a url", "must start with postgres://"),
        ("postgres://u@host/", "names no database"),
        ("postgres:///db", "names no host"),
    ],
)
def test_malformed_database_url_names_the_variable(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        parse_database_url(url)
    assert "DATABASE_URL" in str(error.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://redis:6379", "must start with redis://"),
        ("redis://", "names no host"),
        ("redis://host:99999/0", "invalid port"),
        ("unix://", "names no socket path"),
    ],
)
def test_malformed_redis_url_names_the_variable(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        parse_redis_url(url)
    assert "REDIS_URL" in str(error.value)


def test_celery_gets_kombus_spelling_of_a_unix_socket() -> None:
    assert celery_broker_url("unix:///run/redis.sock?db=3") == "redis+socket:///run/redis.sock?virtual_host=3"
    assert celery_broker_url("redis://redis:6379/1") == "redis://redis:6379/1"
