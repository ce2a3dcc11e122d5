"""What every provider client offers, and the errors they raise."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from chatplatform.domain_errors import DomainError

DEFAULT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 60.0


class ProviderError(DomainError):
    """Base class; the message is meant for the person who configured the provider."""

    status_code = 502
    code = "provider_error"


class ProviderUnreachable(ProviderError):
    status_code = 503
    code = "provider_unreachable"

    def __init__(self, endpoint: str, detail: str) -> None:
        super().__init__(f"the model server at {endpoint} is unreachable ({detail}): check that it runs")
        self.endpoint = endpoint


class ProviderRefused(ProviderError):
    """The server answered with an error; its own message is kept as is. Reported as 400: what
    a model server refuses is the request a person configured (a wrong name, engine or size)."""

    status_code = 400
    code = "provider_refused"

    def __init__(self, endpoint: str, status_code: int, message: str) -> None:
        super().__init__(f"the model server at {endpoint} refused ({status_code}): {message}")
        self.endpoint = endpoint
        self.status_code = status_code
        self.server_message = message


class ProviderUnsupported(ProviderError):
    status_code = 400
    code = "unsupported"


@dataclass(frozen=True)
class RemoteModel:
    uid: str
    kind: str  # llm, embedding, rerank, or "" when the server does not say
    details: dict[str, Any]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    duration_ms: int


class ProviderClient(Protocol):
    endpoint: str

    def running_models(self) -> list[RemoteModel]: ...

    def launch(
        self, *, uid: str, kind: str, launch_spec: dict[str, Any], custom_spec: dict[str, Any] | None
    ) -> None: ...

    def terminate(self, *, uid: str) -> None: ...

    def probe(self, *, uid: str, kind: str) -> ProbeResult: ...


class HttpProvider:
    """Plain HTTP to a model server, mapping transport failures and error answers to ProviderError."""

    def __init__(self, endpoint: str, *, api_key: str = "") -> None:
        self.endpoint = endpoint.rstrip("/")
        self.api_key = api_key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def request(self, method: str, path: str, *, timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> Any:
        try:
            response = httpx.request(method, f"{self.endpoint}{path}", headers=self.headers, timeout=timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise ProviderUnreachable(self.endpoint, f"no answer within {timeout:.0f}s") from exc
        except httpx.TransportError as exc:
            raise ProviderUnreachable(self.endpoint, type(exc).__name__) from exc
        if response.is_error:
            raise ProviderRefused(self.endpoint, response.status_code, error_message(response))
        return response.json() if response.content else None

    def probe(self, *, uid: str, kind: str) -> ProbeResult:
        """One real call through the OpenAI-compatible API: a short chat or an embedding."""
        started = time.perf_counter()
        if kind == "llm":
            body = self.request(
                "POST",
                "/v1/chat/completions",
                json={"model": uid, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 8},
                timeout=PROBE_TIMEOUT_S,
            )
            detail = f"answered {body['choices'][0]['message']['content']!r}"
        elif kind == "embedding":
            body = self.request(
                "POST", "/v1/embeddings", json={"model": uid, "input": ["ping"]}, timeout=PROBE_TIMEOUT_S
            )
            detail = f"returned a {len(body['data'][0]['embedding'])}-dimensional embedding"
        else:
            detail = self.probe_other(uid=uid, kind=kind)
        return ProbeResult(ok=True, detail=detail, duration_ms=int((time.perf_counter() - started) * 1000))

    def probe_other(self, *, uid: str, kind: str) -> str:
        raise ProviderUnsupported(f"{self.endpoint} offers no {kind} call to test")


def error_message(response: httpx.Response) -> str:
    """The server's own message: FastAPI's {"detail"}, OpenAI's {"error": {"message"}}, or the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:2000] or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(body)[:2000]
