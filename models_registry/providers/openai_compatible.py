"""OpenAI-compatible servers (vLLM, Ollama's /v1, LMDeploy api_server, llama.cpp server): they serve
a fixed set of models, so the platform lists and tests them but cannot launch or stop them."""

from __future__ import annotations

from typing import Any

from models_registry.providers.base import HttpProvider, ProviderUnsupported, RemoteModel


class OpenAICompatibleClient(HttpProvider):
    def running_models(self) -> list[RemoteModel]:
        body = self.request("GET", "/v1/models")
        return [RemoteModel(uid=item["id"], kind="", details=item) for item in body.get("data", [])]

    def launch(self, *, uid: str, kind: str, launch_spec: dict[str, Any], custom_spec: dict[str, Any] | None) -> None:
        raise self._fixed_models()

    def terminate(self, *, uid: str) -> None:
        raise self._fixed_models()

    def _fixed_models(self) -> ProviderUnsupported:
        return ProviderUnsupported(
            f"{self.endpoint} is an OpenAI-compatible server: it serves the models it was started with; "
            "start or stop models on that server"
        )

    def probe_other(self, *, uid: str, kind: str) -> str:
        raise ProviderUnsupported("OpenAI's API has no rerank call: register rerankers on Xinference")
