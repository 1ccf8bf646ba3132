# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the fixed-budget baselines (ratio validation and the budget rule live in reference.policy)."""

from __future__ import annotations

import torch

from ..reference.selection import Selection


def keep_all(query: torch.Tensor) -> Selection:
    """Every token kept, no probe run (probe cost 0): a dense layer expressed as a Selection."""
    b, _, n, _ = query.shape
    zeros = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    return Selection(kept=torch.ones(b, n, dtype=torch.bool, device=query.device),
                     count=torch.full((b,), n, dtype=torch.long, device=query.device), mass=zeros, score=zeros,
                     probes=None)


def counts_of(kept: torch.Tensor) -> torch.Tensor:
    return kept.sum(dim=-1).to(torch.long)
