# SPDX-License-Identifier: Apache-2.0
"""The OpenAI-compatible gateway (FastAPI) in front of Triton: tokenises (the engine's own processor), streams the
Triton model's tokens back as chat completions (SSE with ``stream: true``), applies ``stop`` strings, and measures
what a client sees (TTFT, inter-token latency, tokens) for Prometheus.

Triton's answer to a bad request arrives before the first token, so the HTTP status is known before the body
starts: a ``[4xx]`` prefix (see :mod:`.backend`) becomes that status. A client that disconnects closes the gRPC
stream, which Triton turns into a cancellation of the request.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from dataclasses import dataclass

import numpy as np
import prometheus_client as prom
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from .protocol import BadRequest, ChatRequest, parse_chat

_STATUS = re.compile(r"\[(\d{3})\]\s*(.*)", re.DOTALL)


@dataclass
class GatewayConfig:
    model: str  # the served model name (GET /v1/models)
    triton_grpc: str  # host:port
    triton_metrics: str  # http://host:port/metrics
    triton_model: str
    processor: object  # transformers processor / tokenizer, or None
    max_sequence: int


class Metrics:
    def __init__(self):
        self.registry = prom.CollectorRegistry()
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.ttft = prom.Histogram("zipvl_time_to_first_token_seconds", "TTFT seen by the gateway",
                                   buckets=buckets, registry=self.registry)
        self.itl = prom.Histogram("zipvl_inter_token_latency_seconds", "time between streamed tokens",
                                  buckets=buckets, registry=self.registry)
        self.tokens = prom.Counter("zipvl_generated_tokens", "tokens sent to clients (tokens/s = rate())",
                                   registry=self.registry)
        self.requests = prom.Counter("zipvl_requests", "chat requests by HTTP status", ["status"],
                                     registry=self.registry)
        self.active = prom.Gauge("zipvl_active_streams", "open client streams", registry=self.registry)


def _upstream_error(message: str) -> BadRequest:
    m = _STATUS.search(message)
    return BadRequest(int(m.group(1)), m.group(2).strip()) if m else BadRequest(502, message)


class TritonStream:
    """One request's token stream from the Triton model over gRPC (tritonclient asyncio)."""

    def __init__(self, client, cfg: GatewayConfig, chat: ChatRequest):
        self.client, self.cfg, self.chat = client, cfg, chat

    def _inputs(self):
        from tritonclient.grpc import InferInput

        p, out = self.chat.prompt, []

        def add(name, array, dtype):
            x = InferInput(name, list(array.shape), dtype)
            x.set_data_from_numpy(array)
            out.append(x)

        add("input_ids", p.input_ids.astype(np.int64), "INT64")
        add("max_tokens", np.array([self.chat.max_tokens], dtype=np.int32), "INT32")
        if p.pixel_values is not None:
            px = np.asarray(p.pixel_values, dtype=np.float32)
            add("pixel_values", px.reshape(-1), "FP32")
            add("pixel_shape", np.array(px.shape, dtype=np.int64), "INT64")
        for name in ("image_sizes", "image_grid_thw"):
            if getattr(p, name) is not None:
                add(name, np.asarray(getattr(p, name), dtype=np.int64).reshape(-1), "INT64")
        return out

    async def tokens(self):
        inputs = self._inputs()

        async def requests():
            yield {"model_name": self.cfg.triton_model, "inputs": inputs, "request_id": uuid.uuid4().hex}

        async for result, error in self.client.stream_infer(requests()):
            if error is not None:
                raise _upstream_error(str(error))
            ids = result.as_numpy("output_ids")
            if ids is None or ids.size == 0:
                continue  # the empty final response
            yield int(ids.reshape(-1)[0])


class Detokenizer:
    """Incremental text with stop strings: ``push(token) -> (new text, stopped)``."""

    def __init__(self, processor, stop: list[str]):
        self.tok = getattr(processor, "tokenizer", processor)
        self.stop, self.ids, self.sent = stop, [], ""

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            if s in text:
                text = text[: text.index(s)]
                new, self.sent = text[len(self.sent):], text
                return new, True
        # hold back a possible stop-string prefix and an unfinished multi-byte character
        hold = max([len(s) - 1 for s in self.stop] + [0])
        ready = text[: len(text) - hold] if hold else text
        ready = ready.rstrip("\ufffd")
        new = ready[len(self.sent):] if ready.startswith(self.sent) else ""
        self.sent += new
        return new, False

    def flush(self) -> str:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        new = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = text
        return new


def create_app(cfg: GatewayConfig) -> FastAPI:
    import tritonclient.grpc.aio as grpcclient

    app = FastAPI(title="zipvl", docs_url=None, redoc_url=None)
    metrics = Metrics()
    state: dict = {}

    def client():
        if "client" not in state:  # created on the server's event loop
            state["client"] = grpcclient.InferenceServerClient(cfg.triton_grpc)
        return state["client"]

    def error(status: int, message: str) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status, "error")
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # never a stack trace to the client
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        try:
            ok = await client().is_model_ready(cfg.triton_model)
        except Exception:  # noqa: BLE001 - not ready, whatever the cause
            ok = False
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": cfg.model, "object": "model", "created": 0, "owned_by": "zipvl"}]}

    @app.get("/metrics")
    async def prometheus():
        own = prom.generate_latest(metrics.registry).decode()

        def triton():
            try:
                with urllib.request.urlopen(cfg.triton_metrics, timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return ""

        return PlainTextResponse(own + await asyncio.to_thread(triton), media_type=prom.CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            req = await asyncio.to_thread(parse_chat, await request.body(), cfg.model, cfg.processor,
                                          cfg.max_sequence)
        except BadRequest as e:
            return error(e.status, e.message)
        t0 = time.perf_counter()
        tokens = TritonStream(client(), cfg, req).tokens()
        try:
            first = await tokens.__anext__()  # Triton's error, if any, comes before the first token
        except BadRequest as e:
            await tokens.aclose()
            return error(e.status, e.message)
        except StopAsyncIteration:
            first = None
        metrics.ttft.observe(time.perf_counter() - t0)
        metrics.requests.labels("200").inc()
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            return StreamingResponse(_sse(rid, created, req, first, tokens, cfg, metrics),
                                     media_type="text/event-stream")
        return JSONResponse(await _collect(rid, created, req, first, tokens, cfg, metrics))

    return app


async def _generate(req, first, tokens, cfg, metrics):
    """(text piece, finish_reason | None) as tokens arrive; closes the upstream stream when done."""
    detok, count, last = Detokenizer(cfg.processor, req.stop), 0, time.perf_counter()
    metrics.active.inc()
    try:
        token = first
        while token is not None:
            count += 1
            metrics.tokens.inc()
            piece, stopped = detok.push(token)
            if stopped:
                yield piece, "stop", count
                return
            if piece:
                yield piece, None, count
            try:
                token = await tokens.__anext__()
            except StopAsyncIteration:
                token = None
            now = time.perf_counter()
            if token is not None:
                metrics.itl.observe(now - last)
            last = now
        yield detok.flush(), "length" if count >= req.max_tokens else "stop", count
    finally:
        metrics.active.dec()
        await tokens.aclose()  # cancels the Triton request if it is still running (client gone, stop string)


def _chunk(rid, created, model, delta, finish=None):
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def _sse(rid, created, req, first, tokens, cfg, metrics):
    def event(obj):
        return f"data: {json.dumps(obj)}\n\n"

    yield event(_chunk(rid, created, req.model, {"role": "assistant", "content": ""}))
    try:
        async for piece, finish, _ in _generate(req, first, tokens, cfg, metrics):
            if piece:
                yield event(_chunk(rid, created, req.model, {"content": piece}))
            if finish:
                yield event(_chunk(rid, created, req.model, {}, finish))
    except BadRequest as e:  # failed mid-stream (e.g. timeout): the status line is gone, say it in the stream
        yield event({"error": {"message": e.message, "code": e.status}})
    yield "data: [DONE]\n\n"


async def _collect(rid, created, req, first, tokens, cfg, metrics):
    text, finish, count = [], "stop", 0
    async for piece, fin, count in _generate(req, first, tokens, cfg, metrics):
        text.append(piece)
        finish = fin or finish
    n = len(req.prompt.input_ids)
    return {"id": rid, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": n, "completion_tokens": count, "total_tokens": n + count}}
