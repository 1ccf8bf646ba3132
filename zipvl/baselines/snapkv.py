# SPDX-License-Identifier: Apache-2.0
"""H2O/SnapKV-style fixed-budget KV eviction after a dense prefill (Li et al., SnapKV, arXiv 2404.14469; cf. H2O,
arXiv 2306.14048, and kvpress's ``SnapKVPress``).

The prefill is dense (``sparse_prefill = False``): the kept set only decides what stays in each layer's KV cache.
Each layer keeps the observation window (the last ``window`` prompt tokens, which hold the question) plus the
prefix tokens with the most attention from the window's queries (softmax over all keys, summed over heads and
window rows), smoothed by a 1-D average pool of ``kernel_size`` as SnapKV clusters its picks. Budget:
``ceil(ratio * n)`` per layer, the window included. One kept set per layer shared by all heads (SnapKV picks per
KV head; zipvl's cache has one set per layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ZipVLConfig
from ..errors import ZipVLConfigError
from ..reference.policy import TokenPolicy, check_ratio, kept_budget
from ..reference.selection import Selection, probe_mass, top_by_score
from .base import counts_of


class SnapKVPolicy(TokenPolicy):
    """Dense prefill, then keep the observation window + the window's top-attended tokens (fixed budget)."""

    name = "snapkv"
    sparse_prefill = False

    def __init__(self, ratio: float, window: int = 64, kernel_size: int = 5, config: ZipVLConfig | None = None):
        super().__init__(config)
        self.ratio = check_ratio(ratio)
        if window < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ZipVLConfigError(f"SnapKV needs window >= 1 and an odd kernel_size, got {window}, {kernel_size}")
        self.window, self.kernel_size = int(window), int(kernel_size)

    def select(self, query, key, scaling, ctx):
        b, _, n, _ = query.shape
        w = min(self.window, n)
        probes = torch.arange(n - w, n, device=query.device)
        mass = probe_mass(query, key, probes, scaling)  # (B, n)
        score = mass
        if self.kernel_size > 1:
            score = F.avg_pool1d(mass[:, None], self.kernel_size, stride=1, padding=self.kernel_size // 2,
                                 count_include_pad=False)[:, 0]
        count = kept_budget(n, self.ratio)
        window = torch.zeros(b, n, dtype=torch.bool, device=query.device)
        if count <= w:  # the budget does not cover the window: keep its most recent tokens
            window[:, n - count:] = True
            kept = window
        else:
            window[:, n - w:] = True
            ranked = torch.where(window, torch.full_like(score, float("-inf")), score)
            kept = window | top_by_score(ranked, torch.full((b,), count - w, dtype=torch.long, device=query.device))
        return Selection(kept=kept, count=counts_of(kept), mass=mass, score=score, probes=probes)
