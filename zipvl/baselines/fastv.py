# SPDX-License-Identifier: Apache-2.0
"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", arXiv 2403.06764; pkunlp-icler/FastV).

Layers ``< k`` attend densely. At layer ``k - 1`` the *last* token's attention (softmax over all keys, summed over
heads; FastV averages, which ranks the same) ranks the image tokens; from layer ``k`` on every layer keeps all
non-image tokens plus the top-ranked image tokens - one decision, the same kept set in every later layer, as FastV
drops the tokens from the sequence once. Text-only prompts (no ``image_mask`` or no image token) make every token
prunable: FastV's rule applied to text, which the paper does not define.

``ratio`` is the *average* kept ratio over all layers (so the method can be matched to ZipVL's measured ratio):
layers ``>= k`` keep ``ceil(r' n)`` tokens with ``r' = (L ratio - k) / (L - k)`` (clamped to what is feasible: never
fewer than the non-image tokens). FastV's own knob ``R`` (fraction of image tokens dropped) follows from it.
"""

from __future__ import annotations

import torch

from ..config import ZipVLConfig
from ..errors import ZipVLConfigError
from ..reference.policy import LayerContext, TokenPolicy, check_ratio, kept_budget
from ..reference.selection import Selection, probe_mass, score_tokens, top_by_score
from .base import counts_of, keep_all


class FastVPolicy(TokenPolicy):
    """FastV at an average kept ratio: dense below layer ``k``, then a fixed set of top image tokens.

    Parameters
    ----------
    ratio : float in (0, 1], the average kept ratio over all layers
    k : int, number of leading dense layers (FastV's K, default 2)
    score : "last" (FastV: the last query's attention at layer k - 1) or "probes" (ZipVL's probe set and normalised
        score at layer k - 1)
    """

    name = "fastv"

    def __init__(self, ratio: float, k: int = 2, config: ZipVLConfig | None = None, score: str = "last"):
        super().__init__(config)
        self.ratio = check_ratio(ratio)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ZipVLConfigError(f"FastV k must be a non-negative integer, got {k!r}")
        if score not in ("last", "probes"):
            raise ZipVLConfigError(f"FastV score must be 'last' or 'probes', got {score!r}")
        self.k, self.score = k, score
        self._decided: list[torch.Tensor] = []  # kept (1|B, n) per select() call at the decision layer
        self._layer, self._call = -1, 0

    def later_ratio(self, num_layers: int) -> float:
        """Kept ratio of the layers >= k that makes the all-layer average equal ``ratio``."""
        if num_layers <= self.k:
            return 1.0
        return min(1.0, max(0.0, (num_layers * self.ratio - self.k) / (num_layers - self.k)))

    def _rank(self, query, key, scaling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = query.shape[2]
        if self.score == "last":
            probes = torch.tensor([n - 1], device=query.device)
            mass = probe_mass(query, key, probes, scaling)
            return mass, mass, probes
        probes = self.probes(n, query.device)
        mass, score = score_tokens(query, key, probes, scaling)
        return mass, score, probes

    def _decide(self, score: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        b, n = score.shape
        image = ctx.extras.get("image_mask")
        if image is not None and bool(image.any()):
            prunable = image.to(device=score.device, dtype=torch.bool).expand(b, n)
        else:
            prunable = torch.ones(b, n, dtype=torch.bool, device=score.device)
        target = kept_budget(n, max(self.later_ratio(ctx.num_layers), 1e-9))
        fixed = ~prunable
        extra = (target - fixed.sum(dim=-1)).clamp(min=0)  # image tokens to keep, per row
        ranked = torch.where(prunable, score, torch.full_like(score, float("-inf")))
        return fixed | (top_by_score(ranked, extra) & prunable)

    def select(self, query, key, scaling, ctx):
        # select() is called once per layer per group of rows, in layer order; count the calls within a layer.
        if ctx.layer_idx != self._layer:
            self._layer, self._call = ctx.layer_idx, 0
        else:
            self._call += 1
        decision_layer = max(self.k - 1, 0)
        if ctx.layer_idx == decision_layer:
            if self._call == 0:
                self._decided = []
            mass, score, probes = self._rank(query, key, scaling)
            kept = self._decide(score, ctx)
            self._decided.append(kept)
            if ctx.layer_idx >= self.k:  # k = 0: prune from layer 0 on
                return Selection(kept=kept, count=counts_of(kept), mass=mass, score=score, probes=probes)
            sel = keep_all(query)
            return Selection(kept=sel.kept, count=sel.count, mass=mass, score=score, probes=probes)
        if ctx.layer_idx < self.k:
            return keep_all(query)
        kept = self._decided[self._call]
        if tuple(kept.shape) != (query.shape[0], query.shape[2]):
            raise ZipVLConfigError("FastV: the kept set of the decision layer does not match this layer's tokens")
        sel = keep_all(query)
        return Selection(kept=kept, count=counts_of(kept), mass=sel.mass, score=sel.score, probes=None)
