# SPDX-License-Identifier: Apache-2.0
"""The export boundaries: ZipVL prefill attention (``zipvl::prefill_attention``) and one decode step's attention
over the runtime's cache buffer (``zipvl::decode_attention``), each one PyTorch custom op.

Eager bodies are the reference (:meth:`ZipVLPolicy.select_on` + :func:`zipvl.sparse_attention`; plain masked attention
for decode); fakes return fixed-capacity outputs (capacity n or C, plus explicit counts / lengths), so no output shape
depends on the data. The ONNX exporter replaces each op by one of the two lowerings (:mod:`.lowering_standard`:
``com.microsoft.GroupQueryAttention``, :mod:`.lowering_plugin`: ONNX ``Attention``), both fused attention nodes.
"""

from __future__ import annotations

import torch

from ..config import ZipVLConfig
from ..reference.policy import ZipVLPolicy, kept_budget
from ..reference.selection import kept_positions
from ..reference.sparse import sparse_attention


@torch.library.custom_op("zipvl::prefill_attention", mutates_args=())
def prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    probes: torch.Tensor,
    tau: float,
    sparse: bool,
    scaling: float,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    pool_kernel: int = 1,
    protect_first: int = 0,
    protect_last: int = 0,
    head_max: bool = False,
    floor_ratio: float = 0.0,
    evict_tau: float = 0.0,
    image_mask: torch.Tensor | None = None,
    per_kv_head: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ZipVL prefill attention for one layer (method steps 1-7).

    Parameters
    ----------
    query : (B, H, n, d) after rotary embedding
    key, value : (B, H_kv, n, d)
    probes : (B, m) int32, ascending probe positions ending at n - 1 (see :func:`zipvl.probe_positions`)
    tau, scaling : float; num_heads, num_kv_heads, head_dim : int (required, so export never drops them)
    sparse : attention over the kept set only (the paper); False: dense causal attention, the kept set only decides
        the KV compaction (``ZipVLConfig.sparse_prefill=False``, preset "evict_only")
    pool_kernel : > 1: max-pool mass and score over that many neighbours before the tau rule (``pool="max"``)
    protect_first, protect_last : always-kept first / last tokens; the tau rule runs on the rest
        (``ZipVLConfig.protect_first`` / ``protect_last``; preset "evict_question")
    head_max : the mass is the max over query heads instead of the sum (``head_reduce="max"``)
    floor_ratio : at least ceil(floor_ratio * n) tokens kept (``ZipVLConfig.min_ratio`` of this layer)
    evict_tau : > tau: the cache keeps the larger evict_tau set (same score, larger count) while the sparse
        attention uses the tau set (``ZipVLConfig.tau_evict``, preset "safe_evict"); 0: the cache keeps the tau set
    image_mask : (B, n) bool or None; given: every token outside it (text) is always kept (``protect_text``,
        preset "visual_only")
    per_kv_head : one kept set per KV head (``head_reduce="kv"``, preset "evict_question_kv"; needs sparse=False):
        kept_indices / attended_indices (B, H_kv, n), kept_count (B, H_kv), and each KV head's own entries compacted

    Returns
    -------
    attn_out : (B, H, n, d), zero rows outside the kept set T (sparse), or every row (dense)
    kept_indices : (B, n) int32, ascending positions the cache keeps, first ``kept_count`` valid, rest -1
    kept_count : (B,) int32
    key_compact, value_compact : (B, H_kv, n, d), first ``kept_count`` entries = K[T] / V[T], rest zero
    attended_indices : like kept_indices, the tau set T (what the sparse attention used); kept_indices unless
        evict_tau > tau
    """
    heads = "kv" if per_kv_head else ("max" if head_max else "sum")
    config = ZipVLConfig(tau=tau, pool="max" if pool_kernel > 1 else "none", pool_kernel=max(1, pool_kernel),
                         protect_first=protect_first, protect_last=protect_last, protect_text=image_mask is not None,
                         head_reduce=heads, sparse_prefill=sparse, tau_evict=evict_tau if evict_tau > tau else None)
    floor = kept_budget(query.shape[2], floor_ratio) if floor_ratio > 0 else 0
    # The reference policy's own selection on the given probes (the runtime computes them, as the reference does).
    sel = ZipVLPolicy(config).select_on(query, key, probes.long(), scaling, image=image_mask, floor=floor)
    attended = sel.kept if sparse else torch.ones(query.shape[0], query.shape[2], dtype=torch.bool)
    out = sparse_attention(query, key, value, attended, scaling)
    idx = kept_positions(sel.cache_kept, pad=-1)  # (B, n), or (B, H_kv, n) per KV head
    count = sel.cache_kept.sum(dim=-1)
    per_head = idx if per_kv_head else idx[:, None]  # (B, 1 | H_kv, n): one row of positions per KV head
    safe = per_head.clamp(min=0)[..., None].expand_as(key)
    valid = (per_head >= 0)[..., None]
    kc = torch.where(valid, torch.gather(key, 2, safe), torch.zeros((), dtype=key.dtype))
    vc = torch.where(valid, torch.gather(value, 2, safe), torch.zeros((), dtype=value.dtype))
    return out, idx.to(torch.int32), count.to(torch.int32), kc, vc, kept_positions(sel.kept, pad=-1).to(torch.int32)


@prefill_attention.register_fake
def _(query, key, value, probes, tau, sparse, scaling, num_heads, num_kv_heads, head_dim, pool_kernel=1,
      protect_first=0, protect_last=0, head_max=False, floor_ratio=0.0, evict_tau=0.0, image_mask=None,
      per_kv_head=False):
    b, _, n, _ = query.shape
    sets = (b, num_kv_heads) if per_kv_head else (b,)
    return (
        torch.empty_like(query),
        query.new_empty((*sets, n), dtype=torch.int32),
        query.new_empty(sets, dtype=torch.int32),
        torch.empty_like(key),
        torch.empty_like(value),
        query.new_empty((*sets, n), dtype=torch.int32),
    )


@torch.library.custom_op("zipvl::decode_attention", mutates_args=())
def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    past_length: torch.Tensor,
    scaling: float,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    per_kv_head: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step's attention over the runtime's cache buffer.

    Parameters
    ----------
    query : (B, H, 1, d) the new token, after rotary embedding
    key, value : (B, H_kv, 1, d) the new token's K/V
    past_key, past_value : (B, H_kv, C, d) cache buffers; entries [0, past_length[b]) of row b are valid
    past_length : (B,) int32, each row's valid entries (< C)
    scaling : float; num_heads, num_kv_heads, head_dim : int (required, so export never drops them)
    per_kv_head : each KV head has its own entries and length (``head_reduce="kv"``): past_key / past_value are
        (B * H_kv, 1, C, d) (row b * H_kv + j = KV head j of sequence b, the same memory as (B, H_kv, C, d)),
        past_length (B * H_kv,), present likewise

    Returns
    -------
    attn_out : (B, H, 1, d), the token over its row's valid entries then itself
    present_key, present_value : (B, H_kv, C, d), slots [0, past_length[b]) of the past then the new entry at slot
        past_length[b]; later slots are unspecified (GroupQueryAttention zeroes them in a fresh buffer). The runtime
        binds present to the past buffers: then the lowerings write that one slot in place and touch nothing else.
    """
    b, c, d = query.shape[0], past_key.shape[2], past_key.shape[3]
    shape = past_key.shape
    past_key, past_value = (x.reshape(b, num_kv_heads, c, d) for x in (past_key, past_value))
    slot = torch.arange(c, device=query.device)[None, None, :]
    length = past_length.long().reshape(b, -1)[:, :, None]  # (B, 1 | H_kv, 1): per row, or per row and KV head
    at_new = (slot == length)[..., None]
    present_key = torch.where(at_new, key, past_key)
    present_value = torch.where(at_new, value, past_value)
    visible = (slot <= length)[:, :, None, :]  # the valid entries, then the new token at slot length
    g = num_heads // num_kv_heads
    q = query.float().reshape(b, num_kv_heads, g, d)  # GQA: the group's query heads share one K/V head
    scores = torch.matmul(q, present_key.float().transpose(-1, -2)) * scaling  # (B, H_kv, g, C)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    out = torch.matmul(probs, present_value.float()).to(query.dtype).reshape(b, num_heads, 1, d)
    return out, present_key.reshape(shape), present_value.reshape(shape)


@decode_attention.register_fake
def _(query, key, value, past_key, past_value, past_length, scaling, num_heads, num_kv_heads, head_dim,
      per_kv_head=False):
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)
