"""The Celery app's reliability settings, and a real task through a real worker."""

from __future__ import annotations

from workers.celery import QUEUES
from workers.celery import app as celery_app
from workers.tasks import echo


def test_reliability_settings() -> None:
    conf = celery_app.conf
    assert conf.task_acks_late
    assert conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit > conf.task_soft_time_limit
    assert {queue.name for queue in conf.task_queues} == set(QUEUES) == {"ingest", "llm", "default"}


def test_routing_sends_domain_tasks_to_their_queues() -> None:
    router = celery_app.amqp.router
    assert router.route({}, "kb.tasks.document_ingest")["queue"].name == "ingest"
    assert router.route({}, "chat.tasks.summary_update")["queue"].name == "llm"
    assert router.route({}, "workers.echo")["queue"].name == "default"
    assert router.route({}, "kb.ingest")["queue"].name == "ingest"
    assert router.route({}, "kb.dispatch")["queue"].name == "default"


def test_a_task_round_trips_through_the_broker_and_a_real_worker(celery_worker_process: str) -> None:
    assert echo.delay("héllo 世界").get(timeout=30) == "héllo 世界"
    replies = celery_app.control.ping(timeout=2) or []
    assert any(celery_worker_process in reply for reply in replies)
