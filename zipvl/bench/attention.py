# SPDX-License-Identifier: Apache-2.0
"""Attention-only micro-benchmark: one layer's attention on the model's head shapes, dense vs ZipVL.

Dense = SDPA causal (GQA native). ZipVL = the reference's own ops: probe attention (``score_tokens``), selection
(``adaptive_count`` + ``top_by_score``; with a forced ratio only the top-k), and ``sparse_attention`` (gather, SDPA
on the kept tokens, scatter). The kept count is forced to ``ratio`` so the number is comparable with 1 / r^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ZipVLConfig
from ..reference.policy import kept_budget
from ..reference.selection import adaptive_count, probe_positions, score_tokens, top_by_score
from ..reference.sparse import sparse_attention
from . import limits
from .timing import interleave


@torch.no_grad()
def attention_microbench(shape: limits.ModelShape, n: int, ratio: float, clock, dtype=torch.float32,
                         repeats: int = 3, warmup: int = 1, config: ZipVLConfig | None = None,
                         adaptive: bool = True, seed: int = 0) -> dict:
    """Time dense vs ZipVL attention of one layer at length n and kept ratio ``ratio``.

    Returns medians (ms) of dense, the whole ZipVL chain and its parts, the speed-ups (whole chain, and sparse
    attention alone) and the limit 1 / r^2 with the efficiency against it.
    """
    config = config or ZipVLConfig()
    device = clock.device
    g = torch.Generator(device="cpu").manual_seed(seed)
    h, h_kv, d = shape.heads, shape.kv_heads, shape.head_dim
    q = torch.randn(1, h, n, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(1, h_kv, n, d, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(1, h_kv, n, d, generator=g).to(device=device, dtype=dtype)
    scale = d**-0.5
    probes = probe_positions(n, config).to(device)
    count = torch.tensor([kept_budget(n, ratio)], device=device)
    total = float(h * probes.numel())
    gqa = h != h_kv
    mass, score = score_tokens(q, k, probes, scale)
    kept = top_by_score(score, count)

    def dense():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)

    def select(mass_, score_):
        if adaptive:  # the real policy's cost: the adaptive count is computed (then the forced count is used)
            adaptive_count(mass_, config.tau, total)
        return top_by_score(score_, count)

    def chain():
        m_, s_ = score_tokens(q, k, probes, scale)
        return sparse_attention(q, k, v, select(m_, s_), scale)

    parts = {"dense": dense, "zipvl": chain, "probe": lambda: score_tokens(q, k, probes, scale),
             "select": lambda: select(mass, score), "sparse_attention": lambda: sparse_attention(q, k, v, kept, scale)}
    samples = interleave({name: (lambda _m, fn=fn: clock.time(fn)[0]) for name, fn in parts.items()},
                         repeats, warmup)
    ms = {name: 1e3 * s.median for name, s in samples.items()}
    limit = limits.attention_limit(ratio)
    speedup = ms["dense"] / ms["zipvl"]
    return {
        "n": n, "ratio": ratio, "heads": h, "kv_heads": h_kv, "head_dim": d, "dtype": str(dtype).replace("torch.", ""),
        "ms": ms, "spread": {name: s.spread for name, s in samples.items()},
        "speedup": speedup, "speedup_sparse_only": ms["dense"] / ms["sparse_attention"],
        "limit": limit, "efficiency": limits.efficiency(speedup, limit),
        "efficiency_sparse_only": limits.efficiency(ms["dense"] / ms["sparse_attention"], limit),
        "selection_pct_of_dense": 100.0 * (ms["probe"] + ms["select"]) / ms["dense"],
    }
