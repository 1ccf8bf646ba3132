# SPDX-License-Identifier: Apache-2.0
"""``zipvl-bench --serve URL [--serve-dense URL]``: a bounded load generator against running ``zipvl serve``
gateways (loopback only). Poisson arrivals at each ``--rates`` value, a seeded mix of prompt lengths, streamed
chat completions; per rate p50/p95/p99 TTFT and inter-token latency and the output tokens/s, ZipVL next to its
dense twin at the same arrivals; ``--sla ttft_ms=..,itl_ms=..,decode_tps=..`` is checked at every rate on the ZipVL
server (exit 3 with the first miss)."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
import requests

from ..errors import ZipVLConfigError
from .sla import SLACheck

WORDS = ["the", "model", "reads", "a", "long", "page", "about", "rivers", "mountains", "cities", "and", "people",
         "who", "live", "there", "then", "answers", "short", "question", "what", "it", "read"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LoadConfig:
    rates: list[float]  # requests per second
    requests: int = 24  # per rate and server
    prompt_words: tuple[int, ...] = (64, 256, 768)
    max_tokens: int = 32
    seed: int = 0
    timeout_s: float = 300.0
    words: tuple[str, ...] = tuple(WORDS)  # the prompts' vocabulary


def check_url(url: str) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ZipVLConfigError(f"--serve {url}: the load generator only targets loopback servers (127.0.0.1)")
    return url.rstrip("/")


def _prompt(rng, n: int, vocabulary) -> str:
    return " ".join(rng.choice(vocabulary, n))


def _one(url: str, body: dict, t_start: float, out: dict) -> None:
    stamps, err = [], None
    try:
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=body["_timeout"]) as r:
            if r.status_code != 200:
                err = f"HTTP {r.status_code}: {r.text[:200]}"
            else:
                for line in r.iter_lines():
                    if line.startswith(b"data: {"):
                        delta = json.loads(line[6:])["choices"][0]["delta"] if b'"choices"' in line else {}
                        if delta.get("content"):
                            stamps.append(time.perf_counter())
    except requests.RequestException as e:
        err = type(e).__name__
    out.update(start=t_start, stamps=stamps, error=err, end=time.perf_counter())


def run_rate(url: str, rate: float, cfg: LoadConfig) -> dict:
    """cfg.requests requests with exponential inter-arrival times (mean 1/rate), each on its own thread."""
    rng = np.random.default_rng(cfg.seed)
    gaps = rng.exponential(1.0 / rate, cfg.requests)
    lengths = rng.choice(cfg.prompt_words, cfg.requests)
    results = [{} for _ in range(cfg.requests)]
    threads, t0 = [], time.perf_counter()
    for i, (gap, n) in enumerate(zip(np.cumsum(gaps), lengths)):
        time.sleep(max(0.0, t0 + gap - time.perf_counter()))
        body = {"messages": [{"role": "user", "content": _prompt(rng, int(n), cfg.words)}],
                "max_tokens": cfg.max_tokens, "stream": True, "_timeout": cfg.timeout_s}
        # the server ignores unknown fields; the client's own timeout rides along for _one
        t = threading.Thread(target=_one, args=(url, body, time.perf_counter(), results[i]), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(cfg.timeout_s)
    ok = [r for r in results if r.get("stamps") and not r.get("error")]
    ttft = [r["stamps"][0] - r["start"] for r in ok]
    itl = [b - a for r in ok for a, b in zip(r["stamps"], r["stamps"][1:])]
    tokens = sum(len(r["stamps"]) for r in ok)
    span = max((r["end"] for r in results if "end" in r), default=t0) - t0

    def pct(x, q):
        return float(np.percentile(x, q)) if x else None

    errors = [r.get("error") or "no tokens" for r in results if r not in ok]
    return {"rate": rate, "requests": cfg.requests, "ok": len(ok), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "ttft_s": {f"p{q}": pct(ttft, q) for q in (50, 95, 99)},
            "itl_s": {f"p{q}": pct(itl, q) for q in (50, 95, 99)},
            "tokens": tokens, "tokens_per_s": tokens / span if span > 0 else None, "seconds": span}


def gauge(url: str, name: str) -> float:
    """A zipvl gauge from the server's Prometheus ``/metrics``, summed over model instances."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)]
    if not values:
        raise ZipVLConfigError(f"{url}/metrics has no {name}: is this a zipvl serve gateway?")
    return sum(values)


def settle(url: str, timeout_s: float = 30.0) -> dict:
    """Wait until nothing runs or waits and no KV is held (or ``timeout_s``); the gauges then."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = {k: gauge(url, f"zipvl_{k}") for k in ("running_requests", "queue_depth", "kv_bytes_in_use",
                                                      "process_rss_bytes")}
        if not (now["running_requests"] or now["queue_depth"] or now["kv_bytes_in_use"]) \
                or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


RSS_SLACK_MIB = 64.0  # allocator and arena noise a drained server may keep


def memory_check(baseline: dict, after: dict, slack_mib: float = RSS_SLACK_MIB) -> dict:
    """After the load: no KV held, and the server's memory back within ``slack_mib`` of its warmed-up baseline."""
    mib = 2**20
    out = {"rss_baseline_mib": baseline["process_rss_bytes"] / mib, "rss_after_mib": after["process_rss_bytes"] / mib,
           "kv_bytes_after": after["kv_bytes_in_use"], "running_after": after["running_requests"]}
    out["ok"] = bool(after["kv_bytes_in_use"] == 0 and after["running_requests"] == 0
                     and out["rss_after_mib"] <= out["rss_baseline_mib"] + slack_mib)
    return out


def run_serve_bench(servers: dict[str, str], cfg: LoadConfig, progress=print) -> dict:
    """Every rate on every server; around the whole load, each server's memory: a warm-up request of the longest
    prompt, the baseline once it settles, and the same gauges once the load has drained (:func:`memory_check`)."""
    report = {"config": {**cfg.__dict__, "servers": servers}, "rates": [], "memory": {}}
    baselines = {}
    for label, url in servers.items():
        warm = {"messages": [{"role": "user", "content": _prompt(np.random.default_rng(cfg.seed),
                                                                 max(cfg.prompt_words), cfg.words)}],
                "max_tokens": cfg.max_tokens, "stream": True, "_timeout": cfg.timeout_s}
        _one(check_url(url), warm, time.perf_counter(), {})
        baselines[label] = settle(check_url(url))
    for rate in cfg.rates:
        row = {"rate": rate}
        for label, url in servers.items():
            row[label] = run_rate(check_url(url), rate, cfg)
            progress(f"rate {rate:g}/s {label}: p99 TTFT {_ms(row[label]['ttft_s']['p99'])} ms, "
                     f"{row[label]['tokens_per_s'] or 0:.1f} tok/s, {row[label]['errors']} errors")
        report["rates"].append(row)
    for label, url in servers.items():
        m = report["memory"][label] = memory_check(baselines[label], settle(check_url(url)))
        progress(f"{label} after the load: KV bytes in use {m['kv_bytes_after']:.0f}, RSS {m['rss_after_mib']:.0f} "
                 f"MiB (warmed-up baseline {m['rss_baseline_mib']:.0f} MiB): {'ok' if m['ok'] else 'NOT back'}")
    return report


def _ms(x):
    return "-" if x is None else f"{1e3 * x:.0f}"


def sustained(report: dict, label: str, ttft_p99_s: float) -> float | None:
    """Largest rate at which ``label`` had no errors and p99 TTFT <= the budget."""
    ok = [r["rate"] for r in report["rates"] if label in r and not r[label]["errors"]
          and r[label]["ttft_s"]["p99"] is not None and r[label]["ttft_s"]["p99"] <= ttft_p99_s]
    return max(ok) if ok else None


def render(report: dict) -> str:
    labels = [k for k in report["rates"][0] if k != "rate"] if report["rates"] else []
    head = "| rate/s | " + " | ".join(f"{x} TTFT p50/p95/p99 ms | {x} ITL p50/p99 ms | {x} tok/s | {x} err"
                                      for x in labels) + " |"
    lines = [head, "|" + "---|" * (1 + 4 * len(labels))]
    for r in report["rates"]:
        cells = []
        for x in labels:
            m = r[x]
            cells += ["/".join(_ms(m["ttft_s"][p]) for p in ("p50", "p95", "p99")),
                      "/".join(_ms(m["itl_s"][p]) for p in ("p50", "p99")),
                      f"{m['tokens_per_s'] or 0:.1f}", str(m["errors"])]
        lines.append(f"| {r['rate']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_serve_sla(report: dict, budgets: dict[str, float], label: str = "zipvl") -> list[SLACheck]:
    """Every budget at every rate on the ``label`` server (the one being deployed)."""
    checks = []
    for r in report["rates"]:
        m, where = r[label], f"{label} at {r['rate']:g} req/s"
        for metric, budget in budgets.items():
            value = {"ttft_ms": m["ttft_s"]["p99"], "itl_ms": m["itl_s"]["p99"]}.get(metric)
            if metric in ("ttft_ms", "itl_ms"):
                value = None if value is None else 1e3 * value
            elif metric == "decode_tps":
                value = m["tokens_per_s"]
            if m["errors"]:
                value, where = None, f"{where}: {m['errors']} failed requests"
            if metric != "rss_growth_mib":
                checks.append(SLACheck(metric, budget, value, f"{where}, p99" if "ms" in metric else where))
    if label in report.get("memory", {}):  # memory back to baseline is part of every serving SLA
        m = report["memory"][label]
        growth = None if m["kv_bytes_after"] or m["running_after"] else m["rss_after_mib"] - m["rss_baseline_mib"]
        checks.append(SLACheck("rss_growth_mib", budgets.get("rss_growth_mib", RSS_SLACK_MIB), growth,
                               f"{label} after the load" + ("" if growth is not None else
                                                           ": KV still held or requests still running")))
    return checks
