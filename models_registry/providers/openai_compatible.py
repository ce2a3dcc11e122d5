"""OpenAI-compatible servers (vLLM, Ollama's /v1, LMDeploy api_server, llama.cpp server): they serve
a fixed set of models, so the platform lists and tests them but cannot launch or stop them."""

from __future__ import annotations

import time
from typing import Any

from models_registry.providers.base import HttpProvider, ProbeResult, ProviderUnsupported, RemoteModel


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

    def probe(self, *, uid: str, kind: str) -> ProbeResult:
        started = time.perf_counter()
        if kind == "embedding":
            body = self.request("POST", "/v1/embeddings", json={"model": uid, "input": ["ping"]}, timeout=60)
            detail = f"returned a {len(body['data'][0]['embedding'])}-dimensional embedding"
        elif kind == "llm":
            body = self.request(
                "POST",
                "/v1/chat/completions",
                json={"model": uid, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 8},
                timeout=60,
            )
            detail = f"answered {body['choices'][0]['message']['content']!r}"
        else:
            raise ProviderUnsupported("OpenAI's API has no rerank call: register rerankers on Xinference")
        return ProbeResult(ok=True, detail=detail, duration_ms=int((time.perf_counter() - started) * 1000))
