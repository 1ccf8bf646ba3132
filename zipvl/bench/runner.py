# SPDX-License-Identifier: Apache-2.0
"""The Python API behind ``zipvl-bench``: :class:`BenchConfig` -> :func:`run_bench` -> a JSON-able report dict."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import ZipVLConfig
from ..errors import ZipVLConfigError
from ..reference.policy import FixedRatioPolicy, ZipVLPolicy
from . import limits
from .attention import attention_microbench
from .backends import make_backend
from .decode import run_decode
from .memory import MiB
from .models import load_bench_model, prompt_ids
from .peers import compare, make_peers, parse_peers, run_peers
from .prefill import run_crossover, run_prefill

log = logging.getLogger(__name__)

SCHEMA = "zipvl-bench/1"
STAGES = ("prefill", "attention", "crossover", "decode")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Defaults per device: CPU sweeps finish in minutes on 2 cores; GPU goes to 128K where memory allows.
DEFAULTS = {
    "cpu": dict(lengths=[2048, 4096, 8192], crossover=[128, 256, 512, 1024, 2048], contexts=[2048, 4096],
                batches=[1, 2, 4, 8]),
    "cuda": dict(lengths=[2048, 4096, 8192, 16384, 32768, 65536, 131072], crossover=[1024, 2048, 4096, 8192, 16384],
                 contexts=[4096, 16384], batches=[1, 2, 4, 8, 16]),
}


@dataclass
class BenchConfig:
    """Everything one benchmark run needs; ``None`` lists take the device's defaults (see ``DEFAULTS``)."""

    model: str = "default"  # "default", a checkpoint folder, "tiny:<arch>" or "shape:<preset>"
    layers: int | None = None  # keep only the first N decoder layers (shape-only on small machines)
    kept_ratio: float | None = None  # forced kept ratio (FixedRatioPolicy); required for shape-only models
    tau: float = 0.975
    backend: str = "torch"
    device: str = "cpu"
    dtype: str | None = None  # default float32 on CPU, bfloat16 on CUDA
    engine: str | None = None  # ZipVL engine folder for the onnxruntime backend
    dense_engine: str | None = None  # the same model built with every layer dense (onnxruntime baseline)
    lengths: list[int] | None = None
    repeats: int = 3
    warmup: int = 1
    crossover_lengths: list[int] | None = None
    crossover_repeats: int = 3
    contexts: list[int] | None = None
    batches: list[int] | None = None
    steps: int = 8
    decode_warmup: int = 1
    memory_budget_mib: float | None = None
    max_batch: int = 64
    skip: tuple[str, ...] = ()
    threads: int | None = None
    progress: bool = True
    peers: tuple[str, ...] = ()  # dense baselines outside zipvl, same run: "torch", "ortgenai" (see peers.py)
    ortgenai_model: str | None = None  # a prebuilt ORT GenAI model folder (default: built from the bench model)
    peak_lengths: list[int] | None = None  # onnxruntime: prefill peak RSS per length, each in a fresh process
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        bad = set(self.skip) - set(STAGES)
        if bad:
            raise ZipVLConfigError(f"unknown stages to skip {sorted(bad)}; stages are {', '.join(STAGES)}")
        if self.kept_ratio is not None and not 0.0 < self.kept_ratio <= 1.0:
            raise ZipVLConfigError(f"--kept-ratio must be in (0, 1], got {self.kept_ratio}")
        if self.repeats < 1 or self.warmup < 0 or self.steps < 1:
            raise ZipVLConfigError("repeats and steps must be >= 1, warmup >= 0")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ZipVLConfigError(f"--dtype must be one of {', '.join(DTYPES)}")
        parse_peers(",".join(self.peers))
        if self.peak_lengths and self.backend != "onnxruntime":
            raise ZipVLConfigError("--peak-lengths measures engines in fresh processes: it needs --backend onnxruntime")
        if self.model.startswith("shape:") and self.kept_ratio is None:
            raise ZipVLConfigError("shape-only models have random weights (no real sparsity): pass --kept-ratio, "
                                   "e.g. --kept-ratio 0.42")

    def resolved(self, key: str, default_key: str | None = None) -> list[int]:
        value = getattr(self, key)
        table = DEFAULTS["cuda" if self.device.startswith("cuda") else "cpu"]
        return list(value) if value is not None else list(table[default_key or key])


def mode_label(bench, cfg: BenchConfig) -> str:
    """The label every number of the run carries: which weights, which ratio rule, which depth."""
    if bench.shape_only:
        label = f"shape-only, forced r={cfg.kept_ratio:g}"
    else:
        weights = "real weights" if bench.weights == "real" else "tiny random weights"
        rule = f"forced r={cfg.kept_ratio:g}" if cfg.kept_ratio is not None else f"adaptive tau={cfg.tau:g}"
        label = f"{weights}, {rule}"
    if bench.layers_used < bench.layers_total:
        label += f", {bench.layers_used}/{bench.layers_total} layers"
    return label


def _is_oom(_n: int, e: Exception) -> bool:
    oom = isinstance(e, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError)))
    if oom and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return oom


def run_bench(cfg: BenchConfig) -> dict:
    """Run the configured stages and return the report (see ``docs/bench.md`` for every field)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    load_start = _load()
    dtype = DTYPES[cfg.dtype] if cfg.dtype else (torch.bfloat16 if cfg.device.startswith("cuda") else torch.float32)
    zcfg = ZipVLConfig(tau=cfg.tau)

    def make_policy(min_length: int = 0):
        c = ZipVLConfig(tau=cfg.tau, min_length=min_length)
        return FixedRatioPolicy(cfg.kept_ratio, c) if cfg.kept_ratio is not None else ZipVLPolicy(c)

    ort_backend = None
    if cfg.backend == "onnxruntime":  # fails fast with a clear reason before any model is loaded
        ort_backend = make_backend("onnxruntime", engine_dir=cfg.engine, dense_engine_dir=cfg.dense_engine,
                                   threads=cfg.threads)
    if "ortgenai" in cfg.peers:
        from .ortgenai import require

        require()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        from .backends import BackendUnavailableError

        raise BackendUnavailableError("--device cuda asked for, but torch sees no CUDA device")
    bench = load_bench_model(cfg.model, cfg.device, dtype, cfg.layers)
    # The torch model is still loaded for the onnxruntime backend: its tokenizer and config (FLOPs, KV) are used.
    backend = ort_backend or make_backend(cfg.backend, bench.model, make_policy(), cfg.device)
    shape = limits.ModelShape.from_config(bench.text_config, bench.layers_used)
    label = mode_label(bench, cfg)
    max_pos = getattr(bench.text_config, "max_position_embeddings", None) or 1 << 30
    notes = list(cfg.notes) + list(bench.notes)

    def ids_for(n: int):
        return prompt_ids(bench, n, device=backend.device)

    lengths = cfg.resolved("lengths")
    if any(n > max_pos for n in lengths):
        notes.append(f"lengths above the model's max_position_embeddings ({max_pos}) were dropped")
        lengths = [n for n in lengths if n <= max_pos]
    if any(n > max_pos for n in cfg.peak_lengths or []):
        notes.append(f"fresh-process peaks above the model's max_position_embeddings ({max_pos}) measure memory and "
                     "time only (RoPE extrapolates; outputs there are not meaningful)")
    stages = [s for s in STAGES if s not in cfg.skip]
    if ort_backend is not None:
        why = {"attention": "it times the reference's torch ops", "crossover": "its fallback check needs an engine "
               "rebuilt per min_length; run it on the torch backend"}
        for stage in ("attention", "crossover"):
            if stage in stages:
                stages.remove(stage)
                notes.append(f"{stage} stage skipped on the onnxruntime backend: {why[stage]}")
    cross = cfg.resolved("crossover_lengths", "crossover")
    contexts = [c for c in cfg.resolved("contexts") if c <= max_pos]
    batches = cfg.resolved("batches")
    total = (("prefill" in stages) * len(lengths) * 2 * (cfg.repeats + cfg.warmup)
             + ("attention" in stages) * len(lengths)
             + ("crossover" in stages) * len(cross) * 2 * (cfg.crossover_repeats + cfg.warmup)
             + ("decode" in stages) * len(contexts) * 2 * len(batches)
             + len(cfg.peers) * (len(lengths) + len(contexts) * len(batches)) + 3 * len(cfg.peak_lengths or []))
    bar = tqdm(total=total, desc="zipvl-bench", unit="run", disable=not cfg.progress, leave=False)

    def tick(what: str) -> None:
        bar.set_postfix_str(str(what), refresh=False)
        bar.update(1)

    report: dict = {
        "schema": SCHEMA, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "zipvl_version": __version__, "mode": label,
        "mode_detail": {"weights": bench.weights, "shape_only": bench.shape_only, "forced": cfg.kept_ratio is not None,
                        "kept_ratio": cfg.kept_ratio, "tau": None if cfg.kept_ratio is not None else cfg.tau,
                        "layers_used": bench.layers_used, "layers_total": bench.layers_total},
        "environment": backend.describe(), "dtype": str(dtype).replace("torch.", ""),
        "model": bench.describe(), "model_shape": shape.to_dict(), "zipvl_config": zcfg.to_dict(),
        "bench_config": {k: v for k, v in asdict(cfg).items() if k != "notes"},
        "targets": {"efficiency": limits.TARGET_EFFICIENCY},
        "prefill": [], "attention": [], "crossover": None, "decode": [], "memory": {}, "notes": notes,
    }
    peers = make_peers(cfg.peers, bench, cfg.device, cfg.ortgenai_model, cfg.threads)
    try:
        if "prefill" in stages:
            bar.set_description("prefill")
            report["prefill"] = run_prefill(backend, ids_for, lengths, cfg.repeats, cfg.warmup, shape,
                                            zcfg.n_probes, tick, on_error=_is_oom)
        if "attention" in stages:
            bar.set_description("attention")
            measured = {p["n"]: p for p in report["prefill"] if "skipped" not in p}
            for n in lengths:
                r = measured[n]["r_eff"] if n in measured else cfg.kept_ratio
                if r is None:  # needs the ratio a real prefill measured
                    report["notes"].append(f"attention n={n} skipped: no measured kept ratio (run the prefill stage "
                                           "too, or pass --kept-ratio)")
                    continue
                try:
                    point = attention_microbench(shape, n, r, backend.clock, dtype, cfg.repeats, cfg.warmup, zcfg,
                                                 adaptive=cfg.kept_ratio is None)
                except Exception as e:
                    if not _is_oom(n, e):
                        raise
                    point = {"n": n, "skipped": f"{type(e).__name__}"}
                report["attention"].append(point)
                tick(f"attention n={n}")
        if "crossover" in stages:
            bar.set_description("crossover")
            report["crossover"] = run_crossover(backend, ids_for, cross, cfg.crossover_repeats, cfg.warmup,
                                                make_policy, tick)
        if "decode" in stages:
            bar.set_description("decode")
            budget = None if cfg.memory_budget_mib is None else int(cfg.memory_budget_mib * MiB)
            report["decode"] = run_decode(backend, ids_for, contexts, batches, cfg.steps, cfg.decode_warmup,
                                          bench.text_config, dtype, budget, cfg.max_batch, tick)
            report["decode_memory_budget_mib"] = cfg.memory_budget_mib
        if peers:
            bar.set_description("peers")
            report["peers"] = run_peers(peers, ids_for, lengths if "prefill" in stages else [],
                                        contexts if "decode" in stages else [], batches, cfg.repeats, cfg.warmup,
                                        cfg.steps, cfg.decode_warmup, tick)
            report["peer_comparison"] = compare(report)
        if cfg.peak_lengths:
            from .peak import run_fresh_peaks

            bar.set_description("fresh peaks")
            engines = {"dense": cfg.dense_engine, "zipvl": cfg.engine, "zipvl_shared": (cfg.engine, True)}
            report["fresh_peaks"] = run_fresh_peaks(engines, ids_for, cfg.peak_lengths, cfg.threads, tick)
    finally:
        bar.close()
    report["memory"] = _memory_summary(report, backend)
    load_end = _load()
    report["environment"].update(cpu_count=os.cpu_count(), load_avg={"start": load_start, "end": load_end})
    if max(load_start or 0, load_end or 0) > (os.cpu_count() or 1):
        notes.append(f"the machine was busy (1-min load {load_start:.1f} -> {load_end:.1f} on {os.cpu_count()} CPUs): "
                     f"absolute timings are noisy; dense and ZipVL were interleaved, so compare ratios")
    for section in ("prefill", "attention", "decode"):
        for point in report[section]:
            point["mode"] = label
    if report["crossover"] is not None:
        report["crossover"]["mode"] = label
    return report


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _memory_summary(report: dict, backend) -> dict:
    """KV bytes dense vs evicted and peak memory, per measured prefill length."""
    rows = []
    for p in report["prefill"]:
        if "skipped" in p:
            continue
        rows.append({"n": p["n"], "kv_mib_dense": p["kv_bytes_dense"] / MiB, "kv_mib_zipvl": p["kv_bytes_zipvl"] / MiB,
                     "kv_mib_saved": (p["kv_bytes_dense"] - p["kv_bytes_zipvl"]) / MiB,
                     "kv_fraction_kept": p["kv_bytes_zipvl"] / p["kv_bytes_dense"] if p["kv_bytes_dense"] else None,
                     "peak_prefill_dense": p["peak_memory"].get("dense"),
                     "peak_prefill_zipvl": p["peak_memory"].get("zipvl")})
    return {"weights_mib": backend.weight_bytes() / MiB, "per_length": rows}
