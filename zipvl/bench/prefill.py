# SPDX-License-Identifier: Apache-2.0
"""Prefill benchmark: dense vs ZipVL latency per length, ZipVL's time breakdown, limits, and the short-input crossover.

Per length: warm-up, then interleaved repeats of one dense and one ZipVL prefill (``use_cache=True``,
``logits_to_keep=1``). The breakdown comes from the reference's section timer: "probe" (probe attention),
"select" (count + top-k), "sparse_attention", "evict" (cache compaction), "rest" (projections, MLP, norms, glue).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from contextlib import nullcontext

from . import limits
from .memory import MiB, PeakMemory
from .timing import interleave, median_dicts

SELECTION_SECTIONS = ("probe", "select")
ZIPVL_SECTIONS = ("probe", "select", "sparse_attention", "evict")


def _stats_summary(stats) -> dict:
    layers = sorted(stats.layers, key=lambda s: s.layer)
    return {"mean_ratio": stats.mean_ratio, "layer_ratios": stats.layer_ratios(),
            "layer_modes": [s.mode for s in layers], "kept": [s.kept[0] for s in layers],
            "attn_flops_dense": stats.attn_flops_dense, "attn_flops_zipvl": stats.attn_flops_zipvl,
            "kv_bytes_before": stats.kv_bytes_before, "kv_bytes_after": stats.kv_bytes_after}


def measure_prefill(backend, ids, repeats: int, warmup: int, tick=None, memory: bool = True) -> dict:
    """Dense vs ZipVL prefill of ``ids`` (1, n): samples, ZipVL statistics, section medians, peak memory."""
    kept: dict = {"dense": [], "zipvl": []}  # (sections, stats, kv bytes) of measured runs; caches dropped
    peaks: dict = {}

    def variant(sparse: bool):
        name = "zipvl" if sparse else "dense"

        def run(measured: bool) -> float:
            # Peak memory on the last repeat (everything warm: one-off first-call allocations are not billed).
            watch = memory and measured and len(kept[name]) == repeats - 1
            with PeakMemory(backend.device) if watch else nullcontext() as pm:
                r = backend.prefill(ids, sparse, sections=backend.sections_free)
            if watch:
                peaks[name] = pm.to_dict()
            if measured:
                kept[name].append((r.sections, r.stats, backend.kv_bytes(r.cache)))
            return r.seconds

        return run

    samples = interleave({"dense": variant(False), "zipvl": variant(True)}, repeats, warmup, tick)
    dense_s, zipvl_s = samples["dense"].median, samples["zipvl"].median
    breakdown = dense_breakdown = None
    profiled = "not available on this backend"
    if backend.has_sections:
        if backend.sections_free:
            dense_sections = median_dicts([s for s, _, _ in kept["dense"]])
            zipvl_sections = median_dicts([s for s, _, _ in kept["zipvl"]])
            profiled = "timed runs (section timer without synchronisation)"
        else:  # CUDA: sections synchronise, so they come from one extra run each, apart from the timed ones
            dense_sections = backend.prefill(ids, False, sections=True).sections
            zipvl_sections = backend.prefill(ids, True, sections=True).sections
            profiled = "one extra synchronised run per variant"
        breakdown = {k: zipvl_sections.get(k, 0.0) for k in ZIPVL_SECTIONS}
        breakdown["rest"] = max(0.0, zipvl_s - sum(breakdown.values()))
        dense_attn = dense_sections.get("dense_attention")
        if dense_attn is not None:
            dense_breakdown = {"attention": dense_attn, "rest": max(0.0, dense_s - dense_attn)}
    return {
        "n": int(ids.shape[1]),
        "dense": samples["dense"].to_dict(),
        "zipvl": samples["zipvl"].to_dict(),
        "speedup": dense_s / zipvl_s,
        # Noise-robust companions (a shared machine): best-of-repeats, and the median of per-round ratios.
        "speedup_min": min(samples["dense"].seconds) / min(samples["zipvl"].seconds),
        "speedup_paired_median": statistics.median(d / z for d, z in zip(samples["dense"].seconds,
                                                                         samples["zipvl"].seconds)),
        "zipvl_stats": _stats_summary(kept["zipvl"][-1][1]) if kept["zipvl"][-1][1] is not None else None,
        "kv_bytes_dense": kept["dense"][-1][2],
        "kv_bytes_zipvl": kept["zipvl"][-1][2],
        "breakdown_zipvl_s": breakdown,
        "breakdown_dense_s": dense_breakdown,
        "breakdown_source": profiled,
        "selection_overhead_pct": (100.0 * sum(breakdown[k] for k in SELECTION_SECTIONS) / dense_s
                                   if breakdown else None),
        "peak_memory": peaks,
    }


def add_limits(point: dict, shape: limits.ModelShape, n_probes: int) -> dict:
    """Attach the physical limits of a measured prefill point and the efficiency against them."""
    st = point["zipvl_stats"]
    ratios = st["layer_ratios"]
    probed = [m == "sparse" for m in st["layer_modes"]]
    lim = limits.prefill_limit(shape, point["n"], ratios, n_probes, probed)
    dense_s = point["dense"]["median_s"]
    attn_s = (point["breakdown_dense_s"] or {}).get("attention")
    point["r_eff"] = limits.effective_ratio(ratios)
    point["limit"] = lim
    point["efficiency"] = limits.efficiency(point["speedup"], lim)
    point["flops_split"] = limits.flops_split(shape, point["n"], n_probes)
    point["limit_from_time_split"] = (limits.time_split_limit(dense_s, attn_s, ratios)
                                      if attn_s is not None else None)
    return point


def run_prefill(backend, make_ids: Callable[[int], object], lengths: list[int], repeats: int, warmup: int,
                shape: limits.ModelShape, n_probes: int, tick=None, on_error=None) -> list[dict]:
    """The prefill sweep. ``on_error(n, exc)`` decides about an out-of-memory length (skip and say so)."""
    points = []
    for n in lengths:
        try:
            point = measure_prefill(backend, make_ids(n), repeats, warmup, tick)
        except Exception as e:
            if on_error is None or not on_error(n, e):
                raise
            points.append({"n": n, "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            continue
        points.append(add_limits(point, shape, n_probes))
    return points


def find_crossover(lengths: list[int], dense_s: list[float], zipvl_s: list[float]) -> dict:
    """Smallest measured length from which ZipVL prefill beats dense at every longer measured length.

    Returns ``recommended_min_length`` (None when ZipVL loses at the longest length) and ``interpolated``: where
    log(speed-up) crosses 0, linear in log2(n) between the last losing and the first winning length.
    """
    pts = sorted(zip(lengths, dense_s, zipvl_s))
    speedups = [d / z for _, d, z in pts]
    result = {"lengths": [p[0] for p in pts], "speedups": speedups, "recommended_min_length": None,
              "interpolated": None}
    if not pts:
        result["reason"] = "no lengths measured"
        return result
    if speedups[-1] <= 1.0:
        result["reason"] = f"ZipVL is not faster at the longest measured length ({pts[-1][0]}): measure longer"
        return result
    last_loss = max((i for i, s in enumerate(speedups) if s <= 1.0), default=None)
    if last_loss is None:
        result["recommended_min_length"] = pts[0][0]
        result["interpolated"] = None
        result["reason"] = f"ZipVL already faster at the shortest measured length ({pts[0][0]})"
        return result
    lo, hi = pts[last_loss][0], pts[last_loss + 1][0]
    s_lo, s_hi = math.log(speedups[last_loss]), math.log(speedups[last_loss + 1])
    t = s_lo / (s_lo - s_hi) if s_hi != s_lo else 1.0
    result["recommended_min_length"] = hi
    result["interpolated"] = int(round(2 ** (math.log2(lo) + t * (math.log2(hi) - math.log2(lo)))))
    result["reason"] = f"dense is faster at {lo}, ZipVL from {hi} on"
    return result


def run_crossover(backend, make_ids, lengths: list[int], repeats: int, warmup: int, make_policy, tick=None) -> dict:
    """Measure short lengths, find the crossover, and check that ``min_length`` set to it makes shorter prompts
    fall back to dense (layers report ``mode="short"``)."""
    points = [measure_prefill(backend, make_ids(n), repeats, warmup, tick, memory=False) for n in lengths]
    result = find_crossover([p["n"] for p in points], [p["dense"]["median_s"] for p in points],
                            [p["zipvl"]["median_s"] for p in points])
    result["points"] = [{"n": p["n"], "dense_ms": 1e3 * p["dense"]["median_s"],
                         "zipvl_ms": 1e3 * p["zipvl"]["median_s"], "speedup": p["speedup"],
                         "selection_overhead_pct": p["selection_overhead_pct"]} for p in points]
    rec = result["recommended_min_length"]
    shorter = [n for n in result["lengths"] if rec is not None and n < rec]
    if shorter:
        saved = backend.policy
        backend.policy = make_policy(rec)
        try:
            run = backend.prefill(make_ids(shorter[-1]), True)
        finally:
            backend.policy = saved
        modes = sorted({s.mode for s in run.stats.layers})
        result["fallback_check"] = {"n": shorter[-1], "min_length": rec, "layer_modes": modes,
                                    "ok": modes == ["short"]}
    result["how_to_apply"] = (f"ZipVLConfig(min_length={rec}): prompts shorter than {rec} tokens run dense attention "
                              f"and their layers report mode='short' in the statistics" if rec else
                              "no crossover found in the measured range: keep ZipVL off for these lengths")
    return result


def kib_per_token(point: dict) -> dict:
    n = point["n"]
    return {"dense": point["kv_bytes_dense"] / n / 1024, "zipvl": point["kv_bytes_zipvl"] / n / 1024,
            "saved_mib": (point["kv_bytes_dense"] - point["kv_bytes_zipvl"]) / MiB}
