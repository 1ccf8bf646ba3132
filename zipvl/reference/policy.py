# SPDX-License-Identifier: Apache-2.0
"""Token policies: who decides which prefill tokens a layer keeps.

The attention function (attention.py) owns the plumbing - gathering, sparse attention, eviction, statistics - and
asks a policy for the kept set. ZipVL is one policy; the eval baselines (fixed ratio, FastV, H2O/SnapKV-style,
random) are siblings implementing the same ``select``.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from ..config import ZipVLConfig
from ..errors import ZipVLConfigError
from .selection import Selection, probe_positions, score_tokens, top_by_score
from .variants import keep_set, pooled_rule, protected_tokens, span_probes


class SectionTimer:
    """Accumulates wall time per named section (CUDA-synchronised), for the benchmark's time breakdown."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def section(self, name: str, device=None):
        sync = device is not None and torch.device(device).type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize(device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def reset(self) -> None:
        self.seconds.clear()


class NullTimer:
    def section(self, name, device=None):
        return nullcontext()


@dataclass
class LayerContext:
    """What a policy may look at besides Q and K: the layer, the model depth, per-token extras (e.g. image mask)."""

    layer_idx: int
    num_layers: int
    extras: dict = field(default_factory=dict)  # e.g. {"image_mask": (B, n) bool}, valid-row sliced
    timer: SectionTimer | NullTimer = field(default_factory=NullTimer)


class TokenPolicy:
    """Base class. ``sparse_prefill``: attention runs on the kept tokens only (False: dense prefill, the kept set only
    decides the eviction, as in H2O/SnapKV). ``decode_reselect``: apply the every-interval decode re-selection."""

    name = "base"
    sparse_prefill = True
    decode_reselect = False

    def __init__(self, config: ZipVLConfig | None = None):
        self.config = config or ZipVLConfig()
        self._probe_cache: dict[int, torch.Tensor] = {}

    def probes(self, n: int, device) -> torch.Tensor:
        """The forward's probe set for length n (same for every layer), memoised per length."""
        if n not in self._probe_cache:
            if len(self._probe_cache) > 64:
                self._probe_cache.clear()
            self._probe_cache[n] = probe_positions(n, self.config)
        return self._probe_cache[n].to(device)

    def select(self, query: torch.Tensor, key: torch.Tensor, scaling: float, ctx: LayerContext) -> Selection:
        raise NotImplementedError


class ZipVLPolicy(TokenPolicy):
    """ZipVL (He et al., arXiv 2410.08584): adaptive per-layer count from the probe-attention mass, normalised score.

    The config's selection variants (variants.py) compose here: probe set -> per-head reduction -> score pooling ->
    protected tokens and floor -> kept set, plus a second, larger set for the cache when ``tau_evict`` > ``tau``.
    """

    name = "zipvl"
    decode_reselect = True

    def __init__(self, config: ZipVLConfig | None = None):
        super().__init__(config)
        # Instance-level: the attention function reads these per policy (dense prefill = the kept set only evicts).
        self.sparse_prefill = self.config.sparse_prefill
        self.decode_reselect = not self.config.protect_text  # generated tokens are text: never evict them

    def select(self, query, key, scaling, ctx):
        cfg = self.config
        n = query.shape[2]
        image = ctx.extras.get("image_mask")
        probes = self.probes(n, query.device) if cfg.probe_set == "paper" else \
            span_probes(n, cfg, image).to(query.device)
        ratio = cfg.layer_floor(ctx.layer_idx, ctx.num_layers)
        return self.select_on(query, key, probes, scaling, image, kept_budget(n, ratio) if ratio > 0 else 0,
                              ctx.timer)

    def select_on(self, query, key, probes, scaling, image=None, floor: int = 0, timer=None) -> Selection:
        """The selection for given probe positions (an engine gets them as a graph input): scores, per-head
        reduction, pooling, protected tokens and ``floor``, the kept set (and the eviction's, with tau_evict)."""
        cfg = self.config
        timer = timer or NullTimer()
        heads = cfg.head_reduce
        per_kv = heads == "kv"
        rows = (query.shape[0], key.shape[1])  # (B, H_kv)
        if per_kv:  # one set per KV head: each KV head with its query group is a row of its own
            query, key, probes, image = per_kv_head_rows(query, key, probes, image)
            heads = "sum"
        b, h, n, _ = query.shape
        with timer.section("probe", query.device):
            mass, score = score_tokens(query, key, probes, scaling, heads)
        with timer.section("select", query.device):
            # Every probe row of every head sums to 1 (total H * m); a max over heads has no such closed form.
            total = float(h * probes.shape[-1]) if heads == "sum" else mass.double().sum(dim=-1)
            rule_mass, score, total = pooled_rule(mass, score, total, cfg.pool, cfg.pool_kernel)
            protected = protected_tokens(b, n, cfg, image, query.device)
            kept, count = keep_set(rule_mass, score, cfg.tau, total, protected, floor)
            evict = None
            if cfg.evict_tau != cfg.tau:  # same score, larger count: a superset of the attention's set
                evict = keep_set(rule_mass, score, cfg.evict_tau, total, protected, floor)[0]
        if per_kv:  # back to (B, H_kv, n) and (B, H_kv)
            kept, mass, score = (t.reshape(*rows, n) for t in (kept, mass, score))
            count = count.reshape(rows)
        return Selection(kept=kept, count=count, mass=mass, score=score, probes=probes, evict=evict)


def per_kv_head_rows(query, key, probes, image):
    """(B, H, n, d) queries and (B, H_kv, n, d) keys as B * H_kv rows of one KV head and its query group
    (transformers' GQA order: query head i reads KV head i // g); probes and image mask follow their rows."""
    b, h, n, d = query.shape
    h_kv = key.shape[1]
    query = query.reshape(b * h_kv, h // h_kv, n, d)
    key = key.reshape(b * h_kv, 1, n, d)
    if probes.dim() == 2:
        probes = probes.repeat_interleave(h_kv, dim=0)
    if image is not None:
        image = image.reshape(-1, n).expand(b, n).repeat_interleave(h_kv, dim=0)
    return query, key, probes, image


def check_ratio(ratio: float) -> float:
    """A kept ratio in (0, 1], as float."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ZipVLConfigError(f"kept ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def kept_budget(n: int, ratio: float) -> int:
    """Tokens kept at ``ratio`` of ``n``: ceil(ratio * n), at least 1. The 1e-9 keeps an exact product such as
    0.07 * 100 = 7.000000000000001 from rounding up to 8. Every fixed-ratio policy and benchmark uses this rule."""
    return max(1, min(n, math.ceil(ratio * n - 1e-9)))


class FixedRatioPolicy(TokenPolicy):
    """ZipVL's scorer with a fixed kept ratio per layer (the paper's "fixed" ablation; the benchmark's forced-ratio
    shape-only mode): keeps ceil(ratio * n) tokens by normalised score. No decode re-selection."""

    name = "fixed_ratio"

    def __init__(self, ratio: float, config: ZipVLConfig | None = None):
        super().__init__(config)
        self.ratio = check_ratio(ratio)

    def select(self, query, key, scaling, ctx):
        b, _, n, _ = query.shape
        probes = self.probes(n, query.device)
        with ctx.timer.section("probe", query.device):
            mass, score = score_tokens(query, key, probes, scaling)
        with ctx.timer.section("select", query.device):
            count = torch.full((b,), kept_budget(n, self.ratio), dtype=torch.long, device=query.device)
            kept = top_by_score(score, count)
        return Selection(kept=kept, count=count, mass=mass, score=score, probes=probes)
