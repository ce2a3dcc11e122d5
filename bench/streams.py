"""`make bench-streams`: what the web tier itself does to time to first token when 50 chat streams
run at once. On this machine the real model (SmolLM2 on 2 CPU cores) serves one sequence at a
time, so 50 streams measure its queue, not the platform (bench/run.py reports that too). Here the
model is FakeGpuModelServer: an OpenAI-compatible server that answers every request at once and in
parallel, as a GPU server with continuous batching would (first token after FAKE_FIRST_TOKEN_S,
then a token every FAKE_TOKEN_INTERVAL_S). It stands in only for the GPU this machine lacks.

Everything else is real: uvicorn serving chatplatform.asgi as `make run` does (a process per core), the embedded
PostgreSQL and Redis, API-key authentication, rate limits, the audit log, turn_prepare, the SSE
view and the saved message. Each stream is a POST to /api/v1/conversations/{id}/messages/ with
"stream": true in its own conversation, timed by the client from the request to the first token
event. The same requests sent straight to the fake server give the model's own side.

Environment: BENCH_STREAMS (50), BENCH_STREAM_SAMPLES (single-stream samples, 20). Appends its
section to the report named by BENCH_REPORT (default <date>-<machine>-streams)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from run import append_report, log, percentile, platform_setup, services_env, start_served_web

STREAMS = int(os.environ.get("BENCH_STREAMS", "50"))
SAMPLES = int(os.environ.get("BENCH_STREAM_SAMPLES", "20"))
FAKE_FIRST_TOKEN_S = 0.05
FAKE_TOKEN_INTERVAL_S = 0.02
FAKE_TOKENS = 32


class FakeGpuModelHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible streaming chat completion, the same for every request."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not request.get("stream"):
            self._whole_answer()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        time.sleep(FAKE_FIRST_TOKEN_S)
        for number in range(FAKE_TOKENS):
            self._event({"role": "assistant", "content": f"word{number} "}, None)
            time.sleep(FAKE_TOKEN_INTERVAL_S)
        self._event({}, "stop")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _whole_answer(self) -> None:
        """A non-streamed completion (the worker's titles and summaries), after the first-token wait."""
        time.sleep(FAKE_FIRST_TOKEN_S)
        body = {
            "id": "fake",
            "object": "chat.completion",
            "created": 0,
            "model": "fake-gpu",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "A short title"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11},
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _event(self, delta: dict[str, Any], finish: str | None) -> None:
        body = {
            "id": "fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake-gpu",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        self._chunk(f"data: {json.dumps(body)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


class FakeGpuModelServer(ThreadingHTTPServer):
    request_queue_size = 256  # the listen backlog: 50 connections arrive at once
    daemon_threads = True


async def first_token_ms(client: Any, url: str, body: dict[str, Any], headers: dict[str, str]) -> float | None:
    started = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {await response.aread()!r}")
        async for line in response.aiter_lines():
            token = line.startswith("event: token") or (line.startswith("data: {") and '"content": "word' in line)
            if first is None and token:
                first = (time.perf_counter() - started) * 1000
    return first


def main() -> None:
    team, user = platform_setup()
    from accounts.services import api_key_create
    from chat.services import assistant_create, conversation_create
    from models_registry.services import provider_create, registration_create

    fake = FakeGpuModelServer(("127.0.0.1", 0), FakeGpuModelHandler)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    fake_url = f"http://127.0.0.1:{fake.server_address[1]}"
    name = f"fake-gpu-{time.time():.0f}"
    provider = provider_create(team=team, name=name, kind="openai_compatible", endpoint=fake_url)
    llm = registration_create(provider=provider, kind="llm", name=name, provider_model_uid="fake-gpu")
    assistant = assistant_create(team=team, name=name, llm=llm, max_answer_tokens=FAKE_TOKENS)
    conversations = [
        conversation_create(team=team, owner=user, assistant=assistant).pk for _ in range(SAMPLES + STREAMS + 1)
    ]
    _key, secret = api_key_create(user=user, team=team, name=name)

    web, base = start_served_web(services_env())
    try:
        figures = asyncio.run(measure(base, fake_url, secret, conversations))
    finally:
        web.terminate()
        web.wait(timeout=30)
        fake.shutdown()
    append_report(render(figures), "-streams")


async def measure(base: str, fake_url: str, secret: str, conversations: list[int]) -> dict[str, list[float | None]]:
    import httpx

    headers = {"Authorization": f"Bearer {secret}"}
    body = {"content": "Say something.", "stream": True}
    direct_body = {"model": "fake-gpu", "stream": True, "messages": [{"role": "user", "content": "Say something."}]}
    limits = httpx.Limits(max_connections=STREAMS * 2, max_keepalive_connections=STREAMS * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        messages_url = f"{base}/api/v1/conversations/{{}}/messages/"
        direct_url = f"{fake_url}/v1/chat/completions"
        await first_token_ms(client, messages_url.format(conversations[-1]), body, headers)  # warm-up, unmeasured
        single = [
            await first_token_ms(client, messages_url.format(pk), body, headers) for pk in conversations[:SAMPLES]
        ]
        direct_single = [await first_token_ms(client, direct_url, direct_body, {}) for _ in range(SAMPLES)]
        log(f"{STREAMS} streams at once through the platform")
        batch = conversations[SAMPLES : SAMPLES + STREAMS]
        concurrent = await asyncio.gather(
            *(first_token_ms(client, messages_url.format(pk), body, headers) for pk in batch)
        )
        direct_concurrent = await asyncio.gather(
            *(first_token_ms(client, direct_url, direct_body, {}) for _ in range(STREAMS))
        )
    return {
        "single": single,
        "concurrent": list(concurrent),
        "direct_single": direct_single,
        "direct_concurrent": list(direct_concurrent),
    }


def render(figures: dict[str, list[float | None]]) -> str:
    def p50_p95(values: list[float | None]) -> tuple[float, float]:
        present = [value for value in values if value is not None]
        assert len(present) == len(values), "a stream produced no token"
        return percentile(present, 0.5), percentile(present, 0.95)

    platform_single, platform_concurrent = p50_p95(figures["single"]), p50_p95(figures["concurrent"])
    direct_single, direct_concurrent = p50_p95(figures["direct_single"]), p50_p95(figures["direct_concurrent"])
    rows = {
        "one stream at a time, through the platform": platform_single,
        f"{STREAMS} streams at once, through the platform": platform_concurrent,
        "one stream at a time, straight to the model server": direct_single,
        f"{STREAMS} streams at once, straight to the model server": direct_concurrent,
    }
    platform_ratio = platform_concurrent[1] / platform_single[1]
    table = "\n".join(f"| {label} | {p50:.0f} | {p95:.0f} |" for label, (p50, p95) in rows.items())
    fake = (
        f"first token after {FAKE_FIRST_TOKEN_S * 1000:.0f} ms, {FAKE_TOKENS} tokens "
        f"{FAKE_TOKEN_INTERVAL_S * 1000:.0f} ms apart, every request served in parallel, as a GPU server would"
    )
    return (
        f"\n## {STREAMS} concurrent streams through the web tier (FakeGpuModelServer)\n\n"
        f"A uvicorn process per core ({os.cpu_count()} cores) serving chatplatform.asgi with pooled database "
        "connections, as `make run` serves; the model is FakeGpuModelServer "
        f"({fake}): it stands in for the GPU this machine lacks, so the figures are the platform's own. Time to "
        "first token in ms, measured by the client from the request (authentication, turn_prepare, the SSE view)."
        f"\n\n| | p50 | p95 |\n| --- | ---: | ---: |\n{table}\n\n"
        f"p95 with {STREAMS} streams at once / p95 of one stream: **{platform_ratio:.1f}x** through the platform, "
        f"{direct_concurrent[1] / direct_single[1]:.1f}x for the model server alone. "
        "Reproduce: `make bench-streams`.\n"
    )


if __name__ == "__main__":
    main()
