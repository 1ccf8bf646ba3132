# SPDX-License-Identifier: Apache-2.0
"""Decode benchmark: tokens/s vs batch at a context length, dense cache vs ZipVL's evicted cache.

Per context: one dense prefill (DynamicCache) and one ZipVL prefill (ZipVLCache, compacted); each cache is copied
and repeated to batch B, then greedy decode steps are timed one by one (warm-up steps dropped). Under a memory
budget the largest batch that fits is found for each cache separately (weights + B x (KV + decode growth +
measured per-sequence transient)), and the throughput at each one's own largest batch is compared: that is the
paper's "2.8x decode throughput" style number. Its limit is dense KV bytes / evicted KV bytes.
"""

from __future__ import annotations

import statistics

from . import limits
from .memory import MiB, PeakMemory, fit_batch, kv_bytes_per_token


def _measure_batch(backend, prefills: dict, batch: int, steps: int, warmup_steps: int) -> dict:
    """Dense and ZipVL decode at one batch, interleaved step by step (A B, B A, ...) so drift hits both; then one
    more step each under a peak-memory watch (its transient: activations, logits, the cache's concatenation)."""
    caches = {name: backend.replicate(p.cache, batch) for name, p in prefills.items()}
    tokens = {name: p.next_token.expand(batch, 1).contiguous() for name, p in prefills.items()}
    times: dict = {name: [] for name in prefills}
    names = list(prefills)
    for i in range(warmup_steps + steps):
        for name in names if i % 2 == 0 else names[::-1]:
            seconds, tokens[name] = backend.decode_step(caches[name], tokens[name], name == "zipvl")
            if i >= warmup_steps:
                times[name].append(seconds)
    out = {}
    for name in names:
        with PeakMemory(backend.device) as pm:
            backend.decode_step(caches[name], tokens[name], name == "zipvl")
        step = statistics.median(times[name])
        spread = (max(times[name]) - min(times[name])) / step if len(times[name]) > 1 else 0.0
        out[name] = {"batch": batch, "step_ms": 1e3 * step, "spread": spread, "tokens_per_s": batch / step,
                     "peak_memory": pm.to_dict(), "transient_bytes": pm.delta_bytes}
    del caches
    return out


def _sweep(backend, prefills: dict, batches: list[int], steps: int, warmup_steps: int, tick=None) -> dict:
    rows: dict = {"dense": {}, "zipvl": {}}
    for b in batches:
        measured = _measure_batch(backend, prefills, b, steps, warmup_steps)
        for name in rows:
            rows[name][b] = measured[name]
            if tick is not None:
                tick(f"decode {name} B={b}")
    return rows


def run_decode(backend, make_ids, contexts: list[int], batches: list[int], steps: int, warmup_steps: int,
               text_config, dtype, budget_bytes: int | None = None, max_batch: int = 64, tick=None) -> list[dict]:
    """The decode sweep for each context; see the module doc."""
    results = []
    weights = backend.weight_bytes()
    growth = (steps + warmup_steps + 1) * kv_bytes_per_token(text_config, dtype)  # the steps' own KV, per sequence
    for c in contexts:
        ids = make_ids(c)
        prefills = {"dense": backend.prefill(ids, False), "zipvl": backend.prefill(ids, True)}
        kv = {name: backend.kv_bytes(p.cache) for name, p in prefills.items()}
        rows = _sweep(backend, prefills, sorted(set(batches)), steps, warmup_steps, tick)
        # Transient per sequence (activations, logits, the cache's concatenation copy), measured at the largest
        # swept batch; the larger of dense's and ZipVL's is used for both (conservative, same for both).
        b_top = max(rows["dense"])
        transient = [rows[name][b_top]["transient_bytes"] for name in rows]
        measured = max((t for t in transient if t is not None), default=0) // b_top
        # Floor (RSS sampling can miss short-lived buffers): the cache's per-step concatenation copies one layer's
        # K and V, plus fp32 logits and the layer's widest activations for one token.
        floor = kv["dense"] // text_config.num_hidden_layers + 4 * (
            getattr(text_config, "vocab_size", 0) + 4 * text_config.hidden_size + 2 * text_config.intermediate_size)
        act = max(measured, floor)
        fit: dict = {}
        if budget_bytes is not None:
            for name in ("dense", "zipvl"):
                per_seq = kv[name] + growth + act
                b_max = fit_batch(budget_bytes, weights, per_seq)
                fit[name] = {"max_batch": b_max, "per_sequence_mib": per_seq / MiB,
                             "measured_batch": min(b_max, max_batch), "capped": b_max > max_batch}
            extra = sorted({f["measured_batch"] for f in fit.values()} - set(rows["dense"]) - {0})
            if extra:
                more = _sweep(backend, prefills, extra, steps, warmup_steps, tick)
                for name in rows:
                    rows[name].update(more[name])
            best = {name: rows[name].get(fit[name]["measured_batch"]) for name in rows}
            basis = "each cache at its largest batch under the memory budget"
        else:
            best = {name: max(rows[name].values(), key=lambda r: r["tokens_per_s"]) for name in rows}
            basis = "best tokens/s in the batch sweep (no --memory-budget)"
        ratio = (best["zipvl"]["tokens_per_s"] / best["dense"]["tokens_per_s"]
                 if best["dense"] and best["zipvl"] else None)
        limit = limits.decode_limit(kv["dense"], kv["zipvl"])
        same_batch = []
        for b in sorted(rows["dense"]):
            d, z = rows["dense"][b], rows["zipvl"][b]
            # Memory-traffic bound at equal batch: a step streams the weights once plus B caches.
            bound = (weights + b * kv["dense"]) / (weights + b * kv["zipvl"])
            same_batch.append({"batch": b, "dense_tps": d["tokens_per_s"], "zipvl_tps": z["tokens_per_s"],
                               "ratio": z["tokens_per_s"] / d["tokens_per_s"], "traffic_limit": bound,
                               "dense_step_ms": d["step_ms"], "zipvl_step_ms": z["step_ms"],
                               "dense_spread": d["spread"], "zipvl_spread": z["spread"]})
        results.append({
            "context": c, "steps": steps, "warmup_steps": warmup_steps,
            "kv_bytes_dense": kv["dense"], "kv_bytes_zipvl": kv["zipvl"],
            "kv_mib_saved": (kv["dense"] - kv["zipvl"]) / MiB,
            "mean_ratio": prefills["zipvl"].stats.mean_ratio if prefills["zipvl"].stats is not None else None,
            "weights_mib": weights / MiB, "transient_per_sequence_mib": act / MiB,
            "transient_measured_per_sequence_mib": measured / MiB, "transient_floor_per_sequence_mib": floor / MiB,
            "rows": same_batch, "memory_fit": fit, "basis": basis,
            "best": {name: ({"batch": r["batch"], "tokens_per_s": r["tokens_per_s"]} if r else None)
                     for name, r in best.items()},
            "throughput_ratio": ratio, "limit": limit,
            "efficiency": limits.efficiency(ratio, limit) if ratio else None,
            "note": "decode-time re-selection (every decode_interval tokens) is not exercised when steps < interval",
        })
        del prefills
    return results
