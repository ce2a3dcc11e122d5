"""What every provider client offers, and the errors they raise."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import httpx

from core.domain_errors import DomainError
from core.outbound import UnsafeUrl, outbound_client

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
    """The server answered with an error (or a redirect, which is not followed); its own message
    is kept, shortened (core.outbound.upstream_reason). Reported as 400: what a model
    server refuses is the request a person configured (a wrong name, engine or size)."""

    status_code = 400
    code = "provider_refused"

    def __init__(self, endpoint: str, status_code: int, message: str) -> None:
        super().__init__(f"the model server at {endpoint} refused ({status_code}): {message}")
        self.endpoint = endpoint
        self.upstream_status = status_code
        # How the API answers: the server's 4xx as it is (callers read 401/403 as bad credentials),
        # its 5xx as 502 (the server failed, not the caller), a redirect as 400 (a 3xx answer
        # without a Location would tell the API's client nothing).
        self.status_code = status_code if 400 <= status_code < 500 else 502 if status_code >= 500 else 400
        self.server_message = message


class ProviderUnsafe(ProviderError):
    """The endpoint's host resolves, now, to an address the server does not connect to (it may
    have passed when it was saved: DNS answers change)."""

    status_code = 400
    code = "unsafe_url"

    def __init__(self, endpoint: str, reason: UnsafeUrl) -> None:
        super().__init__(f"the model server at {endpoint} is not called: {reason}")
        self.endpoint = endpoint


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
    """HTTP to a model server through the SSRF guard's transport (checked at every call, pinned,
    no redirects, short error reasons), mapping failures and error answers to ProviderError.
    `check=False` only for a server the operator configured (the embedded Xinference)."""

    def __init__(self, endpoint: str, *, api_key: str = "", check: bool = True) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.api_key = api_key
        self.check = check

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def request(self, method: str, path: str, *, timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> Any:
        refused = partial(ProviderUnsafe, self.endpoint)
        try:
            with outbound_client(timeout=timeout, check=self.check, on_refused=refused) as client:
                response = client.request(method, f"{self.endpoint}{path}", headers=self.headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise ProviderUnreachable(self.endpoint, f"no answer within {timeout:.0f}s") from exc
        except httpx.TransportError as exc:
            raise ProviderUnreachable(self.endpoint, type(exc).__name__) from exc
        raise_for_answer(self.endpoint, response)
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


def raise_for_answer(endpoint: str, response: httpx.Response) -> None:
    """ProviderRefused for anything but a 2xx: a redirect (not followed) is as much a refusal as
    an error, and must not be read as an answer."""
    if not response.is_success:
        raise ProviderRefused(endpoint, response.status_code, error_message(response))


def error_message(response: httpx.Response) -> str:
    """The short reason the outbound transport put in place of the server's body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return response.reason_phrase or f"HTTP {response.status_code}"
