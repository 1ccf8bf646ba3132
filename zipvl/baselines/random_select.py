# SPDX-License-Identifier: Apache-2.0
"""Random selection at a fixed ratio: the floor any scorer must beat."""

from __future__ import annotations

import torch

from ..config import ZipVLConfig
from ..reference.policy import TokenPolicy, check_ratio, kept_budget
from ..reference.selection import Selection, top_by_score
from .base import counts_of


class RandomPolicy(TokenPolicy):
    """Each layer keeps ``ceil(ratio * n)`` tokens drawn uniformly without replacement, seeded by (seed, layer, n);
    the last ``keep_last`` positions are always kept (the token being answered). Sparse prefill, no decode
    re-selection."""

    name = "random"

    def __init__(self, ratio: float, seed: int = 0, keep_last: int = 1, config: ZipVLConfig | None = None):
        super().__init__(config)
        self.ratio = check_ratio(ratio)
        self.seed, self.keep_last = int(seed), max(0, int(keep_last))

    def select(self, query, key, scaling, ctx):
        b, _, n, _ = query.shape
        count = kept_budget(n, self.ratio)
        last = min(self.keep_last, count)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.layer_idx * 7919 + n)
        score = torch.rand(b, n, generator=gen)
        score[:, n - last:] = 2.0  # above every draw
        score = score.to(query.device)
        kept = top_by_score(score, torch.full((b,), count, dtype=torch.long, device=query.device))
        return Selection(kept=kept, count=counts_of(kept), mass=score, score=score, probes=None)
