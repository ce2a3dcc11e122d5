"""The two offline models (SmolLM2 and MiniLM, see OFFLINE-MODELS.md) registered on a team's
Xinference provider: the one recipe the tests and the benchmarks use."""

from __future__ import annotations

from accounts.models import Team
from models_registry import embedded_xinference
from models_registry.models import ModelRegistration, Provider
from models_registry.services import provider_create, registration_create
from realservices.xinference import installed_venv


def _provider(team: Team, endpoint: str, name: str | None) -> Provider:
    return provider_create(team=team, name=name or f"xi-{endpoint[-5:]}", kind="xinference", endpoint=endpoint)


def register_offline_embedding(provider: Provider) -> ModelRegistration:
    """MiniLM registered (not launched) on `provider`."""
    return registration_create(
        provider=provider,
        kind="embedding",
        name="MiniLM",
        provider_model_uid=embedded_xinference.EMBEDDING_UID,
        launch_spec=embedded_xinference.embedding_launch(),
        custom_spec=embedded_xinference.embedding_spec(installed_venv()),
        dimensions=embedded_xinference.EMBEDDING_DIMENSIONS,
    )


def offline_embedding_on(team: Team, endpoint: str) -> ModelRegistration:
    """MiniLM registered (not launched) on a new Xinference provider of `team` at `endpoint`."""
    return register_offline_embedding(_provider(team, endpoint, None))


def offline_models_on(
    team: Team, endpoint: str, *, provider_name: str | None = None
) -> tuple[ModelRegistration, ModelRegistration]:
    """SmolLM2 and MiniLM registered (not launched) on a new Xinference provider of `team`."""
    provider = _provider(team, endpoint, provider_name)
    return register_offline_llm(provider), register_offline_embedding(provider)


def register_offline_llm(provider: Provider, *, context_length: int | None = None) -> ModelRegistration:
    """SmolLM2 registered (not launched) on `provider`."""
    return registration_create(
        provider=provider,
        kind="llm",
        name="SmolLM2",
        provider_model_uid=embedded_xinference.LLM_UID,
        launch_spec=embedded_xinference.llm_launch(),
        custom_spec=embedded_xinference.llm_spec(installed_venv()),
        context_length=context_length,
    )
