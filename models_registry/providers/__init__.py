"""One module per provider kind; `client_for` picks the one a Provider row needs."""

from __future__ import annotations

from models_registry.models import Provider, ProviderKind
from models_registry.providers.base import ProviderClient
from models_registry.providers.openai_compatible import OpenAICompatibleClient
from models_registry.providers.xinference import XinferenceClient


def client_for(provider: Provider) -> ProviderClient:
    from models_registry.credentials import credentials_decrypt

    api_key = credentials_decrypt(provider.credentials_encrypted)
    # The embedded Xinference's endpoint is the operator's (XINFERENCE_ENDPOINT, on loopback or
    # the compose network); every other endpoint was typed by a user and is checked at each call.
    check = not provider.is_embedded
    if provider.kind == ProviderKind.XINFERENCE:
        return XinferenceClient(provider.endpoint, api_key=api_key, check=check)
    return OpenAICompatibleClient(provider.endpoint, api_key=api_key, check=check)
