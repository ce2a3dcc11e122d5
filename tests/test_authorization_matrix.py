"""Every operation in the OpenAPI schema, tried as: anonymous, a revoked key, a viewer of the
owning team, and the owner of another team. Objects of team A are the targets; the test fails on
any operation it has no target or body for, so a new endpoint cannot slip past it."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.postgres.search import SearchVector
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Value
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.models import ApiKey, Role, Scope, Team
from accounts.services import api_key_create, api_key_revoke, membership_set
from chat.models import Assistant, Conversation, Message
from chat.services import assistant_create, conversation_create
from datasources.models import DataSource
from datasources.services import data_source_create
from evaluation.models import EvaluationItem, EvaluationRun, EvaluationSet
from evaluation.services import evaluation_set_create, item_create, run_create
from finetune.models import Adapter, Comparison, Dataset, GoldAnswer
from integrations.models import Webhook
from kb.models import Chunk, ChunkEdit, Document, KnowledgeBase, WebSource
from kb.services import kb_create
from models_registry.models import ModelRegistration, Provider
from models_registry.services import provider_create, registration_create
from realservices.xinference import free_port
from tests.conftest import member_of
from tests.factories import TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_rate_limits(settings: Any) -> None:
    """One key tries every operation, more than a minute's requests allow: this file tests who
    may, not how often (tests/test_team_admin_api.py tests the limits)."""
    settings.API_RATE_LIMIT_KEY_PER_MINUTE = 100_000
    settings.API_RATE_LIMIT_TEAM_PER_MINUTE = 100_000


ALL_SCOPES = [Scope.READ, Scope.WRITE, Scope.CHAT, Scope.ADMIN]
UNSAFE = {"post", "put", "patch", "delete"}
# Unsafe operations a viewer may perform: searching is a read, and anyone manages their own keys.
VIEWER_MAY = {("post", "/api/v1/knowledge-bases/{id}/search/"), ("post", "/api/v1/api-keys/")}


@dataclass
class World:
    team_id: int
    ids: dict[str, int]
    member_id: int
    newcomer_username: str
    assistant_name: str
    embedding_name: str
    llm_id: int
    embedding_id: int
    provider_id: int
    rerank_id: int


def tiny_sqlite() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/t.sqlite"
        with sqlite3.connect(path) as database:
            database.execute("CREATE TABLE t (id integer)")
        with open(path, "rb") as handle:
            return handle.read()


def build_world(label: str = "", team: Team | None = None) -> World:
    """A team with one object of each kind; `label` starts every name (to spot a leaked name)."""
    team = team or TeamFactory.create()
    member_of(team, Role.OWNER)
    member = member_of(team, Role.MEMBER)
    # Nothing listens on this port: an operation that wrongly gets through fails fast, not slowly.
    provider = provider_create(
        team=team, name=f"{label}dead", kind="openai_compatible", endpoint=f"http://127.0.0.1:{free_port()}"
    )
    llm = registration_create(provider=provider, kind="llm", name=f"{label}LLM", provider_model_uid="llm")
    embedding = registration_create(
        provider=provider, kind="embedding", name=f"{label}Emb", provider_model_uid="emb", dimensions=384
    )
    rerank = registration_create(provider=provider, kind="rerank", name=f"{label}Rerank", provider_model_uid="rr")
    kb = kb_create(team=team, name=f"{label}KB", embedding_model=embedding)
    document = Document.objects.create(
        knowledge_base=kb,
        team=team,
        original_name=f"{label}a.txt",
        file=ContentFile(b"hello", name="a.txt"),
        sha256="0" * 64,
        size_bytes=5,
        content_type="text/plain",
        status="ready",
    )
    chunk = Chunk.objects.create(
        knowledge_base=kb,
        document=document,
        generation=kb.generation,
        ordinal=0,
        text=f"{label}hello",
        dims=384,
        embedding=[0.01] * 384,
        search_vector=SearchVector(Value("hello"), config="simple"),
    )
    # An edit no chunk carries (its original is gone): deleting it calls no model.
    chunk_edit = ChunkEdit.objects.create(
        document=document, team=team, original_sha256="0" * 64, original_text=f"{label}gone", disabled=True
    )
    assistant = assistant_create(team=team, name=f"{label}Helper", llm=llm)
    room = conversation_create(team=team, owner=member, assistant=assistant, is_room=True)
    message = Message.objects.create(conversation=room, role=Message.Role.USER, author=member, content="hi")
    key, _secret = api_key_create(user=member, team=team, name="member's")
    webhook = Webhook.objects.create(team=team, url="https://hooks.example.com/x", secret="s", events=["ping"])
    evaluation_set = evaluation_set_create(kb=kb, name=f"{label}Set")
    item = item_create(
        evaluation_set=evaluation_set, data={"question": "hi?", "expected_document": document.original_name}
    )
    run = run_create(evaluation_set=evaluation_set, modes=["fulltext"], top_k=5)
    web_source = WebSource.objects.create(
        team=team, knowledge_base=kb, url="https://docs.example.com/sitemap.xml", max_pages=10, status="synced"
    )
    data_source = data_source_create(
        team=team, name=f"{label}Data", kind="sqlite", sqlite_file=SimpleUploadedFile("t.sqlite", tiny_sqlite())
    )
    # A member's dataset: its owners and admins see it, viewers do not (finetune.selectors).
    dataset = Dataset.objects.create(
        team=team, created_by=member, builder_role=Role.MEMBER, name=f"{label}Set", version=1, format="alpaca"
    )
    # An adapter registered on the team's LLM from that dataset, and a comparison of it.
    adapted = registration_create(provider=provider, kind="llm", name=f"{label}Adapted", provider_model_uid="lora")
    adapter = Adapter.objects.create(
        team=team, dataset=dataset, base_model=llm, registration=adapted, path="/srv/adapters/a"
    )
    comparison = Comparison.objects.create(team=team, adapter=adapter, row_limit=1)
    return World(
        team_id=team.pk,
        ids={
            "adapters": adapter.pk,
            "api-keys": key.pk,
            "assistants": assistant.pk,
            "chunk-edits": chunk_edit.pk,
            "chunks": chunk.pk,
            "comparisons": comparison.pk,
            "conversations": room.pk,
            "data-sources": data_source.pk,
            "datasets": dataset.pk,
            "documents": document.pk,
            "evaluation-items": item.pk,
            "evaluation-runs": run.pk,
            "evaluation-sets": evaluation_set.pk,
            "knowledge-bases": kb.pk,
            "messages": message.pk,
            "models": llm.pk,
            "providers": provider.pk,
            "teams": team.pk,
            "webhooks": webhook.pk,
            "web-sources": web_source.pk,
        },
        member_id=member.pk,
        newcomer_username=UserFactory.create().username,
        assistant_name=assistant.name,
        embedding_name=embedding.name,
        llm_id=llm.pk,
        embedding_id=embedding.pk,
        provider_id=provider.pk,
        rerank_id=rerank.pk,
    )


def operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [(method, path) for path, item in schema["paths"].items() for method in item if method != "parameters"]


def concrete_path(path: str, world: World) -> str:
    if path.startswith("/v1/"):
        return path.replace("{model}", world.assistant_name)
    resource = path.split("/")[3]
    filled = path.replace("{user_id}", str(world.member_id))
    return filled.replace("{id}", str(world.ids[resource])) if "{id}" in filled else filled


def body_for(method: str, path: str, world: World) -> tuple[Any, str]:
    """A request body that would pass validation, so that refusals are about who asks."""
    if path.endswith("/files/") or path.endswith("/documents/"):
        upload = io.BytesIO(b"some text to index")
        upload.name = "notes.txt"
        return {"file": [upload]}, "multipart"
    team = world.team_id
    document_name = Document.objects.get(pk=world.ids["documents"]).original_name
    bodies: dict[str, Any] = {
        "/api/v1/api-keys/": {"name": "k", "team": team},
        "/api/v1/assistants/": {"name": "New", "llm": world.llm_id, "team": team},
        "/api/v1/assistants/{id}/": {"name": "Renamed", "llm": world.llm_id},
        "/api/v1/conversations/": {"assistant": world.ids["assistants"], "team": team},
        "/api/v1/conversations/{id}/": {"title": "Renamed", "assistant": world.ids["assistants"]},
        "/api/v1/conversations/{id}/messages/": {"content": "hello"},
        "/api/v1/data-sources/": {
            "name": "DS2",
            "kind": "postgresql",
            "dsn": f"postgresql://u:p@127.0.0.1:{free_port()}/x",
            "team": team,
        },
        "/api/v1/data-sources/{id}/": {"name": "Renamed", "description": "d"},
        "/api/v1/data-sources/{id}/query/": {"sql": "SELECT id FROM t"},
        "/api/v1/datasets/": {"name": "Exported", "format": "alpaca", "filters": {"feedback": "any"}, "team": team},
        "/api/v1/datasets/{id}/adapters/": {"name": "A2", "base_model": world.llm_id, "path": "/srv/adapters/a2"},
        "/api/v1/adapters/{id}/comparisons/": {"rows": 1, "evaluation_sets": [world.ids["evaluation-sets"]]},
        "/api/v1/knowledge-bases/": {"name": "KB2", "embedding_model": world.embedding_id, "team": team},
        "/api/v1/knowledge-bases/{id}/": {"name": "Renamed", "embedding_model": world.embedding_id},
        "/api/v1/knowledge-bases/{id}/search/": {"query": "hello", "mode": "fulltext"},
        "/api/v1/chunks/{id}/": {"disabled": True},
        "/api/v1/knowledge-bases/{id}/evaluation-sets/": {"name": "Set2"},
        "/api/v1/knowledge-bases/{id}/web-sources/": {"url": "http://127.0.0.1:9/docs/", "kind": "page"},
        "/api/v1/knowledge-bases/{id}/rebuild-decision/": {"decision": "keep"},
        "/api/v1/evaluation-sets/{id}/": {"name": "Renamed", "gate_threshold": 0.05},
        "/api/v1/evaluation-sets/{id}/items/": {"question": "how?", "expected_document": document_name},
        "/api/v1/evaluation-sets/{id}/runs/": {"modes": ["fulltext"], "top_k": 5},
        "/api/v1/evaluation-sets/{id}/draft/": {"documents": [world.ids["documents"]], "per_document": 1},
        "/api/v1/evaluation-sets/{id}/from-message/": {"message": world.ids["messages"]},
        "/api/v1/evaluation-items/{id}/": {"question": "why?", "expected_document": document_name},
        "/api/v1/messages/{id}/feedback/": {"value": 1},
        "/api/v1/messages/{id}/gold/": {"text": "A better answer."},
        "/api/v1/models/": {"provider": world.provider_id, "kind": "llm", "name": "M2", "provider_model_uid": "m2"},
        "/api/v1/models/{id}/": {
            "provider": world.provider_id,
            "kind": "llm",
            "name": "M3",
            "provider_model_uid": "m3",
        },
        "/api/v1/providers/": {
            "name": "P2",
            "kind": "openai_compatible",
            "endpoint": "http://127.0.0.1:9",
            "team": team,
        },
        "/api/v1/providers/{id}/": {"name": "P3", "kind": "openai_compatible", "endpoint": "http://127.0.0.1:9"},
        "/api/v1/teams/": {"name": "Another"},
        "/api/v1/teams/{id}/": {"name": "Renamed"},
        "/api/v1/teams/{id}/members/": {"username": world.newcomer_username},
        "/api/v1/teams/{id}/members/{user_id}/": {"role": "viewer"},
        "/api/v1/webhooks/": {"url": "https://hooks.example.com/y", "events": ["document.ready"], "team": team},
        "/api/v1/webhooks/{id}/": {"url": "https://hooks.example.com/z", "events": ["document.ready"]},
        "/v1/chat/completions": {"model": world.assistant_name, "messages": [{"role": "user", "content": "hi"}]},
        "/v1/embeddings": {"model": world.embedding_name, "input": "hi"},
    }
    if method in ("get", "delete") or (
        path not in bodies
        and re.search(r"/(launch|terminate|test|stop|rebuild|reindex|regenerate|schema|sync)/$", path)
    ):
        return None, "json"
    return bodies[path], "json"


def call(client: APIClient, method: str, path: str, world: World) -> Any:
    body, fmt = body_for(method, path, world)
    url = concrete_path(path, world)
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format=fmt)


def keyed(user: Any, team: Any) -> APIClient:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(user=user, team=team, name='m', scopes=ALL_SCOPES)[1]}"
    )
    return client


def counts(team_id: int) -> dict[str, int]:
    return {
        model.__name__: model.objects.filter(team_id=team_id).count()
        for model in (
            ApiKey,
            Provider,
            ModelRegistration,
            KnowledgeBase,
            Document,
            Conversation,
            Webhook,
            EvaluationSet,
            EvaluationItem,
            EvaluationRun,
            DataSource,
            WebSource,
            ChunkEdit,
            Dataset,
            GoldAnswer,
        )
    }


def test_the_schema_lists_every_api_route() -> None:
    paths = {path for _method, path in operations()}
    for expected in (
        "/api/v1/usage/",
        "/api/v1/api-keys/",
        "/api/v1/webhooks/",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/models",
        "/api/v1/conversations/{id}/messages/",
    ):
        assert expected in paths


def test_anonymous_and_revoked_keys_get_401_everywhere() -> None:
    world = build_world()
    member = UserFactory.create()
    team = Team.objects.get(pk=world.team_id)
    member_of_team = member_of(team, Role.MEMBER)
    key, secret = api_key_create(user=member_of_team, team=team, name="gone", scopes=ALL_SCOPES)
    api_key_revoke(key=key)
    revoked = APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    anonymous = APIClient()
    del member
    failures = []
    for method, path in operations():
        for who, client in (("anonymous", anonymous), ("revoked", revoked)):
            response = call(client, method, path, world)
            if response.status_code != 401:
                failures.append((who, method, path, response.status_code))
    assert failures == []


def test_a_viewer_reads_but_cannot_change_anything() -> None:
    world = build_world()
    team = Team.objects.get(pk=world.team_id)
    viewer = member_of(team, Role.VIEWER)
    client = keyed(viewer, team)
    failures = []
    for method, path in operations():
        if method not in UNSAFE or (method, path) in VIEWER_MAY:
            continue
        before = counts(world.team_id)
        response = call(client, method, path, world)
        # 404 where the viewer cannot see the target at all (another member's API key, a member's dataset).
        allowed = {403, 404} if path.startswith(("/api/v1/api-keys/{id}", "/api/v1/datasets/{id}")) else {403}
        if response.status_code not in allowed or counts(world.team_id) != before:
            failures.append((method, path, response.status_code, response.content[:200]))
    assert failures == []


def test_another_teams_owner_finds_nothing_of_this_team() -> None:
    world = build_world()
    stranger_team = TeamFactory.create()
    stranger = member_of(stranger_team, Role.OWNER)
    client = keyed(stranger, stranger_team)
    failures = []
    for method, path in operations():
        before = counts(world.team_id)
        response = call(client, method, path, world)
        if "{" in path:
            ok = response.status_code == 404
        elif method == "get":
            # Lists answer, without a single row of the other team.
            text = json.dumps(response.json())
            ok = response.status_code == 200 and f'"team": {world.team_id},' not in text
            ok = ok and world.assistant_name not in text
        else:
            ok = response.status_code in (400, 403, 404)
        if not ok or counts(world.team_id) != before:
            failures.append((method, path, response.status_code, response.content[:200]))
    assert failures == []


# --- references: every field of every write that names an object or a team --------------------

# Writable fields that name another object, with the kind of object they name. A write may only
# point at objects of the team that owns what it writes, and of the right kind.
REFERENCE_FIELDS = {
    "team": "team",
    "llm": "llm",
    "embedding_model": "embedding",
    "rerank_model": "rerank",
    "provider": "provider",
    "assistant": "assistant",
    "knowledge_bases": "knowledge_base",
    "data_sources": "data_source",
    "document_ids": "document",
    "documents": "document",
    "message": "message",
    "base_model": "llm",
    "evaluation_sets": "evaluation_set",
}
# Whole-number fields that are amounts, not references (a new id-like field must be classified).
NOT_REFERENCES = {
    "top_k",
    "chunk_size",
    "chunk_overlap",
    "recent_tokens",
    "summary_tokens",
    "max_answer_tokens",
    "value",
    "dimensions",
    "context_length",
    "rate_limit_per_minute",
    "expires_days",
    "per_document",
    "max_pages",
    "sync_interval_hours",
    "holdout",
    "rows",
}
# A reference of the wrong kind within the caller's own team.
WRONG_KIND = {"llm": "embedding", "embedding": "llm", "rerank": "llm"}
SECRET = "FOREIGN-SECRET-"


def request_properties(operation: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    content = (operation.get("requestBody") or {}).get("content") or {}
    body = content.get("application/json") or {}
    ref = (body.get("schema") or {}).get("$ref", "")
    component = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}) if ref else body.get("schema", {})
    return {name: spec for name, spec in (component.get("properties") or {}).items() if not spec.get("readOnly")}


def is_integer_field(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "integer" or (spec.get("items") or {}).get("type") == "integer"


def object_id(world: World, kind: str) -> int:
    return {
        "team": world.team_id,
        "llm": world.llm_id,
        "embedding": world.embedding_id,
        "rerank": world.rerank_id,
        "provider": world.provider_id,
        "assistant": world.ids["assistants"],
        "knowledge_base": world.ids["knowledge-bases"],
        "document": world.ids["documents"],
        "message": world.ids["messages"],
        "data_source": world.ids["data-sources"],
        "evaluation_set": world.ids["evaluation-sets"],
    }[kind]


def with_reference(body: Any, field: str, spec: dict[str, Any], value: int) -> dict[str, Any]:
    return {**(body or {}), field: [value] if spec.get("type") == "array" else value}


def snapshot(team_id: int) -> dict[str, list[dict[str, Any]]]:
    """Every row of the team, less the timestamps the platform moves on its own."""
    moving = {"updated_at", "last_used_at", "last_checked_at"}
    rows: dict[str, list[dict[str, Any]]] = {}
    for model in (
        Provider,
        ModelRegistration,
        KnowledgeBase,
        Document,
        Assistant,
        Conversation,
        Webhook,
        ApiKey,
        EvaluationSet,
        EvaluationItem,
        EvaluationRun,
        DataSource,
        WebSource,
        ChunkEdit,
        Dataset,
        GoldAnswer,
        Adapter,
        Comparison,
    ):
        rows[model.__name__] = [
            {key: value for key, value in row.items() if key not in moving}
            for row in model.objects.filter(team_id=team_id).order_by("pk").values()
        ]
    links = Assistant.knowledge_bases.through.objects.filter(assistant__team_id=team_id).order_by("pk")
    rows["assistant_kbs"] = [dict(row) for row in links.values("assistant_id", "knowledgebase_id")]
    source_links = Assistant.data_sources.through.objects.filter(assistant__team_id=team_id).order_by("pk")
    rows["assistant_data_sources"] = [dict(row) for row in source_links.values("assistant_id", "datasource_id")]
    rows["Team"] = [dict(row) for row in Team.objects.filter(pk=team_id).values("name", "slug")]
    return rows


def broken_references() -> list[str]:
    """Rows anywhere that point at another team's object or at one of the wrong kind."""
    broken = []
    assistants = Assistant.objects.select_related("llm", "rerank_model").prefetch_related(
        "knowledge_bases", "data_sources"
    )
    for assistant in assistants:
        if assistant.llm.team_id != assistant.team_id or assistant.llm.kind != "llm":
            broken.append(f"assistant {assistant.pk} -> llm {assistant.llm_id}")
        rerank = assistant.rerank_model
        if rerank is not None and (rerank.team_id != assistant.team_id or rerank.kind != "rerank"):
            broken.append(f"assistant {assistant.pk} -> rerank {rerank.pk}")
        for source in assistant.data_sources.all():
            if source.team_id != assistant.team_id:
                broken.append(f"assistant {assistant.pk} -> data source {source.pk}")
        for kb in assistant.knowledge_bases.all():
            if kb.team_id != assistant.team_id or Conversation.objects.filter(file_knowledge_base=kb).exists():
                broken.append(f"assistant {assistant.pk} -> knowledge base {kb.pk}")
    for conversation in Conversation.objects.select_related("assistant"):
        if conversation.assistant.team_id != conversation.team_id:
            broken.append(f"conversation {conversation.pk} -> assistant {conversation.assistant_id}")
    for kb in KnowledgeBase.objects.select_related("embedding_model"):
        if kb.embedding_model.team_id != kb.team_id or kb.embedding_model.kind != "embedding":
            broken.append(f"knowledge base {kb.pk} -> model {kb.embedding_model_id}")
    for evaluation_set in EvaluationSet.objects.select_related("knowledge_base"):
        if evaluation_set.knowledge_base.team_id != evaluation_set.team_id:
            broken.append(f"evaluation set {evaluation_set.pk} -> knowledge base {evaluation_set.knowledge_base_id}")
    for run in EvaluationRun.objects.select_related("evaluation_set", "rerank_model"):
        rerank = run.rerank_model
        if run.evaluation_set.team_id != run.team_id or (rerank is not None and rerank.team_id != run.team_id):
            broken.append(f"evaluation run {run.pk} -> another team's set or reranker")
    for registration in ModelRegistration.objects.select_related("provider"):
        if registration.provider.team_id != registration.team_id:
            broken.append(f"model {registration.pk} -> provider {registration.provider_id}")
    for dataset in Dataset.objects.all():
        for field, model in (("assistant", Assistant), ("knowledge_base", KnowledgeBase)):
            named = dataset.filters.get(field)
            if named is not None and not model.objects.filter(pk=named, team_id=dataset.team_id).exists():
                broken.append(f"dataset {dataset.pk} -> {field} {named}")
    for adapter in Adapter.objects.select_related("base_model", "registration", "dataset"):
        owners = {adapter.base_model.team_id, adapter.registration.team_id, adapter.team_id}
        if len(owners) > 1 or (adapter.dataset is not None and adapter.dataset.team_id != adapter.team_id):
            broken.append(f"adapter {adapter.pk} -> another team's model or dataset")
    for comparison in Comparison.objects.select_related("adapter"):
        foreign_sets = EvaluationSet.objects.filter(pk__in=comparison.evaluation_set_ids).exclude(
            team_id=comparison.team_id
        )
        if comparison.adapter.team_id != comparison.team_id or foreign_sets.exists():
            broken.append(f"comparison {comparison.pk} -> another team's adapter or evaluation set")
    for gold in GoldAnswer.objects.select_related("message__conversation"):
        if gold.message.conversation.team_id != gold.team_id:
            broken.append(f"gold answer {gold.pk} -> message {gold.message_id}")
    return broken


def test_every_reference_in_every_write_stays_in_the_owning_team() -> None:
    """For every POST/PUT/PATCH in the schema and every writable field that names an object or a
    team: another team's id (a team the caller is not in), the id of one of the caller's other
    teams, and an object of the wrong kind. None may bind across teams, change the other team,
    answer 5xx, or name the other team's objects; another team's ids answer 4xx."""
    caller = UserFactory.create()
    home_team, sibling_team = TeamFactory.create(), TeamFactory.create()
    membership_set(team=home_team, user=caller, role=Role.OWNER)
    membership_set(team=sibling_team, user=caller, role=Role.OWNER)
    home = build_world(team=home_team)
    sibling = build_world("sibling-", team=sibling_team)
    foreign = build_world(SECRET)
    session = APIClient(raise_request_exception=False)  # a 500 is a finding, not a crash of the test
    session.force_authenticate(caller)
    key_client = keyed(caller, home_team)
    key_client.raise_request_exception = False
    clients = {"session": session, "key": key_client}
    schema = SchemaGenerator().get_schema(request=None, public=True)
    foreign_before = snapshot(foreign.team_id)
    failures: list[tuple[Any, ...]] = []
    unclassified: list[str] = []
    known_broken: set[str] = set()
    tried = 0
    for path, item in schema["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in item.items():
            if method not in ("post", "put", "patch"):
                continue
            properties = request_properties(operation, schema)
            for field, spec in properties.items():
                kind = REFERENCE_FIELDS.get(field)
                if kind is None:
                    if is_integer_field(spec) and field not in NOT_REFERENCES:
                        unclassified.append(f"{method} {path} {field}")
                    continue
                base, fmt = body_for(
                    method,
                    path,
                    home,
                )
                attempts = [("foreign", object_id(foreign, kind)), ("sibling", object_id(sibling, kind))]
                if kind in WRONG_KIND:
                    attempts.append(("wrong kind", object_id(home, WRONG_KIND[kind])))
                for who, client in clients.items():
                    for case, value in attempts:
                        tried += 1
                        url = concrete_path(path, home)
                        response = getattr(client, method)(url, with_reference(base, field, spec, value), format=fmt)
                        text = response.content.decode(errors="replace")
                        # Only what this request broke: one bad row is reported once, where it was made.
                        problems = [row for row in broken_references() if row not in known_broken]
                        known_broken.update(problems)
                        if response.status_code >= 500:
                            problems.append(f"status {response.status_code}")
                        if SECRET in text:
                            problems.append("names the other team's objects")
                        if case == "foreign" and field != "document_ids" and not 400 <= response.status_code < 500:
                            problems.append(f"another team's id answered {response.status_code}")
                        if case == "wrong kind" and response.status_code < 400:
                            problems.append(f"a {WRONG_KIND[kind]} accepted as {kind}: {response.status_code}")
                        if snapshot(foreign.team_id) != foreign_before:
                            problems.append("the other team changed")
                        if problems:
                            failures.append((who, case, method, path, field, problems, text[:200]))
                            foreign_before = snapshot(foreign.team_id)
    assert unclassified == [], "classify these fields in REFERENCE_FIELDS or NOT_REFERENCES"
    assert tried > 50
    assert failures == []


def test_a_conversations_files_are_seen_only_by_those_who_see_the_conversation() -> None:
    """The knowledge base of files dropped into a private conversation: its owner finds it through
    the REST API, another member of the team finds nothing (list, detail, documents, search,
    document detail), nor can an admin attach it to an assistant."""
    world = build_world()
    team = Team.objects.get(pk=world.team_id)
    owner, other = member_of(team, Role.MEMBER), member_of(team, Role.ADMIN)
    assistant = Assistant.objects.get(pk=world.ids["assistants"])
    conversation = conversation_create(team=team, owner=owner, assistant=assistant)
    files_kb = kb_create(
        team=team, name="Files of a private chat", embedding_model=ModelRegistration.objects.get(pk=world.embedding_id)
    )
    Conversation.objects.filter(pk=conversation.pk).update(file_knowledge_base=files_kb)
    document = Document.objects.create(
        knowledge_base=files_kb,
        team=team,
        original_name="salary.txt",
        file=ContentFile(b"x", name="s.txt"),
        sha256="1" * 64,
        size_bytes=1,
        content_type="text/plain",
        status="ready",
    )
    owner_client, other_client = keyed(owner, team), keyed(other, team)

    listed = owner_client.get("/api/v1/knowledge-bases/").json()["results"]
    assert files_kb.pk in [row["id"] for row in listed]
    assert owner_client.get(f"/api/v1/documents/{document.pk}/").status_code == 200

    listed = other_client.get("/api/v1/knowledge-bases/").json()["results"]
    assert files_kb.pk not in [row["id"] for row in listed]
    for url in (
        f"/api/v1/knowledge-bases/{files_kb.pk}/",
        f"/api/v1/knowledge-bases/{files_kb.pk}/documents/",
        f"/api/v1/documents/{document.pk}/",
    ):
        assert other_client.get(url).status_code == 404, url
    search = other_client.post(f"/api/v1/knowledge-bases/{files_kb.pk}/search/", {"query": "salary"}, format="json")
    assert search.status_code == 404
    assert document.pk not in [row["id"] for row in other_client.get("/api/v1/documents/").json()["results"]]
    upload = io.BytesIO(b"planted")
    upload.name = "planted.txt"
    response = other_client.post(f"/api/v1/knowledge-bases/{files_kb.pk}/documents/", {"file": [upload]})
    assert response.status_code == 404
    response = other_client.patch(
        f"/api/v1/assistants/{assistant.pk}/", {"knowledge_bases": [files_kb.pk]}, format="json"
    )
    assert response.status_code == 400
    assert not assistant.knowledge_bases.filter(pk=files_kb.pk).exists()
    assert files_kb.documents.count() == 1


def test_a_key_without_scopes_reaches_no_endpoint() -> None:
    """Every operation declares the scope a key needs: a key holding none gets 403 everywhere."""
    world = build_world()
    team = Team.objects.get(pk=world.team_id)
    owner = member_of(team, Role.OWNER)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(user=owner, team=team, name='none', scopes=[])[1]}")
    failures = []
    for method, path in operations():
        before = counts(world.team_id)
        response = call(client, method, path, world)
        if response.status_code != 403 or counts(world.team_id) != before:
            failures.append((method, path, response.status_code))
    assert failures == []


def test_a_key_never_mints_a_key_that_outlives_it_or_holds_more() -> None:
    world = build_world()
    team = Team.objects.get(pk=world.team_id)
    owner = member_of(team, Role.OWNER)
    expiry = timezone.now() + timedelta(days=2)
    parent, secret = api_key_create(user=owner, team=team, name="short", scopes=[Scope.ADMIN], expires_at=expiry)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    response = client.post("/api/v1/api-keys/", {"name": "child"}, format="json")
    assert response.status_code == 201
    assert ApiKey.objects.get(pk=response.json()["id"]).expires_at == expiry
    later = (expiry + timedelta(days=30)).isoformat()
    response = client.post("/api/v1/api-keys/", {"name": "longer", "expires_at": later}, format="json")
    assert response.status_code == 400
    assert "cannot outlive" in response.json()["error"]["message"]

    narrow, narrow_secret = api_key_create(user=owner, team=team, name="narrow", scopes=[Scope.READ])
    assert "admin" not in narrow.scopes
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow_secret}")
    response = client.post("/api/v1/api-keys/", {"name": "wider", "scopes": ["read", "chat"]}, format="json")
    assert response.status_code == 403
    assert ApiKey.objects.filter(team=team, name__in=["longer", "wider"]).count() == 0
    assert parent.pk
