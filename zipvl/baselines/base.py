# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the fixed-budget baselines: ratio validation, the per-layer budget, an all-kept selection."""

from __future__ import annotations

import math

import torch

from ..errors import ZipVLConfigError
from ..reference.selection import Selection


def check_ratio(ratio: float) -> float:
    """A kept ratio in (0, 1], as float."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ZipVLConfigError(f"kept ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def budget(n: int, ratio: float) -> int:
    """Tokens a layer keeps at ``ratio`` of ``n``: ceil(ratio * n), at least 1 (the same rule as FixedRatioPolicy)."""
    return max(1, min(n, math.ceil(ratio * n - 1e-9)))


def keep_all(query: torch.Tensor) -> Selection:
    """Every token kept, no probe run (probe cost 0): a dense layer expressed as a Selection."""
    b, _, n, _ = query.shape
    zeros = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    return Selection(kept=torch.ones(b, n, dtype=torch.bool, device=query.device),
                     count=torch.full((b,), n, dtype=torch.long, device=query.device), mass=zeros, score=zeros,
                     probes=None)


def counts_of(kept: torch.Tensor) -> torch.Tensor:
    return kept.sum(dim=-1).to(torch.long)
