"""Every call to a model provider (chat, streamed chat, embeddings, rerank, and Xinference's
launch, terminate and test) against fake model servers on loopback: a redirect is refused and
not followed, the host is checked again at the call (a name that now resolves to a forbidden
address is refused) and the connection goes to the address the check approved (Host kept), no
upstream error body reaches the caller beyond a short reason, and a provider's new endpoint drops
its stored API key unless a new one comes with it."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from accounts.models import Role
from core import outbound
from models_registry.langchain_models import chat_model_for, embeddings_for, reranker_for
from models_registry.models import ModelRegistration, Provider
from models_registry.providers import client_for
from models_registry.providers.base import ProviderError, ProviderRefused, ProviderUnsafe
from models_registry.services import provider_create, registration_create
from tests.conftest import bearer_client, member_of

pytestmark = pytest.mark.django_db

SECRET = "internal-secret-7f3a"
NAME = "models.test"


@dataclass
class Seen:
    method: str
    path: str
    host: str
    authorization: str


@dataclass
class FakeModelServer:
    """An Xinference/OpenAI-compatible server in a thread. `mode`: "ok" answers, "redirect" sends
    307 to `redirect_to`, "error" answers `error` (status, content type, body)."""

    server: ThreadingHTTPServer
    host: str
    mode: str = "ok"
    redirect_to: str = ""
    error: tuple[int, str, bytes] = (400, "application/json", b"{}")
    seen: list[Seen] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, body: Any) -> None:
        self._send(200, "application/json", json.dumps(body).encode())

    def _handle(self) -> None:
        fake: FakeModelServer = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length)) if length else {}
        authorization = self.headers.get("Authorization", "")
        fake.seen.append(Seen(self.command, self.path, self.headers.get("Host", ""), authorization))
        if fake.mode == "redirect":
            self._send(307, "text/plain", b"moved", {"Location": f"{fake.redirect_to}{self.path}"})
            return
        if fake.mode == "error":
            status, content_type, body = fake.error
            self._send(status, content_type, body)
            return
        path = self.path.split("?", 1)[0]
        if self.command == "GET" and path == "/v1/models":
            self._json({"object": "list", "data": [{"id": "m", "object": "model", "model_type": "LLM"}]})
        elif self.command == "POST" and path == "/v1/models":
            self._json({"model_uid": request.get("model_uid", "m")})
        elif self.command == "DELETE" and path.startswith("/v1/models/"):
            self._json({})
        elif path.startswith("/v1/model_registrations/"):
            self._json([{"model_name": "m", "is_builtin": True}])
        elif path == "/v1/chat/completions":
            self._chat(request)
        elif path == "/v1/embeddings":
            self._embeddings(request)
        elif path == "/v1/rerank":
            ranked = range(len(request["documents"]))
            results = [{"index": index, "relevance_score": 1.0 / (index + 1)} for index in ranked]
            self._json({"results": results})
        else:
            self._send(404, "application/json", b'{"detail": "not found"}')

    def _chat(self, request: dict[str, Any]) -> None:
        base = {"id": "c1", "created": 0, "model": "m"}
        if not request.get("stream"):
            self._json(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
            return
        deltas = [({"role": "assistant", "content": "OK"}, None), ({}, "stop")]
        chunks = [
            {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": end}]}
            for delta, end in deltas
        ]
        body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        self._send(200, "text/event-stream", body.encode())

    def _embeddings(self, request: dict[str, Any]) -> None:
        texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
        vector = [0.5, 0.25, 0.125]
        if request.get("encoding_format") == "base64":
            encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            encoded = vector
        data = [{"object": "embedding", "index": index, "embedding": encoded} for index in range(len(texts))]
        self._json({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    do_GET = do_POST = do_DELETE = _handle


def start_server(host: str = "127.0.0.1", port: int = 0) -> FakeModelServer:
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    fake = FakeModelServer(server, host)
    server.fake = fake  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake


@pytest.fixture
def servers() -> Iterator[Callable[..., FakeModelServer]]:
    started: list[FakeModelServer] = []

    def start(host: str = "127.0.0.1", port: int = 0) -> FakeModelServer:
        started.append(start_server(host, port))
        return started[-1]

    yield start
    for fake in started:
        fake.server.shutdown()
        fake.server.server_close()


@dataclass
class Models:
    provider: Provider
    llm: ModelRegistration
    embedding: ModelRegistration
    rerank: ModelRegistration


def register_models(provider: Provider) -> Models:
    def register(kind: str, **extra: Any) -> ModelRegistration:
        registration_create(provider=provider, kind=kind, name=kind, provider_model_uid=f"m-{kind}", **extra)
        # As callers load them: with the provider, so nothing below queries it again.
        return ModelRegistration.objects.select_related("provider").get(provider=provider, kind=kind)

    return Models(
        provider=provider,
        llm=register("llm", launch_spec={"model_name": "m"}),
        embedding=register("embedding", dimensions=3, launch_spec={"model_name": "m"}),
        rerank=register("rerank", launch_spec={"model_name": "m"}),
    )


def call_chat(models: Models) -> Any:
    return chat_model_for(models.llm).invoke("Hi")


def call_stream(models: Models) -> Any:
    async def consume() -> str:
        return "".join([str(chunk.content) async for chunk in chat_model_for(models.llm).astream("Hi")])

    return asyncio.run(consume())


def call_embeddings(models: Models) -> Any:
    return embeddings_for(models.embedding).embed_query("Hi")


def call_rerank(models: Models) -> Any:
    return reranker_for(models.rerank).rerank("Hi", ["a", "b"])


MODEL_CALLS: dict[str, Callable[[Models], Any]] = {
    "chat": call_chat,
    "stream": call_stream,
    "embeddings": call_embeddings,
    "rerank": call_rerank,
}
LIFECYCLE = ["launch", "terminate", "test"]


def api_lifecycle(models: Models, action: str) -> Any:
    admin = bearer_client(member_of(models.provider.team, Role.ADMIN), models.provider.team)
    return admin.post(f"/api/v1/models/{models.llm.pk}/{action}/")


# --- redirects ------------------------------------------------------------------------------


@pytest.fixture(params=["another-loopback-port", "cloud-metadata"])
def redirecting(request: pytest.FixtureRequest, team, servers) -> tuple[Models, FakeModelServer]:
    """A provider whose server redirects every request: to another server on loopback (which
    records whether anything arrived) or to the cloud metadata address."""
    elsewhere = servers()
    fake = servers()
    fake.mode = "redirect"
    fake.redirect_to = elsewhere.url if request.param == "another-loopback-port" else "http://169.254.169.254"
    provider = provider_create(team=team, name="redirecting", kind="xinference", endpoint=fake.url)
    return register_models(provider), elsewhere


@pytest.mark.parametrize("call", list(MODEL_CALLS))
def test_a_redirect_is_refused_not_followed_for_model_calls(redirecting, call: str) -> None:
    models, elsewhere = redirecting
    with pytest.raises((openai.APIStatusError, ProviderRefused)) as refused:
        MODEL_CALLS[call](models)
    assert "redirected elsewhere (307), which is not followed" in str(refused.value)
    assert "set the endpoint to the address it redirects to" in str(refused.value)
    assert elsewhere.seen == []


@pytest.mark.parametrize("action", LIFECYCLE)
def test_a_redirect_is_refused_not_followed_for_xinference_lifecycle_calls(redirecting, action: str) -> None:
    models, elsewhere = redirecting
    response = api_lifecycle(models, action)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "provider_refused"
    assert "redirected elsewhere (307), which is not followed" in error["message"]
    assert elsewhere.seen == []


# --- DNS answers at the call ----------------------------------------------------------------


@dataclass
class Dns:
    """What `models.test` resolves to, for everything in this process that asks."""

    answer: str = "127.0.0.1"


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch, settings) -> Dns:
    # 127.0.0.1 stands for the public address the provider was saved with; the rest of loopback
    # (127.0.0.2: the "internal" server) is forbidden, as the compose network would be.
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    state = Dns()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real(state.answer if host == NAME else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


@pytest.fixture
def rebinding(team, servers, dns: Dns) -> tuple[Models, FakeModelServer, FakeModelServer]:
    """A provider saved through the API while models.test resolved to the checked server
    (127.0.0.1); an internal server listens on 127.0.0.2 on the same port."""
    checked = servers("127.0.0.1")
    internal = servers("127.0.0.2", checked.port)
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    created = admin.post(
        "/api/v1/providers/",
        {"name": "by-name", "kind": "xinference", "endpoint": f"http://{NAME}:{checked.port}"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    return register_models(Provider.objects.get(pk=created.json()["id"])), checked, internal


@pytest.mark.parametrize("call", [*MODEL_CALLS, *LIFECYCLE])
def test_a_name_that_now_resolves_to_a_forbidden_address_is_refused_at_the_call(rebinding, dns: Dns, call: str) -> None:
    models, checked, internal = rebinding
    dns.answer = "127.0.0.2"  # DNS rebinding, after the endpoint was checked and saved
    if call in LIFECYCLE:
        response = api_lifecycle(models, call)
        assert response.status_code == 400, response.content
        assert response.json()["error"]["code"] == "unsafe_url"
        message = response.json()["error"]["message"]
    else:
        with pytest.raises(ProviderUnsafe) as refused:
            MODEL_CALLS[call](models)
        message = str(refused.value)
    assert f"{NAME} resolves to 127.0.0.2" in message
    assert "OUTBOUND_ALLOWED_NETWORKS" in message
    assert internal.seen == []
    assert checked.seen == []


@pytest.mark.parametrize("call", [*MODEL_CALLS, *LIFECYCLE])
def test_the_call_connects_to_the_address_the_check_approved_with_host_kept(
    rebinding, dns: Dns, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    models, checked, internal = rebinding
    # The guard's lookup approves 127.0.0.1; any second lookup of the name would get 127.0.0.2.
    approved = (ipaddress.ip_address("127.0.0.1"),)
    monkeypatch.setattr(outbound, "_resolve", lambda host, port: approved)
    dns.answer = "127.0.0.2"
    if call in LIFECYCLE:
        response = api_lifecycle(models, call)
        assert response.status_code == 200, response.content
    else:
        assert MODEL_CALLS[call](models)
    assert internal.seen == []
    assert checked.seen
    assert {seen.host for seen in checked.seen} == {f"{NAME}:{checked.port}"}


# --- error bodies ---------------------------------------------------------------------------

JSON_ERROR = {
    "error": {"message": "model m-x is not ready " + "because " * 40 + SECRET, "type": "invalid"},
    "debug": f"token={SECRET}",
}
ERROR_ANSWERS = {
    "json": (422, "application/json", json.dumps(JSON_ERROR).encode()),
    "html": (422, "text/html", f"<html><body><h1>Admin</h1><p>{SECRET}</p></body></html>".encode()),
    "text": (422, "text/plain", f"[address=10.0.0.5:41, pid=7] launch failed at http://10.0.0.5/x\n{SECRET}".encode()),
}


@pytest.fixture(params=list(ERROR_ANSWERS))
def erring(request: pytest.FixtureRequest, team, servers) -> tuple[Models, str]:
    fake = servers()
    fake.mode = "error"
    fake.error = ERROR_ANSWERS[request.param]
    provider = provider_create(team=team, name="erring", kind="xinference", endpoint=fake.url)
    return register_models(provider), request.param


def assert_short(message: str, kind: str) -> None:
    assert SECRET not in message
    assert "10.0.0.5" not in message
    assert len(message) < 300, message
    if kind == "json":
        assert "model m-x is not ready because" in message
    elif kind == "html":
        assert "Unprocessable Entity" in message
    else:
        assert "launch failed at <url>" in message


@pytest.mark.parametrize("call", list(MODEL_CALLS))
def test_upstream_error_bodies_are_not_echoed_by_model_calls(erring, call: str) -> None:
    models, kind = erring
    with pytest.raises((openai.APIStatusError, ProviderError)) as failed:
        MODEL_CALLS[call](models)
    assert_short(str(failed.value), kind)
    assert SECRET not in json.dumps(getattr(failed.value, "body", None))


@pytest.mark.parametrize("action", LIFECYCLE)
def test_upstream_error_bodies_are_not_echoed_by_lifecycle_calls(erring, action: str) -> None:
    models, kind = erring
    response = api_lifecycle(models, action)
    # 422 rather than 400: Xinference's terminate takes 400 and 404 to mean "already gone".
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == "provider_refused"
    assert_short(response.json()["error"]["message"], kind)
    models.llm.refresh_from_db()
    assert SECRET not in models.llm.last_error
    assert all(SECRET not in event.message for event in models.llm.events.all())


# --- a new endpoint drops the stored key ----------------------------------------------------


def test_a_new_endpoint_drops_the_stored_key_unless_a_new_one_is_given(team, servers) -> None:
    first, second = servers(), servers()
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    created = admin.post(
        "/api/v1/providers/",
        {"name": "keyed", "kind": "openai_compatible", "endpoint": first.url, "api_key": "sk-old"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    path = f"/api/v1/providers/{created.json()['id']}/"
    llm = registration_create(
        provider=Provider.objects.get(pk=created.json()["id"]), kind="llm", name="chat", provider_model_uid="m"
    )

    def chat() -> None:
        chat_model_for(ModelRegistration.objects.select_related("provider").get(pk=llm.pk)).invoke("Hi")

    renamed = admin.patch(path, {"name": "renamed"}, format="json")
    assert renamed.status_code == 200
    assert renamed.json()["has_credentials"] is True
    assert admin.post(f"{path}test/").status_code == 200
    chat()
    assert {seen.authorization for seen in first.seen} == {"Bearer sk-old"}

    moved = admin.patch(path, {"endpoint": second.url}, format="json")
    assert moved.status_code == 200
    assert moved.json()["has_credentials"] is False
    assert admin.post(f"{path}test/").status_code == 200
    chat()  # the cached chat model follows the provider's change too
    assert [seen.authorization for seen in second.seen] == ["", "Bearer not-needed"]

    back = admin.patch(path, {"endpoint": first.url, "api_key": "sk-new"}, format="json")
    assert back.json()["has_credentials"] is True
    first.seen.clear()
    assert admin.post(f"{path}test/").status_code == 200
    assert [seen.authorization for seen in first.seen] == ["Bearer sk-new"]
    unchanged = admin.patch(path, {"endpoint": first.url, "name": "again"}, format="json")
    assert unchanged.json()["has_credentials"] is True


def test_the_embedded_providers_endpoint_is_the_operators(team, xinference_venv) -> None:
    from models_registry.services import embedded_models_bootstrap

    embedded_models_bootstrap(team=team, endpoint="http://127.0.0.1:9997", venv_dir=xinference_venv)
    embedded = Provider.objects.get(team=team, is_embedded=True)
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    moved = admin.patch(f"/api/v1/providers/{embedded.pk}/", {"endpoint": "http://127.0.0.1:9998"}, format="json")
    assert moved.status_code == 400
    assert "XINFERENCE_ENDPOINT" in moved.json()["error"]["message"]
    assert Provider.objects.get(pk=embedded.pk).endpoint == "http://127.0.0.1:9997"


def test_only_the_embedded_provider_skips_the_check_at_the_call(team, servers, settings, xinference_venv) -> None:
    fake = servers()
    from models_registry.services import embedded_models_bootstrap

    embedded_models_bootstrap(team=team, endpoint=fake.url, venv_dir=xinference_venv)
    typed = provider_create(team=team, name="typed", kind="xinference", endpoint=fake.url)
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    assert [model.uid for model in client_for(Provider.objects.get(team=team, is_embedded=True)).running_models()]
    with pytest.raises(ProviderUnsafe, match="loopback"):
        client_for(typed).running_models()
    assert len(fake.seen) == 1
