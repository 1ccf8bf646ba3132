# SPDX-License-Identifier: Apache-2.0
"""The export boundary: ZipVL prefill attention as one PyTorch custom op, ``zipvl::prefill_attention``.

Its eager body is the reference (:func:`zipvl.select_tokens` + :func:`zipvl.sparse_attention`); its fake returns
fixed-capacity outputs (capacity n, plus explicit counts), so no output shape depends on the data. The ONNX
exporter replaces it by one of the two lowerings (:mod:`.lowering_standard`, :mod:`.lowering_plugin`).
"""

from __future__ import annotations

import torch

from ..reference.selection import select_tokens
from ..reference.sparse import sparse_attention


@torch.library.custom_op("zipvl::prefill_attention", mutates_args=())
def prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    probes: torch.Tensor,
    tau: float,
    scaling: float,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ZipVL prefill attention for one layer (method steps 1-7).

    Parameters
    ----------
    query : (B, H, n, d) after rotary embedding
    key, value : (B, H_kv, n, d)
    probes : (B, m) int32, ascending probe positions ending at n - 1 (see :func:`zipvl.probe_positions`)
    tau, scaling : float; num_heads, num_kv_heads, head_dim : int (required, so export never drops them)

    Returns
    -------
    attn_out : (B, H, n, d), zero rows outside the kept set T
    kept_indices : (B, n) int32, ascending kept positions, first ``kept_count`` valid, rest -1
    kept_count : (B,) int32
    key_compact, value_compact : (B, H_kv, n, d), first ``kept_count`` entries = K[T] / V[T], rest zero
    """
    sel = select_tokens(query, key, probes.long(), tau, scaling)
    out = sparse_attention(query, key, value, sel.kept, scaling)
    idx = sel.indices(pad=-1)
    count = sel.count
    safe = idx.clamp(min=0)[:, None, :, None].expand_as(key)
    valid = (idx >= 0)[:, None, :, None]
    kc = torch.where(valid, torch.gather(key, 2, safe), torch.zeros((), dtype=key.dtype))
    vc = torch.where(valid, torch.gather(value, 2, safe), torch.zeros((), dtype=value.dtype))
    return out, idx.to(torch.int32), count.to(torch.int32), kc, vc


@prefill_attention.register_fake
def _(query, key, value, probes, tau, scaling, num_heads, num_kv_heads, head_dim):
    b, _, n, _ = query.shape
    return (
        torch.empty_like(query),
        query.new_empty((b, n), dtype=torch.int32),
        query.new_empty((b,), dtype=torch.int32),
        torch.empty_like(key),
        torch.empty_like(value),
    )
