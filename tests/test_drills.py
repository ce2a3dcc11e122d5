"""The failure drills of issue 8 in a bounded form (`make drills` runs them at full size): during an
ingestion, a worker SIGKILLed, Redis restarted, Xinference stopped, PostgreSQL restarted. After
each, every document is ready (or failed with a reason), no chunk is duplicated, every chat message
answered 201 is still there, chat answered a 503 saying what to do while the model was down, and
it answers again without anything being restarted by hand.

The drills themselves are in tests/drills.py; here this process stands in for the web (requests
in process) and for beat (dispatch and reconcile ticks), and the session's worker, Xinference,
PostgreSQL and Redis are the ones that fail. Each drill leaves them running again for later tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from kombu.exceptions import OperationalError as BrokerUnavailable
from rest_framework.test import APIClient

from kb.tasks import dispatch
from models_registry.tasks import reconcile
from realservices.workers import WorkerProcess, wait_for_worker
from realservices.xinference import XinferenceServer
from runtime import embedded
from tests import drills
from tests.conftest import WORKER_LEASE_S

pytestmark = pytest.mark.django_db(transaction=True)
DOCUMENTS = 24  # the full drill: 200
OUTAGE_S = 10.0  # Xinference down; the full drill: 60
DOWN_S = 3.0  # Redis, PostgreSQL down


class BeatStandIn:
    """What beat does in production, at a brisker pace: hand out documents (the sweep of expired
    leases included) and reconcile the models (relaunching those kept running that are gone)."""

    def __init__(self) -> None:
        self.dispatched = self.reconciled = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        try:
            if now - self.dispatched >= 2:
                self.dispatched = now
                dispatch.delay()
            if now - self.reconciled >= 5:
                self.reconciled = now
                reconcile.delay()
        except BrokerUnavailable:
            pass  # as beat does: this tick is lost, the next one goes out


def api_chat(scene: drills.Scene, content: str) -> drills.ChatReply:
    client = APIClient()
    client.raise_request_exception = False  # a 500 is an answer the drill records, not a crash of the test
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {scene.api_key}")
    started = time.monotonic()
    response = client.post(
        f"/api/v1/conversations/{scene.conversation_id}/messages/", {"content": content}, format="json"
    )
    return drills.ChatReply.of(
        response.status_code, response.get("Content-Type", ""), response.content.decode(), time.monotonic() - started
    )


@pytest.fixture
def stack(xinference: XinferenceServer, celery_worker: WorkerProcess) -> Iterator[drills.Stack]:
    yield drills.Stack(
        var_dir=settings.VAR_DIR,
        xinference=xinference,
        kill_worker=celery_worker.kill,
        start_worker=celery_worker.start,
        chat=api_chat,
        lease_s=WORKER_LEASE_S,
        tick=BeatStandIn(),
    )
    # Whatever a drill did, or failed halfway through doing, the later tests of this process
    # get every service back instead of each waiting out its own timeout against a dead one.
    embedded.embedded_redis(settings.VAR_DIR).restart_if_down()
    embedded.embedded_postgres(settings.VAR_DIR).restart_if_down()
    if celery_worker.process is None or celery_worker.process.poll() is not None:
        celery_worker.start()
    if xinference.process is None:
        xinference.start()
    xinference.launch_default_models()
    # This process's broker connections may predate a Redis restart: the first broadcast on each
    # fails on its dead socket, and redis-py reconnects it for the next. Ping until the worker
    # answers, so no later test's own ping is the one that fails.
    wait_for_worker(timeout=60)


@pytest.fixture
def scene_for(stack: drills.Stack, team, member):
    def create(name: str) -> drills.Scene:
        llm, embedding = drills.models_launch(team, stack.xinference.endpoint)
        return drills.scene_create(team=team, user=member, llm=llm, embedding=embedding, name=name)

    return create


def checked(result: drills.DrillResult) -> drills.DrillResult:
    print(drills.render([result], f"## drill {result.name} (bounded)"))
    assert result.problems() == []
    # Valid documents and faults far shorter than the retry budget (about five minutes): all ready.
    assert result.failed == {}
    assert result.ready == DOCUMENTS + 1
    assert result.acknowledged >= 2  # one answer before the fault, one after
    return result


def test_a_worker_sigkilled_mid_ingestion(stack: drills.Stack, scene_for) -> None:
    result = checked(drills.drill_worker_kill(stack, scene_for("worker"), documents=DOCUMENTS))
    assert result.recovery.chat_s is not None


def test_redis_restarted_mid_ingestion(stack: drills.Stack, scene_for) -> None:
    checked(drills.drill_redis_restart(stack, scene_for("redis"), documents=DOCUMENTS, down_s=DOWN_S))


def test_xinference_stopped_mid_ingestion_chat_is_503_then_recovers_by_itself(stack: drills.Stack, scene_for) -> None:
    result = checked(
        drills.drill_xinference_outage(stack, scene_for("xinference"), documents=DOCUMENTS, outage_s=OUTAGE_S)
    )
    assert result.replies_while_down
    for reply in result.replies_while_down:
        assert reply.status == 503, reply.describe()
        assert "try again" in reply.message, reply.message


def test_postgres_restarted_mid_ingestion(stack: drills.Stack, scene_for) -> None:
    checked(drills.drill_postgres_restart(stack, scene_for("postgres"), documents=DOCUMENTS, down_s=DOWN_S))
