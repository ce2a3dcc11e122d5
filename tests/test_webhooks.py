"""Webhooks against a real HTTP receiver on 127.0.0.1 (loopback allowed for these tests, as
conftest does for the whole run and for the worker): the API and its roles, signatures, retries
and their backoff, failures, redirects under the SSRF guard, events emitted on commit from
documents, conversations and answers, and delivery through a real Celery worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings as django_settings

from accounts.models import Role
from chat.models import Message, MessageStatus
from chat.services import PreparedTurn, assistant_create, conversation_create, turn_finish
from integrations.models import DeliveryStatus, Webhook, WebhookDelivery
from integrations.services import webhook_create, webhook_deliver, webhook_emit, webhook_signature
from kb.ingestion import document_mark_ready, document_retry_later
from kb.models import Document, DocumentStatus
from kb.services import kb_create
from models_registry.services import provider_create, registration_create
from realservices.xinference import free_port
from tests.conftest import bearer_client, member_of

ALL_EVENTS = ["document.ready", "document.failed", "conversation.created", "message.completed"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server in a thread that records every request and answers from `script` (status,
    headers) in order, then 200."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, f"the receiver got {len(self.requests)} of {count} requests"
        return self.requests


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            this = state["receiver"]
            this.requests.append(Received(self.path, {key.lower(): value for key, value in self.headers.items()}, body))
            code, headers = this.script.pop(0) if this.script else (200, {})
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["receiver"]
    finally:
        server.shutdown()
        server.server_close()


def assert_signed(request: Received, secret: str) -> None:
    timestamp = request.headers["x-chatplatform-timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-chatplatform-signature"] == f"sha256={expected}"
    assert abs(int(timestamp) - time.time()) < 60


# --- the API and its roles ----------------------------------------------------------------------


@pytest.mark.django_db
def test_admins_create_webhooks_and_see_the_secret_once(team, receiver: Receiver) -> None:
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    created = admin.post(
        "/api/v1/webhooks/", {"url": f"{receiver.url}/hook", "events": ["document.ready"]}, format="json"
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert body["team"] == team.pk
    assert body["events"] == ["document.ready"]
    assert Webhook.objects.get(pk=body["id"]).secret == body["secret"]
    detail = admin.get(f"/api/v1/webhooks/{body['id']}/")
    assert detail.status_code == 200
    assert "secret" not in detail.json()
    assert body["secret"] not in admin.get("/api/v1/webhooks/").content.decode()
    member = bearer_client(member_of(team, Role.MEMBER), team)
    listed = member.get("/api/v1/webhooks/").json()["results"]
    assert [item["id"] for item in listed] == [body["id"]]
    assert "secret" not in listed[0]

    changed = admin.patch(f"/api/v1/webhooks/{body['id']}/", {"events": ALL_EVENTS, "is_active": False}, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["events"] == sorted(ALL_EVENTS)
    assert changed.json()["is_active"] is False
    assert admin.delete(f"/api/v1/webhooks/{body['id']}/").status_code == 204
    assert not Webhook.objects.filter(pk=body["id"]).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_members_and_viewers_may_look_but_not_change(team, role: Role) -> None:
    webhook = webhook_create(team=team, url="http://127.0.0.1:9/hook", events=["document.ready"])
    client = bearer_client(member_of(team, role), team)
    path = f"/api/v1/webhooks/{webhook.pk}/"
    assert client.get("/api/v1/webhooks/").status_code == 200
    assert client.get(path).status_code == 200
    created = client.post(
        "/api/v1/webhooks/", {"url": "http://127.0.0.1:9/", "events": ["document.ready"]}, format="json"
    )
    assert created.status_code == 403
    assert client.patch(path, {"is_active": False}, format="json").status_code == 403
    assert (
        client.put(path, {"url": "http://127.0.0.1:9/", "events": ["document.ready"]}, format="json").status_code == 403
    )
    assert client.delete(path).status_code == 403
    # Payloads carry conversation content: deliveries and tests are for admins.
    assert client.get(f"{path}deliveries/").status_code == 403
    assert client.post(f"{path}test/").status_code == 403
    webhook.refresh_from_db()
    assert webhook.is_active
    assert Webhook.objects.filter(team=team).count() == 1


@pytest.mark.django_db
def test_another_teams_members_find_nothing(team, other_team, outsider) -> None:
    webhook = webhook_create(team=team, url="http://127.0.0.1:9/hook", events=["document.ready"])
    stranger = bearer_client(outsider, other_team)
    path = f"/api/v1/webhooks/{webhook.pk}/"
    assert stranger.get("/api/v1/webhooks/").json()["results"] == []
    assert stranger.get(path).status_code == 404
    assert stranger.patch(path, {"is_active": False}, format="json").status_code == 404
    assert (
        stranger.put(path, {"url": "http://127.0.0.1:9/", "events": ["document.ready"]}, format="json").status_code
        == 404
    )
    assert stranger.delete(path).status_code == 404
    assert stranger.get(f"{path}deliveries/").status_code == 404
    assert stranger.post(f"{path}test/").status_code == 404
    into_theirs = stranger.post(
        "/api/v1/webhooks/",
        {"team": team.pk, "url": "http://127.0.0.1:9/", "events": ["document.ready"]},
        format="json",
    )
    assert into_theirs.status_code == 404
    webhook.refresh_from_db()
    assert webhook.is_active
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_unsafe_targets_and_unknown_events_are_refused(team, settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    for url in ("http://127.0.0.1:8000/hook", "http://localhost/", "http://169.254.169.254/", "http://10.0.0.1/"):
        refused = admin.post("/api/v1/webhooks/", {"url": url, "events": ["document.ready"]}, format="json")
        assert refused.status_code == 400, url
        assert refused.json()["error"]["code"] == "unsafe_url"
        assert "OUTBOUND_ALLOWED_NETWORKS" in refused.json()["error"]["message"]
    unknown = admin.post("/api/v1/webhooks/", {"url": "http://8.8.8.8/", "events": ["document.gone"]}, format="json")
    assert unknown.status_code == 400
    none = admin.post("/api/v1/webhooks/", {"url": "http://8.8.8.8/", "events": []}, format="json")
    assert none.status_code == 400
    created = admin.post("/api/v1/webhooks/", {"url": "http://8.8.8.8/", "events": ["document.ready"]}, format="json")
    assert created.status_code == 201
    moved = admin.patch(
        f"/api/v1/webhooks/{created.json()['id']}/", {"url": "http://[::ffff:127.0.0.1]/"}, format="json"
    )
    assert moved.status_code == 400
    assert moved.json()["error"]["code"] == "unsafe_url"
    assert Webhook.objects.get(pk=created.json()["id"]).url == "http://8.8.8.8/"


@pytest.mark.django_db
def test_deliveries_are_listed_newest_first_page_by_page(team, django_capture_on_commit_callbacks) -> None:
    webhook = webhook_create(team=team, url="http://127.0.0.1:9/hook", events=["document.ready"])
    with django_capture_on_commit_callbacks(execute=True):
        for n in range(3):
            webhook_emit(team_id=team.pk, event="document.ready", payload={"n": n})
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    first = admin.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/", {"page_size": 2}).json()
    assert [item["payload"]["n"] for item in first["results"]] == [2, 1]
    assert first["results"][0]["status"] == "pending"
    second = admin.get(first["next"]).json()
    assert [item["payload"]["n"] for item in second["results"]] == [0]
    assert admin.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/", {"status": "delivered"}).json()["results"] == []
    assert admin.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/", {"status": "nope"}).status_code == 400


# --- delivering, in this process ----------------------------------------------------------------


@pytest.mark.django_db
def test_a_delivery_is_signed_with_the_secret(team, receiver: Receiver, django_capture_on_commit_callbacks) -> None:
    webhook = webhook_create(team=team, url=f"{receiver.url}/hooks/in?x=1", events=["document.ready"])
    with django_capture_on_commit_callbacks(execute=True):
        webhook_emit(team_id=team.pk, event="document.ready", payload={"document_id": 7, "name": "报告.pdf"})
    delivery = WebhookDelivery.objects.get(webhook=webhook)
    assert webhook_deliver(delivery_id=delivery.pk) is None
    [request] = receiver.wait_for(1)
    assert request.path == "/hooks/in?x=1"
    assert request.headers["x-chatplatform-event"] == "document.ready"
    assert request.headers["x-chatplatform-delivery"] == str(delivery.pk)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{receiver.server.server_address[1]}"
    assert_signed(request, webhook.secret)
    assert (
        webhook_signature(
            secret=webhook.secret, timestamp=request.headers["x-chatplatform-timestamp"], body=request.body
        )
        == request.headers["x-chatplatform-signature"]
    )
    body = json.loads(request.body)
    assert body["event"] == "document.ready"
    assert body["id"] == delivery.pk
    assert body["team_id"] == team.pk
    assert body["data"] == {"document_id": 7, "name": "报告.pdf"}
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (DeliveryStatus.DELIVERED, 1, 200)
    assert delivery.delivered_at is not None
    # Delivered once: a duplicate message does nothing.
    assert webhook_deliver(delivery_id=delivery.pk) is None
    assert len(receiver.requests) == 1
    # A wrong secret does not verify.
    assert webhook_signature(secret="whsec_other", timestamp=1, body=request.body) != webhook_signature(
        secret=webhook.secret, timestamp=1, body=request.body
    )


@pytest.mark.django_db
def test_a_500_is_retried_with_backoff_then_delivered(team, receiver: Receiver, settings) -> None:
    settings.WEBHOOK_RETRY_BASE_S = 0
    webhook = webhook_create(team=team, url=receiver.url, events=["document.ready"])
    delivery = WebhookDelivery.objects.create(webhook=webhook, event="document.ready", payload={})
    receiver.script = [(500, {})]
    assert webhook_deliver(delivery_id=delivery.pk) == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (DeliveryStatus.PENDING, 1, 500)
    assert "answered 500" in delivery.last_error
    assert webhook_deliver(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (DeliveryStatus.DELIVERED, 2, 200)
    assert delivery.last_error == ""
    first, second = receiver.requests
    assert first.headers["x-chatplatform-delivery"] == second.headers["x-chatplatform-delivery"]
    assert first.body == second.body
    assert_signed(second, webhook.secret)


@pytest.mark.django_db
def test_backoff_doubles_honours_retry_after_and_holds_the_delivery(team, receiver: Receiver, settings) -> None:
    settings.WEBHOOK_RETRY_BASE_S = 2
    webhook = webhook_create(team=team, url=receiver.url, events=["document.ready"])
    delivery = WebhookDelivery.objects.create(webhook=webhook, event="document.ready", payload={})
    receiver.script = [(429, {"Retry-After": "7"})]
    assert webhook_deliver(delivery_id=delivery.pk) == 7
    # Until the backoff ends a second message (a duplicate, or an early one) sends nothing.
    assert webhook_deliver(delivery_id=delivery.pk) is None
    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (DeliveryStatus.PENDING, 1, 429)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=None)
    receiver.script = [(503, {})]
    assert webhook_deliver(delivery_id=delivery.pk) == 4  # 2 s doubled on the second attempt


@pytest.mark.django_db
def test_a_404_fails_at_once_without_retries(team, receiver: Receiver, settings) -> None:
    settings.WEBHOOK_RETRY_BASE_S = 0
    webhook = webhook_create(team=team, url=receiver.url, events=["document.ready"])
    delivery = WebhookDelivery.objects.create(webhook=webhook, event="document.ready", payload={})
    receiver.script = [(404, {})]
    assert webhook_deliver(delivery_id=delivery.pk) is None
    assert webhook_deliver(delivery_id=delivery.pk) is None
    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (DeliveryStatus.FAILED, 1, 404)
    assert "not retried" in delivery.last_error


@pytest.mark.django_db
def test_network_errors_are_retried_until_the_attempts_run_out(team, settings) -> None:
    settings.WEBHOOK_RETRY_BASE_S = 0
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    webhook = webhook_create(team=team, url=f"http://127.0.0.1:{free_port()}/", events=["document.ready"])
    delivery = WebhookDelivery.objects.create(webhook=webhook, event="document.ready", payload={})
    assert webhook_deliver(delivery_id=delivery.pk) == 0
    assert webhook_deliver(delivery_id=delivery.pk) == 0
    assert webhook_deliver(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (DeliveryStatus.FAILED, 3, None)
    assert "ConnectError" in delivery.last_error
    assert "gave up after 3 attempts" in delivery.last_error


@pytest.mark.django_db
def test_the_target_is_checked_again_at_delivery_time(team, receiver: Receiver, settings) -> None:
    webhook = webhook_create(team=team, url=receiver.url, events=["document.ready"])
    delivery = WebhookDelivery.objects.create(webhook=webhook, event="document.ready", payload={})
    settings.OUTBOUND_ALLOWED_NETWORKS = []  # the operator closed loopback since (or DNS changed)
    assert webhook_deliver(delivery_id=delivery.pk) is None
    assert receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert "loopback" in delivery.last_error


@pytest.mark.django_db
def test_redirects_are_followed_by_hand_only_to_safe_places(team, receiver: Receiver, settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    webhook = webhook_create(team=team, url=f"{receiver.url}/old", events=["document.ready"])

    def attempt() -> WebhookDelivery:
        delivery = WebhookDelivery.objects.create(webhook=webhook, event="document.ready", payload={})
        webhook_deliver(delivery_id=delivery.pk)
        delivery.refresh_from_db()
        return delivery

    receiver.script = [(307, {"Location": "/new"})]
    followed = attempt()
    assert followed.status == DeliveryStatus.DELIVERED
    assert [request.path for request in receiver.requests] == ["/old", "/new"]
    assert receiver.requests[0].body == receiver.requests[1].body
    assert_signed(receiver.requests[1], webhook.secret)

    for private in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://127.0.0.2:1/"):
        receiver.requests.clear()
        receiver.script = [(308, {"Location": private})]
        refused = attempt()
        assert refused.status == DeliveryStatus.FAILED, private
        assert "OUTBOUND_ALLOWED_NETWORKS" in refused.last_error
        assert len(receiver.requests) == 1

    receiver.requests.clear()
    receiver.script = [(307, {"Location": f"/hop{n}"}) for n in range(4)]
    too_many = attempt()
    assert too_many.status == DeliveryStatus.FAILED
    assert "more than 3" in too_many.last_error
    assert len(receiver.requests) == 4

    receiver.script = [(301, {"Location": "https://example.com/moved"})]
    moved = attempt()
    assert moved.status == DeliveryStatus.FAILED
    assert moved.response_status == 301
    assert "https://example.com/moved" in moved.last_error


# --- events ----------------------------------------------------------------------------------------


@pytest.fixture
def subscribers(team, other_team):
    """Every event; document.ready only; an inactive one; another team's."""
    everything = webhook_create(team=team, url="http://127.0.0.1:9/all", events=ALL_EVENTS)
    ready_only = webhook_create(team=team, url="http://127.0.0.1:9/ready", events=["document.ready"])
    inactive = webhook_create(team=team, url="http://127.0.0.1:9/off", events=ALL_EVENTS)
    inactive.is_active = False
    inactive.save()
    theirs = webhook_create(team=other_team, url="http://127.0.0.1:9/theirs", events=ALL_EVENTS)
    return everything, ready_only, inactive, theirs


def events_of(webhook: Webhook) -> list[tuple[str, dict]]:
    return [(delivery.event, delivery.payload) for delivery in webhook.deliveries.order_by("pk")]


@pytest.mark.django_db
def test_document_status_changes_emit_ready_and_failed(team, subscribers, django_capture_on_commit_callbacks) -> None:
    everything, ready_only, inactive, theirs = subscribers
    provider = provider_create(team=team, name="xi", kind="xinference", endpoint="http://127.0.0.1:9")
    model = registration_create(
        provider=provider, kind="embedding", name="MiniLM", provider_model_uid="m", dimensions=384
    )
    kb = kb_create(team=team, name="kb", embedding_model=model)

    def document(name: str) -> Document:
        return Document.objects.create(
            knowledge_base=kb,
            team=team,
            original_name=name,
            file=f"documents/{name}",
            sha256=name * 64,
            size_bytes=1,
            content_type="text/plain",
            status=DocumentStatus.EMBEDDING,
            dispatch_token=uuid.uuid4(),
            attempts=django_settings.KB_INGEST_MAX_ATTEMPTS,
        )

    good, bad, stale = document("a"), document("b"), document("c")
    with django_capture_on_commit_callbacks(execute=True):
        assert document_mark_ready(document=good, generation=1, chunk_count=5, timings={})
        assert not document_retry_later(document=bad, reason="the model refused")
        stale.dispatch_token = uuid.uuid4()  # another worker holds it now: nothing changes, nothing is sent
        assert not document_mark_ready(document=stale, generation=1, chunk_count=5, timings={})
    good.refresh_from_db()
    bad.refresh_from_db()
    assert (good.status, bad.status) == (DocumentStatus.READY, DocumentStatus.FAILED)
    ready = {
        "document_id": good.pk,
        "knowledge_base_id": kb.pk,
        "name": "a",
        "status": "ready",
        "chunk_count": 5,
        "error": "",
    }
    failed_event, failed_payload = events_of(everything)[1]
    assert events_of(everything)[0] == ("document.ready", ready)
    assert failed_event == "document.failed"
    assert failed_payload["document_id"] == bad.pk
    assert "the model refused" in failed_payload["error"]
    assert events_of(ready_only) == [("document.ready", ready)]
    assert events_of(inactive) == events_of(theirs) == []


@pytest.mark.django_db
def test_conversations_and_completed_answers_emit_after_commit(
    team, subscribers, django_capture_on_commit_callbacks
) -> None:
    everything, ready_only, _inactive, theirs = subscribers
    owner = member_of(team)
    provider = provider_create(team=team, name="xi", kind="xinference", endpoint="http://127.0.0.1:9")
    llm = registration_create(provider=provider, kind="llm", name="SmolLM2", provider_model_uid="smol")
    assistant = assistant_create(team=team, name="Helper", llm=llm)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        conversation = conversation_create(team=team, owner=owner, assistant=assistant)
        assert not WebhookDelivery.objects.exists()  # nothing before the commit
    for callback in callbacks:
        callback()
    assert events_of(everything) == [
        (
            "conversation.created",
            {"conversation_id": conversation.pk, "assistant_id": assistant.pk, "owner_id": owner.pk, "is_room": False},
        ),
    ]

    conversation.title = "Titled"  # so finishing the turn queues no title task
    conversation.save()
    sources = [{"index": 1, "document_name": "a.txt", "chunk_id": 1}, {"index": 2, "document_name": "b.txt"}]
    for status in (MessageStatus.COMPLETE, MessageStatus.STOPPED, MessageStatus.FAILED):
        answer = Message.objects.create(conversation=conversation, role=Message.Role.ASSISTANT, model_name="SmolLM2")
        turn = PreparedTurn(
            conversation_id=conversation.pk,
            team_id=team.pk,
            user_id=owner.pk,
            assistant_message_id=answer.pk,
            question_message_id=answer.pk,
            llm=llm,
            prompt=[],
            sources=sources,
            max_tokens=16,
            canned_answer="canned",
        )
        with django_capture_on_commit_callbacks(execute=True):
            turn_finish(turn=turn, content=f"{status}: see [2]", status=status)
    completed = [payload for event, payload in events_of(everything) if event == "message.completed"]
    assert len(completed) == 1  # stopped and failed answers are not completed ones
    assert completed[0]["content"] == "complete: see [2]"
    assert completed[0]["conversation_id"] == conversation.pk
    assert [source["index"] for source in completed[0]["citations"]] == [2]
    assert events_of(ready_only) == events_of(theirs) == []


@pytest.mark.django_db
def test_a_failing_webhook_never_breaks_the_caller(team, django_capture_on_commit_callbacks, caplog) -> None:
    webhook_create(team=team, url="http://127.0.0.1:9/", events=["document.ready"])
    with caplog.at_level(logging.ERROR), django_capture_on_commit_callbacks(execute=True):
        webhook_emit(team_id=team.pk, event="document.ready", payload={"not json": object()})
    assert "could not queue the document.ready webhooks" in caplog.text
    assert not WebhookDelivery.objects.exists()


# --- through a real worker ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_delivery_through_a_real_worker_retries_a_500_then_delivers(
    team, receiver: Receiver, celery_worker_process: str
) -> None:
    """The worker process has loopback allowed and a 0.5 s backoff (conftest passes both in its
    environment); this process emits after commit exactly as the platform does."""
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    created = admin.post("/api/v1/webhooks/", {"url": f"{receiver.url}/in", "events": ALL_EVENTS}, format="json")
    assert created.status_code == 201, created.json()
    secret = created.json()["secret"]
    webhook = Webhook.objects.get(pk=created.json()["id"])
    receiver.script = [(500, {})]
    webhook_emit(team_id=team.pk, event="document.ready", payload={"document_id": 1})
    first, second = receiver.wait_for(2)
    assert first.headers["x-chatplatform-delivery"] == second.headers["x-chatplatform-delivery"]
    assert_signed(second, secret)
    assert json.loads(second.body)["data"] == {"document_id": 1}
    delivery = WebhookDelivery.objects.get(webhook=webhook)
    deadline = time.monotonic() + 10
    while delivery.status == DeliveryStatus.PENDING and time.monotonic() < deadline:
        time.sleep(0.1)
        delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == (DeliveryStatus.DELIVERED, 2, 200)

    pinged = admin.post(f"/api/v1/webhooks/{webhook.pk}/test/")
    assert pinged.status_code == 202
    assert pinged.json()["event"] == "ping"
    ping = receiver.wait_for(3)[2]
    assert ping.headers["x-chatplatform-event"] == "ping"
    assert_signed(ping, secret)
    deadline = time.monotonic() + 10
    listed: list[dict] = []
    while time.monotonic() < deadline:
        listed = admin.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/").json()["results"]
        if all(item["status"] == "delivered" for item in listed):
            break
        time.sleep(0.1)
    assert [(item["event"], item["status"]) for item in listed] == [
        ("ping", "delivered"),
        ("document.ready", "delivered"),
    ]
