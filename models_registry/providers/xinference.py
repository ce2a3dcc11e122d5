"""Xinference's REST API: model families, custom registrations, launch, terminate, status."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from models_registry.providers.base import HttpProvider, ProviderRefused, RemoteModel

FAMILIES_TIMEOUT_S = 60.0
# Our kinds and Xinference's model_type names.
XINFERENCE_MODEL_TYPES = {"llm": "LLM", "embedding": "embedding", "rerank": "rerank"}
KINDS_BY_MODEL_TYPE = {value: key for key, value in XINFERENCE_MODEL_TYPES.items()}


def launch_payload(*, uid: str, kind: str, launch_spec: dict[str, Any]) -> dict[str, Any]:
    """Xinference's POST /v1/models body. `lora_adapters: [{"name", "path"}]` (what SWIFT, XTuner
    and LLaMA-Factory produce) becomes its peft_model_config."""
    payload = {key: value for key, value in launch_spec.items() if key != "lora_adapters"}
    payload.update({"model_uid": uid, "model_type": XINFERENCE_MODEL_TYPES[kind]})
    payload.setdefault("model_name", uid)
    adapters = launch_spec.get("lora_adapters") or []
    if adapters:
        payload["peft_model_config"] = {
            "lora_list": [{"lora_name": adapter["name"], "local_path": adapter["path"]} for adapter in adapters]
        }
    return payload


class XinferenceClient(HttpProvider):
    def running_models(self) -> list[RemoteModel]:
        body = self.request("GET", "/v1/models")
        return [
            RemoteModel(uid=item["id"], kind=KINDS_BY_MODEL_TYPE.get(item.get("model_type", ""), ""), details=item)
            for item in body.get("data", [])
        ]

    def families(self, kind: str) -> list[dict[str, Any]]:
        """Built-in and custom model families of one kind: [{"model_name", "is_builtin"}]."""
        # Hundreds of built-in families: slower than the other calls on a busy server.
        path = f"/v1/model_registrations/{XINFERENCE_MODEL_TYPES[kind]}"
        return list(self.request("GET", path, timeout=FAMILIES_TIMEOUT_S))

    def is_registered(self, *, kind: str, model_name: str) -> bool:
        return any(family["model_name"] == model_name for family in self.families(kind))

    def register(self, *, kind: str, spec: dict[str, Any]) -> None:
        """Register a custom model (a local HF folder or GGUF file named by the spec's model_uri)."""
        self.request(
            "POST",
            f"/v1/model_registrations/{XINFERENCE_MODEL_TYPES[kind]}",
            json={"model": json.dumps(spec), "persist": False},
        )

    def launch(self, *, uid: str, kind: str, launch_spec: dict[str, Any], custom_spec: dict[str, Any] | None) -> None:
        """Idempotent: a model already running under this uid is left as it is."""
        if any(model.uid == uid for model in self.running_models()):
            return
        if custom_spec is not None and not self.is_registered(kind=kind, model_name=custom_spec["model_name"]):
            self.register(kind=kind, spec=custom_spec)
        self.request(
            "POST",
            "/v1/models",
            json=launch_payload(uid=uid, kind=kind, launch_spec=launch_spec),
            timeout=settings.XINFERENCE_LAUNCH_TIMEOUT_S,
        )

    def terminate(self, *, uid: str) -> None:
        try:
            self.request("DELETE", f"/v1/models/{uid}")
        except ProviderRefused as exc:
            # Already gone is what terminate wanted.
            if exc.upstream_status not in (400, 404):
                raise

    def probe_other(self, *, uid: str, kind: str) -> str:
        """Rerank two documents (Xinference's /v1/rerank)."""
        body = self.request(
            "POST", "/v1/rerank", json={"model": uid, "query": "ping", "documents": ["ping", "pong"]}, timeout=60
        )
        return f"ranked {len(body['results'])} documents"
