# SPDX-License-Identifier: Apache-2.0
"""Method steps 6-7 as plain tensor ops: attention on the kept tokens only, and compaction of K/V to them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kept_index_lists(kept: torch.Tensor) -> list[torch.Tensor]:
    """(B, n) bool -> per-row ascending LongTensors of kept positions."""
    return [row.nonzero().squeeze(-1) for row in kept]


def sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kept: torch.Tensor,
    scaling: float | None = None,
) -> torch.Tensor:
    """Step 6: causal attention over Q[T], K[T], V[T] (original order), zero output for rows outside T.

    query (B, H, n, d), key/value (B, H_kv, n, d), kept (B, n) bool -> (B, H, n, d) in query's dtype.
    Each row's gathered block runs through SDPA (FlashAttention where the backend has it): cost ~ p^2, not n^2.
    """
    b, h, n, d = query.shape
    # A (B, n, H, d) buffer seen as (B, H, n, d): callers that need transformers' (B, n, H, d) layout get it without
    # another copy (``out.transpose(1, 2)`` is already contiguous).
    out = query.new_zeros(b, n, h, d).transpose(1, 2)
    gqa = query.shape[1] != key.shape[1]
    for b, idx in enumerate(kept_index_lists(kept)):
        if idx.numel() == 0:
            continue
        q, k, v = query[b : b + 1, :, idx], key[b : b + 1, :, idx], value[b : b + 1, :, idx]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        out[b : b + 1, :, idx] = o
    return out


def compact(tensors: list[torch.Tensor], kept: torch.Tensor, fill: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Step 7: keep only the kept entries along dim -2 of each (B, H_kv, L, d) tensor (or dim -1 of (B, L)).

    Rows with fewer kept entries than the longest are right-padded; the returned ``valid`` (B, p_max) says which
    entries are real. New, contiguous tensors are allocated so the evicted entries' memory is actually freed.
    """
    counts = kept.sum(dim=-1)
    p_max = int(counts.max()) if counts.numel() else 0
    # Kept entries first, in their original order (stable sort on "not kept").
    order = torch.sort((~kept).to(torch.int8), dim=-1, stable=True).indices[:, :p_max]
    valid = torch.arange(p_max, device=kept.device)[None, :] < counts[:, None]
    out = []
    for t in tensors:
        if t.dim() == 2:
            g = torch.gather(t, 1, order)
            out.append(torch.where(valid, g, torch.full_like(g, fill)).contiguous())
        else:
            idx = order[:, None, :, None].expand(t.shape[0], t.shape[1], p_max, t.shape[3])
            out.append(torch.gather(t, 2, idx).contiguous())
    return out, valid
