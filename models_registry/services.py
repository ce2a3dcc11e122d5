"""Writes: providers, registrations, their lifecycle (launch, terminate, test), healing, defaults."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts.models import Team
from core.domain_errors import DomainError
from models_registry import embedded_xinference
from models_registry.credentials import credentials_encrypt
from models_registry.langchain_models import embeddings_for
from models_registry.models import (
    ModelEvent,
    ModelKind,
    ModelRegistration,
    ModelStatus,
    Provider,
    ProviderKind,
    TeamModelDefaults,
)
from models_registry.providers import client_for
from models_registry.providers.base import ProbeResult, ProviderError, ProviderUnreachable

HEAL_BACKOFF_BASE_S = 15
HEAL_BACKOFF_MAX_S = 600
EMBEDDED_PROVIDER_NAME = "Local Xinference"


class RegistryError(DomainError):
    """A request the registry refuses; the message says what to do instead."""


class RegistryConflict(RegistryError):
    """The request collides with work under way (a launch already running)."""

    status_code = 409
    code = "conflict"


# --- providers and registrations --------------------------------------------------------------


@transaction.atomic
def provider_create(*, team: Team, name: str, kind: str, endpoint: str, api_key: str = "") -> Provider:
    if kind not in ProviderKind.values:
        raise RegistryError(f"unknown provider kind {kind!r}: choose from {sorted(ProviderKind.values)}")
    if Provider.objects.filter(team=team, name=name).exists():
        raise RegistryError(f"the team has a provider named {name!r} already: choose another name")
    return Provider.objects.create(
        team=team,
        name=name,
        kind=kind,
        endpoint=endpoint.rstrip("/"),
        credentials_encrypted=credentials_encrypt(api_key),
    )


@transaction.atomic
def provider_update(
    *,
    provider: Provider,
    name: str | None = None,
    kind: str | None = None,
    endpoint: str | None = None,
    api_key: str | None = None,
) -> Provider:
    """Change what is given (None: unchanged). A new endpoint drops the stored API key unless a
    new one comes with it: the key was meant for the old server, and would otherwise be sent to
    whatever the endpoint now names. The embedded Xinference's endpoint is the operator's
    (XINFERENCE_ENDPOINT, unchecked by the SSRF guard), so it cannot change here."""
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    fields = ["updated_at"]
    if name is not None and name != provider.name:
        if Provider.objects.filter(team_id=provider.team_id, name=name).exclude(pk=provider.pk).exists():
            raise RegistryError(f"the team has a provider named {name!r} already: choose another name")
        provider.name = name
        fields.append("name")
    if kind is not None and kind != provider.kind:
        if kind not in ProviderKind.values:
            raise RegistryError(f"unknown provider kind {kind!r}: choose from {sorted(ProviderKind.values)}")
        provider.kind = kind
        fields.append("kind")
    if endpoint is not None and endpoint.rstrip("/") != provider.endpoint:
        if provider.is_embedded:
            raise RegistryError(
                "the local Xinference's endpoint comes from the operator's XINFERENCE_ENDPOINT: "
                "register another provider for another server"
            )
        provider.endpoint = endpoint.rstrip("/")
        fields.append("endpoint")
        if api_key is None:
            provider.credentials_encrypted = ""
            fields.append("credentials_encrypted")
    if api_key is not None:
        provider.credentials_encrypted = credentials_encrypt(api_key)
        fields.append("credentials_encrypted")
    provider.save(update_fields=sorted(set(fields)))
    return provider


def provider_set_api_key(*, provider: Provider, api_key: str) -> Provider:
    provider.credentials_encrypted = credentials_encrypt(api_key)
    provider.save(update_fields=["credentials_encrypted", "updated_at"])
    return provider


@transaction.atomic
def registration_create(
    *,
    provider: Provider,
    kind: str,
    name: str,
    provider_model_uid: str,
    launch_spec: dict[str, Any] | None = None,
    custom_spec: dict[str, Any] | None = None,
    dimensions: int | None = None,
    context_length: int | None = None,
    keep_running: bool = True,
) -> ModelRegistration:
    if kind not in ModelKind.values:
        raise RegistryError(f"unknown model kind {kind!r}: choose from {sorted(ModelKind.values)}")
    if kind == ModelKind.EMBEDDING and not dimensions:
        raise RegistryError("an embedding model needs its dimensions (e.g. 384, 768, 1024)")
    if provider.kind == ProviderKind.OPENAI_COMPATIBLE and (custom_spec or (keep_running and launch_spec)):
        raise RegistryError(
            "OpenAI-compatible servers serve fixed models: register them without launch or custom specs"
        )
    if ModelRegistration.objects.filter(provider=provider, provider_model_uid=provider_model_uid).exists():
        raise RegistryError(f"{provider_model_uid!r} is registered on {provider.name} already")
    registration = ModelRegistration.objects.create(
        team=provider.team,
        provider=provider,
        kind=kind,
        name=name,
        provider_model_uid=provider_model_uid,
        launch_spec=launch_spec or {},
        custom_spec=custom_spec,
        dimensions=dimensions,
        context_length=context_length,
        keep_running=keep_running and provider.kind == ProviderKind.XINFERENCE,
    )
    if kind == ModelKind.EMBEDDING:
        # The worker probes the model and builds the HNSW index for the size it really returns;
        # `dimensions` above is what a person typed, and no DDL trusts it.
        from kb.tasks import vector_index_soon

        transaction.on_commit(partial(vector_index_soon, registration.pk))
    return registration


def _event(registration: ModelRegistration, kind: str, message: str = "", duration_ms: int | None = None) -> None:
    ModelEvent.objects.create(registration=registration, kind=kind, message=message[:4000], duration_ms=duration_ms)


def _set_status(registration: ModelRegistration, status: str, *, error: str = "") -> None:
    registration.status = status
    registration.last_error = error
    registration.last_checked_at = timezone.now()
    registration.save(
        update_fields=[
            "status",
            "last_error",
            "last_checked_at",
            "failure_count",
            "next_attempt_at",
            "keep_running",
            "updated_at",
        ]
    )


def _launch_lock_key(registration: ModelRegistration) -> str:
    return f"models_registry:launch:{registration.pk}"


@contextlib.contextmanager
def _launch_lock(registration: ModelRegistration) -> Iterator[bool]:
    """One launch per registration at a time, across every web and worker process (a Redis key,
    so no database transaction stays open through a launch that can take minutes)."""
    key = _launch_lock_key(registration)
    acquired = cache.add(key, "1", timeout=int(settings.XINFERENCE_LAUNCH_TIMEOUT_S) + 60)
    try:
        yield bool(acquired)
    finally:
        if acquired:
            cache.delete(key)


def _launch(registration: ModelRegistration, *, event_kind: str) -> None:
    """Launch on the provider and record the outcome; re-raises provider errors for the caller."""
    ModelRegistration.objects.filter(pk=registration.pk).update(status=ModelStatus.LAUNCHING)
    started = time.perf_counter()
    try:
        client_for(registration.provider).launch(
            uid=registration.provider_model_uid,
            kind=registration.kind,
            launch_spec=registration.launch_spec,
            custom_spec=registration.custom_spec,
        )
    except ProviderUnreachable as exc:
        _set_status(registration, ModelStatus.UNREACHABLE, error=str(exc))
        _event(registration, ModelEvent.Kind.UNREACHABLE, str(exc))
        raise
    except ProviderError as exc:
        registration.failure_count += 1
        delay = min(HEAL_BACKOFF_BASE_S * 2 ** (registration.failure_count - 1), HEAL_BACKOFF_MAX_S)
        registration.next_attempt_at = timezone.now() + timedelta(seconds=delay)
        _set_status(registration, ModelStatus.FAILED, error=str(exc))
        _event(registration, ModelEvent.Kind.FAILED, str(exc))
        raise
    registration.failure_count = 0
    registration.next_attempt_at = None
    _set_status(registration, ModelStatus.RUNNING)
    _event(registration, event_kind, duration_ms=int((time.perf_counter() - started) * 1000))


def registration_launch(*, registration: ModelRegistration) -> ModelRegistration:
    """Launch now (a person asked): keep it running from here on."""
    registration = ModelRegistration.objects.select_related("provider").get(pk=registration.pk)
    with _launch_lock(registration) as acquired:
        if not acquired:
            raise RegistryConflict(f"{registration.name} is being launched already: wait for it to finish")
        registration.keep_running = registration.provider.kind == ProviderKind.XINFERENCE
        registration.next_attempt_at = None
        _launch(registration, event_kind=ModelEvent.Kind.LAUNCHED)
    return registration


def registration_terminate(*, registration: ModelRegistration) -> ModelRegistration:
    """Stop it and stop keeping it running (else the healer would relaunch it)."""
    registration = ModelRegistration.objects.select_related("provider").get(pk=registration.pk)
    try:
        client_for(registration.provider).terminate(uid=registration.provider_model_uid)
    except ProviderUnreachable as exc:
        _set_status(registration, ModelStatus.UNREACHABLE, error=str(exc))
        raise
    registration.keep_running = False
    _set_status(registration, ModelStatus.STOPPED)
    _event(registration, ModelEvent.Kind.TERMINATED)
    return registration


def registration_test(*, registration: ModelRegistration) -> ProbeResult:
    """One real call through the provider; recorded as an event either way."""
    try:
        result = client_for(registration.provider).probe(uid=registration.provider_model_uid, kind=registration.kind)
    except ProviderError as exc:
        _event(registration, ModelEvent.Kind.TESTED, f"failed: {exc}")
        raise
    _event(registration, ModelEvent.Kind.TESTED, result.detail, duration_ms=result.duration_ms)
    return result


def registration_probe_dimensions(*, registration: ModelRegistration) -> int:
    """The size of the vectors an embedding model really returns: one embedding call through the
    client ingestion uses, recorded as a test event (a mismatch with the registration says so).
    Raises what the call raises (openai.APIError) when the model does not answer."""
    started = time.perf_counter()
    dims = len(embeddings_for(registration).embed_query("ping"))
    detail = f"returned a {dims}-dimensional embedding"
    if dims != registration.dimensions:
        detail = f"failed: {detail}, but it is registered with {registration.dimensions}: correct its dimensions"
    _event(registration, ModelEvent.Kind.TESTED, detail, duration_ms=int((time.perf_counter() - started) * 1000))
    return dims


# --- healing ----------------------------------------------------------------------------------


def provider_reconcile(*, provider: Provider) -> list[int]:
    """Compare what should run with what runs; returns the ids of registrations due for a heal."""
    registrations = list(provider.registrations.all())
    if not registrations:
        return []
    try:
        running = {model.uid for model in client_for(provider).running_models()}
    except ProviderError as exc:
        for registration in registrations:
            if registration.status != ModelStatus.UNREACHABLE:
                _event(registration, ModelEvent.Kind.UNREACHABLE, str(exc))
            ModelRegistration.objects.filter(pk=registration.pk).update(
                status=ModelStatus.UNREACHABLE, last_error=str(exc), last_checked_at=timezone.now()
            )
        return []
    now = timezone.now()
    due = []
    for registration in registrations:
        if registration.provider_model_uid in running:
            status = ModelStatus.RUNNING
            error = ""
        elif registration.keep_running and cache.get(_launch_lock_key(registration)) is not None:
            continue  # a launch is under way (a lock, not the status: a worker killed mid-launch leaves no lock)
        elif registration.keep_running:
            if registration.next_attempt_at is None or registration.next_attempt_at <= now:
                due.append(registration.pk)
            status = ModelStatus.FAILED if registration.status == ModelStatus.FAILED else ModelStatus.STOPPED
            error = registration.last_error
        else:
            status = ModelStatus.STOPPED
            error = ""
        ModelRegistration.objects.filter(pk=registration.pk).update(
            status=status, last_error=error, last_checked_at=now
        )
    return due


def registration_heal(*, registration_id: int) -> bool:
    """Relaunch a keep-running registration found not running. Safe to call twice at once: the
    second caller finds the launch lock taken and leaves it. True when this call launched it."""
    registration = (
        ModelRegistration.objects.select_related("provider").filter(pk=registration_id, keep_running=True).first()
    )
    if registration is None:
        return False
    with _launch_lock(registration) as acquired:
        if not acquired:
            return False
        try:
            running = {model.uid for model in client_for(registration.provider).running_models()}
        except ProviderError:
            return False
        if registration.provider_model_uid in running:
            _set_status(registration, ModelStatus.RUNNING)
            return False
        ever_ran = registration.events.filter(kind__in=[ModelEvent.Kind.LAUNCHED, ModelEvent.Kind.HEALED]).exists()
        try:
            _launch(registration, event_kind=ModelEvent.Kind.HEALED if ever_ran else ModelEvent.Kind.LAUNCHED)
        except ProviderError:
            return False
        return True


# --- defaults and the embedded Xinference -----------------------------------------------------


def team_defaults_set(*, team: Team, **chosen: ModelRegistration | None) -> TeamModelDefaults:
    defaults, _ = TeamModelDefaults.objects.get_or_create(team=team)
    for kind, registration in chosen.items():
        if kind not in ModelKind.values:
            raise RegistryError(f"unknown model kind {kind!r}")
        if registration is not None and (registration.team_id != team.pk or registration.kind != kind):
            raise RegistryError(f"{registration.name} is not a {kind} model of the team {team.slug!r}")
        setattr(defaults, kind, registration)
    defaults.save()
    return defaults


@transaction.atomic
def embedded_models_bootstrap(*, team: Team, endpoint: str, venv_dir: Path) -> list[ModelRegistration]:
    """The local Xinference and its two offline models, kept running, as the team's defaults."""
    provider, _ = Provider.objects.update_or_create(
        team=team,
        is_embedded=True,
        defaults={"name": EMBEDDED_PROVIDER_NAME, "kind": ProviderKind.XINFERENCE, "endpoint": endpoint},
    )
    llm, _ = ModelRegistration.objects.update_or_create(
        provider=provider,
        provider_model_uid=embedded_xinference.LLM_UID,
        defaults={
            "team": team,
            "kind": ModelKind.LLM,
            "name": "SmolLM2 135M Instruct (local)",
            "launch_spec": embedded_xinference.llm_launch(),
            "custom_spec": embedded_xinference.llm_spec(venv_dir),
            "context_length": embedded_xinference.LLM_CONTEXT_LENGTH,
        },
    )
    embedding, _ = ModelRegistration.objects.update_or_create(
        provider=provider,
        provider_model_uid=embedded_xinference.EMBEDDING_UID,
        defaults={
            "team": team,
            "kind": ModelKind.EMBEDDING,
            "name": "all-MiniLM-L6-v2 (local)",
            "launch_spec": embedded_xinference.embedding_launch(),
            "custom_spec": embedded_xinference.embedding_spec(venv_dir),
            "dimensions": embedded_xinference.EMBEDDING_DIMENSIONS,
        },
    )
    defaults = TeamModelDefaults.objects.filter(team=team).first()
    if defaults is None or defaults.llm is None or defaults.embedding is None:
        team_defaults_set(team=team, llm=llm, embedding=embedding)
    return [llm, embedding]
