# SPDX-License-Identifier: Apache-2.0
"""Selection variants of ZipVL (``ZipVLConfig`` fields, all off by default): probe sets, score pooling, protected
tokens and the tau rule around them, per-layer floors. Small tensor pieces that :class:`ZipVLPolicy` composes; the
paper's path (selection.py) stays untouched when every variant is off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ZipVLConfig
from ..errors import ZipVLInputError
from .selection import adaptive_count, top_by_score

_NEEDS_MASK = "set state.extras['image_mask'] to a (B, n) bool tensor (all False for a text-only prompt)"


def span_probes(n: int, config: ZipVLConfig, image_mask: torch.Tensor | None) -> torch.LongTensor:
    """Probes of ``probe_set`` "recent" or "question": the last m positions, (m,) ascending.

    "recent": m = min(n_recent, n). "question": the span after each row's last image token (the whole prompt when a
    row has none; the last ``question_tokens`` when > 0), m = the shortest row's span (at least 1, the last token),
    capped at n_recent + n_random. Rows of one batch share the probe set, as the paper's probes do.
    """
    if config.probe_set == "recent":
        m = min(config.n_recent, n)
    elif config.question_tokens > 0:
        m = min(config.question_tokens, n, config.n_probes)
    else:
        if image_mask is None:
            raise ZipVLInputError(f"probe_set='question' without question_tokens needs the image mask: {_NEEDS_MASK}")
        image = image_mask.to(torch.bool).reshape(-1, n)
        positions = torch.arange(1, n + 1, device=image.device)
        last_image = (image * positions).amax(dim=-1)  # 1-based position of the last image token, 0 when none
        m = max(1, min(int((n - last_image).min()), config.n_probes))
    return torch.arange(n - m, n, dtype=torch.long)


def pool_tokens(x: torch.Tensor, pool: str, kernel: int) -> torch.Tensor:
    """SnapKV-style smoothing of a (B, n) per-token quantity over ``kernel`` neighbouring positions (odd; an edge
    uses the positions that exist). "none" or kernel 1 returns ``x`` itself."""
    if pool == "none" or kernel == 1:
        return x
    if pool == "max":  # max_pool1d pads with -inf: an edge takes the max of its existing neighbours
        return F.max_pool1d(x[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
    return F.avg_pool1d(x[:, None], kernel, stride=1, padding=kernel // 2, count_include_pad=False)[:, 0]


def pooled_rule(mass: torch.Tensor, score: torch.Tensor, total, pool: str, kernel: int):
    """Pooling before the tau rule: -> (rule mass, score, total). Count and ranking are both pooled, and the tau rule
    then runs against the pooled mass's own total; without pooling everything comes back as given."""
    if pool == "none" or kernel <= 1:
        return mass, score, total
    rule = pool_tokens(mass, pool, kernel)
    return rule, pool_tokens(score, pool, kernel), rule.double().sum(dim=-1)


def protected_tokens(b: int, n: int, config: ZipVLConfig, image_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """(B, n) bool of the always-kept tokens (first ``protect_first``, last ``protect_last``, text tokens with
    ``protect_text``), or None when nothing is protected."""
    if not (config.protect_first or config.protect_last or config.protect_text):
        return None
    protected = torch.zeros(b, n, dtype=torch.bool, device=device)
    protected[:, : config.protect_first] = True
    if config.protect_last:
        protected[:, max(0, n - config.protect_last):] = True
    if config.protect_text:
        if image_mask is None:  # would silently protect everything, i.e. run dense
            raise ZipVLInputError(f"protect_text needs the image mask: {_NEEDS_MASK}")
        protected |= ~image_mask.to(device=device, dtype=torch.bool).expand(b, n)
    return protected


def keep_set(mass: torch.Tensor, score: torch.Tensor, tau: float, total, protected: torch.Tensor | None = None,
             floor: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-5 with the protection and floor variants -> (kept (B, n) bool, count (B,) long).

    Unprotected: p = the tau rule on ``mass`` against ``total``, raised to ``floor``; kept = top-p by ``score``.
    Protected: kept = protected + the smallest number of unprotected tokens whose mass reaches ``tau`` of the
    unprotected mass (by ``score``), raised so the total reaches ``floor``. tau >= 1 keeps every token.
    """
    if protected is None:
        count = adaptive_count(mass, tau, total)
        if floor:
            count = count.clamp(min=min(floor, mass.shape[-1]))
        return top_by_score(score, count), count
    rest_mass = mass.masked_fill(protected, 0.0)
    rest = (~protected).sum(dim=-1)
    count = torch.minimum(adaptive_count(rest_mass, tau, rest_mass.double().sum(dim=-1)), rest)
    count = torch.maximum(count, (floor - protected.sum(dim=-1)).clamp(min=0))
    kept = protected | top_by_score(score.masked_fill(protected, float("-inf")), count)
    return kept, kept.sum(dim=-1)
