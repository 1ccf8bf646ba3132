# SPDX-License-Identifier: Apache-2.0
"""Memory accounting: KV-cache bytes, weight bytes, peak memory of a call, and the memory-budget batch fit.

Peak memory: on CUDA the caching allocator's ``max_memory_allocated`` (exact, tensors only); on CPU the process's
resident set sampled every few milliseconds by a thread (``/proc/self/statm``), which sees large tensors because
glibc serves them with ``mmap`` and returns them on free. The report names the method next to each number.
"""

from __future__ import annotations

import os
import threading

import torch

MiB = 2**20


def kv_bytes(cache) -> int:
    """Bytes held by the K/V tensors of a transformers cache (DynamicCache or ZipVLCache), all layers."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def weight_bytes(model) -> int:
    """Parameters + buffers of a model (what every batch shares)."""
    tensors = list(model.parameters()) + list(model.buffers())
    seen, total = set(), 0
    for t in tensors:  # tied weights count once
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def kv_bytes_per_token(text_config, dtype: torch.dtype, num_layers: int | None = None) -> int:
    """Dense KV bytes one token costs across all (used) layers: 2 (K and V) * layers * H_kv * d * element size."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    layers = num_layers or text_config.num_hidden_layers
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def fit_batch(budget_bytes: int, fixed_bytes: int, per_sequence_bytes: int) -> int:
    """Largest batch B with fixed + B * per_sequence <= budget (0 when not even one sequence fits)."""
    if per_sequence_bytes <= 0:
        raise ValueError("per-sequence bytes must be positive")
    return max(0, (budget_bytes - fixed_bytes) // per_sequence_bytes)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` -> ``pm.peak_bytes`` (absolute) and ``pm.delta_bytes`` (peak minus the
    level at entry: what the call added at its worst). ``pm.method`` says how it was measured; on a platform without
    either source both are None."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.method = "cuda_allocator" if self.device.type == "cuda" else "rss_sampled"
        self.base_bytes: int | None = None
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def delta_bytes(self) -> int | None:
        if self.peak_bytes is None or self.base_bytes is None:
            return None
        return max(0, self.peak_bytes - self.base_bytes)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes()
            if rss is not None and (self.peak_bytes is None or rss > self.peak_bytes):
                self.peak_bytes = rss

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.base_bytes = self.peak_bytes = _rss_bytes()
            if self.base_bytes is None:
                self.method = "unavailable"
            else:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            rss = _rss_bytes()
            if rss is not None and rss > (self.peak_bytes or 0):
                self.peak_bytes = rss
        return False

    def to_dict(self) -> dict:
        return {"peak_mib": None if self.peak_bytes is None else self.peak_bytes / MiB,
                "delta_mib": None if self.delta_bytes is None else self.delta_bytes / MiB, "method": self.method}
