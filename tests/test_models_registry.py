"""The model registry against a real Xinference serving the offline models: register, launch,
chat, embed, rerank, terminate, refuse, unreachable, credentials, the API, and healing after
Xinference is killed and restarted (through a real Celery worker)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client, override_settings

from accounts.models import Role
from models_registry import embedded_xinference
from models_registry.credentials import credentials_decrypt
from models_registry.langchain_models import chat_model_for, embeddings_for, reranker_for
from models_registry.models import ModelEvent, ModelRegistration, ModelStatus, Provider, ProviderKind, TeamModelDefaults
from models_registry.providers.base import ProviderRefused, ProviderUnreachable, ProviderUnsupported
from models_registry.providers.xinference import launch_payload
from models_registry.services import (
    embedded_models_bootstrap,
    provider_create,
    registration_create,
    registration_launch,
    registration_terminate,
    registration_test,
)
from models_registry.tasks import reconcile
from realservices.offline_models import register_offline_embedding, register_offline_llm
from realservices.xinference import TINY_RERANKER_UID, XinferenceServer, build_tiny_reranker, free_port
from tests.conftest import bearer_client, member_of
from tests.factories import UserFactory

# SmolLM2 on CPU may write thousands of tokens when nothing bounds it (one unbounded "Hello" took
# 23 minutes of a parallel run): a test that needs some answer asks for a few tokens.
ANSWER_TOKENS = 16

pytestmark = pytest.mark.django_db


def xinference_provider(team, endpoint: str) -> Provider:
    return provider_create(team=team, name="Xinference", kind=ProviderKind.XINFERENCE, endpoint=endpoint)


def register_llm(provider: Provider) -> ModelRegistration:
    return register_offline_llm(provider, context_length=embedded_xinference.LLM_CONTEXT_LENGTH)


def test_families_list_builtin_and_our_custom_models(xinference: XinferenceServer) -> None:
    families = xinference.client.families("llm")
    builtin = {family["model_name"] for family in families if family.get("is_builtin")}
    custom = {family["model_name"] for family in families if not family.get("is_builtin")}
    assert "qwen2.5-instruct" in builtin
    assert embedded_xinference.LLM_UID in custom


def test_launch_chat_embed_terminate_and_launch_again(team, xinference: XinferenceServer) -> None:
    provider = xinference_provider(team, xinference.endpoint)
    llm = registration_launch(registration=register_llm(provider))
    embedding = registration_launch(registration=register_offline_embedding(provider))
    assert (llm.status, embedding.status) == (ModelStatus.RUNNING, ModelStatus.RUNNING)

    answer = chat_model_for(llm).invoke("What is the capital of France?", max_tokens=ANSWER_TOKENS)
    assert isinstance(answer.content, str)
    assert answer.content.strip()
    vectors = embeddings_for(embedding).embed_documents(["a cat sat on the mat", "pgvector stores vectors"])
    assert [len(vector) for vector in vectors] == [384, 384]
    assert vectors[0] != vectors[1]

    stopped = registration_terminate(registration=embedding)
    assert stopped.status == ModelStatus.STOPPED
    assert stopped.keep_running is False
    assert embedded_xinference.EMBEDDING_UID not in {model.uid for model in xinference.client.running_models()}

    relaunched = registration_launch(registration=embedding)
    assert relaunched.status == ModelStatus.RUNNING
    assert relaunched.keep_running is True
    assert embedded_xinference.EMBEDDING_UID in {model.uid for model in xinference.client.running_models()}
    kinds = list(embedding.events.order_by("created_at").values_list("kind", flat=True))
    assert kinds == [ModelEvent.Kind.LAUNCHED, ModelEvent.Kind.TERMINATED, ModelEvent.Kind.LAUNCHED]


def test_a_refused_launch_keeps_xinferences_message_and_backs_off(team, xinference: XinferenceServer) -> None:
    provider = xinference_provider(team, xinference.endpoint)
    registration = registration_create(
        provider=provider,
        kind="llm",
        name="Missing",
        provider_model_uid="missing-model",
        launch_spec={"model_name": "no-such-model-family", "model_engine": "llama.cpp", "model_format": "ggufv2"},
    )
    with pytest.raises(ProviderRefused) as refused:
        registration_launch(registration=registration)
    registration.refresh_from_db()
    assert registration.status == ModelStatus.FAILED
    assert refused.value.server_message
    assert refused.value.server_message in registration.last_error
    assert registration.next_attempt_at is not None
    assert registration.events.get().kind == ModelEvent.Kind.FAILED


def test_an_unreachable_provider_is_named_and_marked(team) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    registration = register_llm(xinference_provider(team, endpoint))
    with pytest.raises(ProviderUnreachable, match=endpoint):
        registration_launch(registration=registration)
    registration.refresh_from_db()
    assert registration.status == ModelStatus.UNREACHABLE


def test_the_openai_compatible_provider_lists_chats_and_embeds_but_cannot_launch(
    team, xinference: XinferenceServer
) -> None:
    # Xinference's own /v1 is a real OpenAI-compatible server.
    provider = provider_create(
        team=team, name="vLLM-like", kind=ProviderKind.OPENAI_COMPATIBLE, endpoint=xinference.endpoint
    )
    llm = registration_create(
        provider=provider, kind="llm", name="chat", provider_model_uid=embedded_xinference.LLM_UID
    )
    embedding = registration_create(
        provider=provider,
        kind="embedding",
        name="emb",
        provider_model_uid=embedded_xinference.EMBEDDING_UID,
        dimensions=384,
    )
    assert llm.keep_running is False
    assert registration_test(registration=llm).detail.startswith("answered")
    assert "384-dimensional" in registration_test(registration=embedding).detail
    assert len(embeddings_for(embedding).embed_query("hello")) == 384
    assert chat_model_for(llm).invoke("Hello", max_tokens=ANSWER_TOKENS).content
    with pytest.raises(ProviderUnsupported, match="serves the models it was started with"):
        registration_launch(registration=llm)


def test_rerank_path_with_a_tiny_reranker(team, xinference: XinferenceServer, tmp_path: Path) -> None:
    spec, launch = build_tiny_reranker(tmp_path / "tiny-reranker")
    provider = xinference_provider(team, xinference.endpoint)
    registration = registration_create(
        provider=provider,
        kind="rerank",
        name="tiny",
        provider_model_uid=TINY_RERANKER_UID,
        launch_spec=launch,
        custom_spec=spec,
    )
    try:
        registration_launch(registration=registration)
        from langchain_core.documents import Document

        documents = [Document(page_content=text, metadata={"n": n}) for n, text in enumerate(["cats", "dogs", "fish"])]
        reranked = reranker_for(registration).compress_documents(documents, "pets")
        # The tiny model's scores mean nothing: assert the shape and wiring, not the order.
        assert sorted(document.metadata["n"] for document in reranked) == [0, 1, 2]
        assert all(isinstance(document.metadata["relevance_score"], float) for document in reranked)
        assert registration_test(registration=registration).detail == "ranked 2 documents"
    finally:
        registration_terminate(registration=registration)


def test_langchain_objects_are_built_once_and_rebuilt_after_an_edit(team, xinference: XinferenceServer) -> None:
    llm = register_llm(xinference_provider(team, xinference.endpoint))
    first = chat_model_for(llm)
    assert chat_model_for(ModelRegistration.objects.get(pk=llm.pk)) is first
    llm.context_length = 4096
    llm.save()
    assert chat_model_for(llm) is not first
    with pytest.raises(ValueError, match="not embedding"):
        embeddings_for(llm)


def test_lora_adapters_become_xinferences_peft_config() -> None:
    payload = launch_payload(
        uid="qwen-lora",
        kind="llm",
        launch_spec={
            "model_name": "qwen2.5-instruct",
            "model_engine": "vllm",
            "n_gpu": 1,
            "replica": 2,
            "download_hub": "modelscope",
            "lora_adapters": [{"name": "sql", "path": "/models/swift/output/checkpoint-100"}],
        },
    )
    assert payload["peft_model_config"] == {
        "lora_list": [{"lora_name": "sql", "local_path": "/models/swift/output/checkpoint-100"}]
    }
    assert "lora_adapters" not in payload
    assert (payload["model_uid"], payload["model_type"], payload["download_hub"]) == ("qwen-lora", "LLM", "modelscope")


def test_credentials_are_encrypted_at_rest_and_never_shown(team) -> None:
    admin = member_of(team, Role.ADMIN)
    provider = provider_create(
        team=team, name="vllm", kind=ProviderKind.OPENAI_COMPATIBLE, endpoint="http://vllm:8000", api_key="sk-TOPSECRET"
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials_encrypted FROM models_registry_provider WHERE id = %s", [provider.pk])
        (stored,) = cursor.fetchone()
    assert "TOPSECRET" not in stored
    assert credentials_decrypt(stored) == "sk-TOPSECRET"
    body = bearer_client(admin, team).get(f"/api/v1/providers/{provider.pk}/").content.decode()
    assert "TOPSECRET" not in body
    assert '"has_credentials":true' in body
    superuser_client = Client()
    superuser_client.force_login(
        member_of(team, Role.OWNER).__class__.objects.create_superuser("root", "", "pw-1234-x")
    )
    page = superuser_client.get(f"/admin/models_registry/provider/{provider.pk}/change/").content.decode()
    assert "TOPSECRET" not in page
    assert stored not in page


def test_embedded_bootstrap_registers_both_models_as_team_defaults_once(team, xinference_venv) -> None:
    first = embedded_models_bootstrap(team=team, endpoint="http://127.0.0.1:9997", venv_dir=xinference_venv)
    second = embedded_models_bootstrap(team=team, endpoint="http://127.0.0.1:9998", venv_dir=xinference_venv)
    assert [registration.pk for registration in first] == [registration.pk for registration in second]
    defaults = TeamModelDefaults.objects.get(team=team)
    assert defaults.llm is not None
    assert defaults.embedding is not None
    assert (defaults.llm.provider_model_uid, defaults.embedding.dimensions) == (embedded_xinference.LLM_UID, 384)
    assert Provider.objects.get(team=team, is_embedded=True).endpoint == "http://127.0.0.1:9998"


# --- the API --------------------------------------------------------------------------------


def test_members_read_admins_launch_and_other_teams_see_nothing(
    team, other_team, outsider, xinference: XinferenceServer
) -> None:
    provider = xinference_provider(team, xinference.endpoint)
    embedding = register_offline_embedding(provider)
    member = bearer_client(member_of(team, Role.MEMBER), team)
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    stranger = bearer_client(outsider, other_team)

    listed = member.get("/api/v1/models/").json()["results"]
    assert [item["id"] for item in listed] == [embedding.pk]
    assert member.post(f"/api/v1/models/{embedding.pk}/launch/").status_code == 403
    launched = admin.post(f"/api/v1/models/{embedding.pk}/launch/")
    assert launched.status_code == 200
    assert launched.json()["status"] == "running"
    tested = admin.post(f"/api/v1/models/{embedding.pk}/test/")
    assert tested.status_code == 200
    assert tested.json()["ok"] is True

    assert stranger.get("/api/v1/models/").json()["results"] == []
    for method, path in [
        ("get", f"/api/v1/models/{embedding.pk}/"),
        ("post", f"/api/v1/models/{embedding.pk}/launch/"),
        ("post", f"/api/v1/models/{embedding.pk}/terminate/"),
        ("post", f"/api/v1/models/{embedding.pk}/test/"),
        ("delete", f"/api/v1/models/{embedding.pk}/"),
        ("get", f"/api/v1/providers/{provider.pk}/"),
        ("post", f"/api/v1/providers/{provider.pk}/test/"),
    ]:
        assert getattr(stranger, method)(path).status_code == 404, path
    taken = stranger.post(
        "/api/v1/models/",
        {"provider": provider.pk, "kind": "llm", "name": "x", "provider_model_uid": "x"},
        format="json",
    )
    assert taken.status_code == 400
    assert "provider" in taken.json()["error"]["details"]


def test_admin_creates_provider_and_registration_through_the_api(team, xinference: XinferenceServer) -> None:
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    created = admin.post(
        "/api/v1/providers/",
        {"name": "gpu-box", "kind": "xinference", "endpoint": xinference.endpoint, "api_key": "secret-key-1"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert "api_key" not in created.json()
    assert created.json()["has_credentials"] is True
    families = admin.get(f"/api/v1/providers/{created.json()['id']}/families/", {"model_kind": "llm"})
    assert families.status_code == 200, families.json()
    assert {"model_name": "qwen2.5-instruct", "is_builtin": True} in families.json()
    models = admin.post(f"/api/v1/providers/{created.json()['id']}/test/")
    assert models.status_code == 200
    assert embedded_xinference.LLM_UID in {item["uid"] for item in models.json()}
    registration = admin.post(
        "/api/v1/models/",
        {"provider": created.json()["id"], "kind": "embedding", "name": "e", "provider_model_uid": "all-minilm-l6-v2"},
        format="json",
    )
    assert registration.status_code == 400
    assert "dimensions" in registration.json()["error"]["message"]


def test_api_answers_503_naming_an_unreachable_endpoint_and_400_with_a_refusal(
    team, xinference: XinferenceServer
) -> None:
    admin = bearer_client(member_of(team, Role.ADMIN), team)
    endpoint = f"http://127.0.0.1:{free_port()}"
    unreachable = register_llm(xinference_provider(team, endpoint))
    response = admin.post(f"/api/v1/models/{unreachable.pk}/launch/")
    assert response.status_code == 503
    assert endpoint in response.json()["error"]["message"]
    refused = registration_create(
        provider=provider_create(team=team, name="real", kind="xinference", endpoint=xinference.endpoint),
        kind="llm",
        name="bad",
        provider_model_uid="bad",
        launch_spec={"model_name": "no-such-family"},
    )
    response = admin.post(f"/api/v1/models/{refused.pk}/launch/")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "provider_refused"


def test_healthz_reports_the_models_kept_running(
    team, xinference: XinferenceServer, celery_worker_process: str
) -> None:
    provider = xinference_provider(team, xinference.endpoint)
    register_llm(provider)
    staff = Client()  # model uids are details: anonymous callers get each component's status only
    staff.force_login(UserFactory.create(is_staff=True))
    with override_settings(XINFERENCE_ENDPOINT=xinference.endpoint):
        body = staff.get("/healthz").json()
        assert body["components"]["xinference"]["models"][embedded_xinference.LLM_UID] == "running"
        assert body["status"] == "ok"
        registration_create(provider=provider, kind="llm", name="never", provider_model_uid="never-launched")
        response = staff.get("/healthz")
    assert response.status_code == 503
    assert "never-launched" in response.json()["components"]["xinference"]["error"]


@pytest.mark.django_db(transaction=True)
def test_models_are_healed_after_xinference_is_killed_and_restarted(
    team, xinference: XinferenceServer, celery_worker_process: str
) -> None:
    provider = xinference_provider(team, xinference.endpoint)
    registrations = [
        registration_launch(registration=register_llm(provider)),
        registration_launch(registration=register_offline_embedding(provider)),
    ]
    xinference.kill()
    reconcile.delay()
    wait_for(lambda: all(status == ModelStatus.UNREACHABLE for status in statuses(registrations)), timeout=60)

    restarted = time.monotonic()
    xinference.start()  # same port, no models and no custom registrations: all forgotten
    assert xinference.client.running_models() == []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and statuses(registrations) != [ModelStatus.RUNNING] * 2:
        reconcile.delay()  # what beat does every few seconds in production
        time.sleep(5)
    assert statuses(registrations) == [ModelStatus.RUNNING] * 2
    print(f"healed both models {time.monotonic() - restarted:.1f}s after Xinference answered again")
    for registration in registrations:
        assert registration.events.filter(kind=ModelEvent.Kind.HEALED).count() == 1
        assert registration.events.filter(kind=ModelEvent.Kind.UNREACHABLE).exists()
    healed_llm = chat_model_for(ModelRegistration.objects.get(pk=registrations[0].pk))
    assert healed_llm.invoke("Hi", max_tokens=ANSWER_TOKENS).content


def statuses(registrations: list[ModelRegistration]) -> list[str]:
    return [ModelRegistration.objects.get(pk=registration.pk).status for registration in registrations]


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError("condition not met in time")
