# SPDX-License-Identifier: Apache-2.0
"""A real ``zipvl serve`` (Triton + gateway) on a tiny engine: concurrent streams equal Engine.generate's greedy
tokens while the batch changes membership, a disconnected client's cache is freed, every bad input gets one 4xx
while another request streams, and the KV bytes in use return to 0."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from zipvl.bench.serve_load import LoadConfig, gauge, run_serve_bench
from zipvl.runtime import Engine, Prompt
from zipvl.serve.tiny import make_processor

PROC = make_processor()


def words(ids) -> str:
    return " ".join(f"w{i}" for i in ids)


def png_data_url(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def expected_text(engine, text, image_url, max_tokens) -> str:
    """Engine.generate alone on the same prompt (processor applied here, independently of the gateway)."""
    if image_url:
        img = Image.open(io.BytesIO(base64.b64decode(image_url.split(",", 1)[1]))).convert("RGB")
        enc = PROC(images=img, text="<image>\n" + text, return_tensors="np")
    else:
        enc = PROC(text=text, return_tensors="np")
    prompt = Prompt(enc["input_ids"][0], enc.get("pixel_values"))
    ids = engine.generate([prompt], max_new_tokens=max_tokens).tokens[0].tolist()
    eos = engine.desc.get("eos_token_id")
    ids = ids[: ids.index(eos)] if eos in ids else ids
    return PROC.tokenizer.decode(ids, skip_special_tokens=True)


def chat_body(text, image_url=None, max_tokens=8, stream=True, **extra):
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}] \
        if image_url else text
    return {"model": "zipvl", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": stream, **extra}


def stream_text(url, body, chunks: list | None = None) -> tuple[str, str]:
    """POST with stream: true; -> (text, finish_reason) from the SSE events."""
    out, finish = [], None
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            choice = event["choices"][0]
            out.append(choice["delta"].get("content", ""))
            finish = choice["finish_reason"] or finish
            if chunks is not None:
                chunks.append(event)
    return "".join(out).strip(), finish


def wait_idle(url, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gauge(url, "zipvl_kv_bytes_in_use") == 0 and gauge(url, "zipvl_running_requests") == 0:
            return
        time.sleep(0.3)
    pytest.fail("KV bytes in use did not return to 0")


@pytest.fixture(scope="module")
def one_slot_server(served_engine, tmp_path_factory, serve):
    """One request decoded at a time and one waiting: a third concurrent request is turned away."""
    with serve(served_engine, tmp_path_factory.mktemp("serve-log") / "serve.log", "--max-running", "1",
               "--max-queue", "1") as url:
        yield url


@pytest.fixture(scope="module")
def engine(served_engine):
    return Engine(served_engine, verify=False)


def test_models_health_ready(server):
    assert requests.get(f"{server}/health", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{server}/ready", timeout=5).status_code == 200
    assert [m["id"] for m in requests.get(f"{server}/v1/models", timeout=5).json()["data"]] == ["zipvl"]


def test_concurrent_streams_match_engine_generate(server, engine):
    """5 clients start at different times with different lengths: the batch gains and loses members mid-run; each
    gets Engine.generate's tokens for its prompt alone (one with an image, one non-streaming)."""
    rng = np.random.default_rng(0)
    jobs = [(words(rng.integers(3, 990, n)), png_data_url(i) if i == 1 else None, m, delay)
            for i, (n, m, delay) in enumerate([(30, 40, 0.0), (12, 12, 0.0), (50, 25, 0.15), (8, 60, 0.3),
                                               (20, 5, 0.5)])]
    results = {}

    def client(i, text, image, max_tokens, delay):
        time.sleep(delay)
        if i == 4:
            r = requests.post(f"{server}/v1/chat/completions", json=chat_body(text, image, max_tokens, stream=False),
                              timeout=60).json()
            results[i] = (r["choices"][0]["message"]["content"].strip(), r["choices"][0]["finish_reason"])
        else:
            results[i] = stream_text(server, chat_body(text, image, max_tokens))

    threads = [threading.Thread(target=client, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, (text, image, max_tokens, _) in enumerate(jobs):
        assert results[i][0] == expected_text(engine, text, image, max_tokens), i
    wait_idle(server)


def test_triton_generate_stream_gives_token_ids(server, engine):
    """Triton's own HTTP streaming endpoint (KServe v2 generate_stream): one token id per event."""
    prompt = PROC(text=words(range(100, 130)), return_tensors="np")["input_ids"][0]
    expected = engine.generate([Prompt(prompt)], max_new_tokens=10).tokens[0].tolist()
    log = requests.get(f"{server}/metrics", timeout=5).text
    assert "nv_inference_request_success" in log  # Triton's own metrics are exported with ours
    port = server.triton_http
    events = []
    with requests.post(f"http://127.0.0.1:{port}/v2/models/zipvl/generate_stream",
                       json={"input_ids": prompt.tolist(), "max_tokens": 10}, stream=True, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    ids = [int(np.ravel(e["output_ids"])[0]) for e in events if "output_ids" in e]
    eos = engine.desc.get("eos_token_id")
    assert ids == (expected[: expected.index(eos)] if eos in expected else expected)


def test_disconnect_frees_the_cache(server):
    cancelled = gauge(server, "zipvl_requests_cancelled")
    # 1,900 tokens: seconds of decoding even for the tiny engine, so the cancel always lands before the end
    body = chat_body(words(range(3, 40)), max_tokens=1900)
    with requests.post(f"{server}/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    # the client went away after ~2 tokens of 1,900: the request is cancelled and its cache freed
    deadline = time.monotonic() + 20
    while gauge(server, "zipvl_requests_cancelled") == cancelled and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gauge(server, "zipvl_requests_cancelled") == cancelled + 1
    wait_idle(server)


BAD = [
    ("malformed JSON", b'{"messages": [', 400, "not valid JSON"),
    ("no messages", {"model": "zipvl"}, 400, "messages"),
    ("undecodable image", chat_body("w5", "data:image/png;base64," + base64.b64encode(b"not a png").decode()),
     400, "could not be decoded"),
    ("image by URL", chat_body("w5", "http://example.invalid/x.png"), 400, "data: URLs"),
    ("prompt over the limit", chat_body(words(3 + i % 990 for i in range(2100)), max_tokens=8), 400, "beyond the engine's limit"),
    ("max_tokens 0", chat_body("w5", max_tokens=0), 400, "max_tokens"),
    ("max_tokens too large", chat_body("w5", max_tokens=10**6), 400, "max_tokens"),
    ("max_tokens not an int", chat_body("w5", max_tokens="8"), 400, "max_tokens"),
    ("unknown model", {**chat_body("w5"), "model": "gpt-9"}, 404, "not found"),
]


def test_bad_inputs_get_one_4xx_while_another_request_streams(server, engine):
    text = words(range(200, 240))
    result = {}
    t = threading.Thread(target=lambda: result.update(out=stream_text(server, chat_body(text, max_tokens=120))))
    t.start()
    for name, body, status, message in BAD:
        kw = {"data": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
            else {"json": body}
        r = requests.post(f"{server}/v1/chat/completions", timeout=30, **kw)
        assert r.status_code == status, (name, r.text)
        err = r.json()["error"]["message"]
        assert message in err and "Traceback" not in err and "\n" not in err, (name, err)
    t.join(120)
    assert result["out"][0] == expected_text(engine, text, None, 120)
    assert requests.get(f"{server}/ready", timeout=5).status_code == 200
    wait_idle(server)


def test_stop_string_ends_the_stream(server, engine):
    text = words(range(50, 80))
    full = expected_text(engine, text, None, 12).split()
    stop = full[4]
    got, finish = stream_text(server, chat_body(text, max_tokens=12, stop=[stop]))
    cut = " ".join(full).index(stop)
    assert got == " ".join(full)[:cut].strip() and finish == "stop"
    wait_idle(server)


def test_full_queue_answers_429_and_the_queued_request_still_runs(one_slot_server, engine):
    url, queued_text, result = one_slot_server, words(range(100, 130)), {}
    with requests.post(f"{url}/v1/chat/completions", json=chat_body(words(range(3, 40)), max_tokens=1900),
                       stream=True, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):  # decoding: the one slot is taken for seconds (1,900 tokens)
            next(lines)
        t = threading.Thread(target=lambda: result.update(out=stream_text(url, chat_body(queued_text, max_tokens=10))))
        t.start()
        deadline = time.monotonic() + 20
        while gauge(url, "zipvl_queue_depth") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gauge(url, "zipvl_queue_depth") == 1
        turned_away = requests.post(f"{url}/v1/chat/completions", json=chat_body("w5 w6"), timeout=30)
        assert turned_away.status_code == 429, turned_away.text
        err = turned_away.json()["error"]
        assert err["type"] == "rate_limit_error" and "overloaded" in err["message"] and "\n" not in err["message"]
    # the long request's client left: its slot frees and the queued request streams to the end
    t.join(60)
    assert result["out"][0] == expected_text(engine, queued_text, None, 10)
    wait_idle(url)


def test_load_bench_drains_and_memory_returns_to_baseline(server):
    """zipvl-bench --serve's own run, bounded: every request answered, then no KV held and the server's memory back
    near its warmed-up baseline."""
    cfg = LoadConfig(rates=[8.0], requests=6, prompt_words=(8, 40), max_tokens=6, timeout_s=60,
                     words=tuple(f"w{i}" for i in range(3, 990)))
    report = run_serve_bench({"zipvl": server}, cfg, progress=lambda m: None)
    row = report["rates"][0]["zipvl"]
    assert row["ok"] == 6 and row["errors"] == 0 and row["ttft_s"]["p99"] is not None, row
    memory = report["memory"]["zipvl"]
    assert memory["kv_bytes_after"] == 0 and memory["running_after"] == 0
    assert memory["rss_baseline_mib"] > 0 and memory["ok"], memory
