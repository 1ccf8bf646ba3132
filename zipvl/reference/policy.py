# SPDX-License-Identifier: Apache-2.0
"""Token policies: who decides which prefill tokens a layer keeps.

The attention function (attention.py) owns the plumbing - gathering, sparse attention, eviction, statistics - and
asks a policy for the kept set. ZipVL is one policy; the eval baselines (fixed ratio, FastV, H2O/SnapKV-style,
random) are siblings implementing the same ``select``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import ZipVLConfig
from .selection import Selection, probe_positions, select_tokens


@dataclass
class LayerContext:
    """What a policy may look at besides Q and K: the layer, the model depth, per-token extras (e.g. image mask)."""

    layer_idx: int
    num_layers: int
    extras: dict = field(default_factory=dict)  # e.g. {"image_mask": (B, n) bool}, valid-row sliced


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
    """ZipVL (He et al., arXiv 2410.08584): adaptive per-layer count from the probe-attention mass, normalised score."""

    name = "zipvl"
    decode_reselect = True

    def select(self, query, key, scaling, ctx):
        return select_tokens(query, key, self.probes(query.shape[2], query.device), self.config.tau, scaling)
