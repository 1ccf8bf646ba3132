# SPDX-License-Identifier: Apache-2.0
"""Export-only attention functions, registered in transformers' AttentionInterface.

``zipvl_export_prefill`` calls the ``zipvl::prefill_attention`` op and stashes the compacted K/V, counts and kept
indices in the active :class:`ExportContext`, so the graph wrapper can return them as graph outputs.
``zipvl_export_decode`` runs one decode step against the runtime-owned cache handed in through the context (the
model gets no HF cache, so nothing concatenates the whole cache inside the graph): it attends over the retained
entries (with their validity mask) plus the new token, and stashes the new token's K/V and the current token's
attention probabilities (summed over heads) that the runtime's decode-time re-selection needs.

Neither name is registered in AttentionMaskInterface: HF then builds no mask (prefill is unpadded and causal, decode
masks with the runtime's validity mask).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface

from . import ops  # noqa: F401  (registers torch.ops.zipvl.prefill_attention)

PREFILL_NAME = "zipvl_export_prefill"
DECODE_NAME = "zipvl_export_decode"


@dataclass
class ExportContext:
    """What the attention functions read (probes, taus, past cache) and write (per-layer outputs)."""

    probes: torch.Tensor | None = None  # (1, m) int32
    taus: list[float] = field(default_factory=list)  # per layer; 1.0 = dense layer
    past: dict = field(default_factory=dict)  # layer -> (key (B,H_kv,C,d), value, mask (B,C) bool)
    outputs: dict = field(default_factory=dict)  # layer -> tuple of tensors


_ACTIVE: list[ExportContext] = []


@contextlib.contextmanager
def active(ctx: ExportContext):
    _ACTIVE.append(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.pop()


def _ctx() -> ExportContext:
    if not _ACTIVE:
        raise RuntimeError("zipvl export attention called outside an ExportContext")
    return _ACTIVE[-1]


def prefill_export_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query (1, H, n, d), key/value (1, H_kv, n, d) -> ((1, n, H, d), None); stashes (K_c, V_c, count, indices)."""
    ctx = _ctx()
    i = module.layer_idx
    _, h, _, d = query.shape
    scale = float(d**-0.5 if scaling is None else scaling)
    out, kept, count, kc, vc = torch.ops.zipvl.prefill_attention(
        query, key, value, ctx.probes, float(ctx.taus[i]), scale, int(h), int(key.shape[1]), int(d)
    )
    ctx.outputs[i] = (kc, vc, count, kept)
    return out.transpose(1, 2).contiguous(), None


def decode_export_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One-token decode over the runtime's cache.

    query (B, H, 1, d), key/value (B, H_kv, 1, d) = the new token only; past key/value (B, H_kv, C, d) and mask
    (B, C) from the context. Returns ((B, 1, H, d), None); stashes (new key, new value, probs (B, C + 1)).
    """
    ctx = _ctx()
    i = module.layer_idx
    past_k, past_v, past_mask = ctx.past[i]
    b, h, _, d = query.shape
    h_kv = key.shape[1]
    g = h // h_kv
    scale = float(d**-0.5 if scaling is None else scaling)
    q = query.reshape(b, h_kv, g, d).float()  # GQA: the group's query heads share one K/V head
    s_past = torch.matmul(q, past_k.float().transpose(-1, -2)) * scale  # (B, H_kv, g, C)
    s_past = s_past.masked_fill(~past_mask[:, None, None, :], float("-inf"))
    s_new = (q * key.float()).sum(-1, keepdim=True) * scale  # (B, H_kv, g, 1): the token always sees itself
    probs = torch.softmax(torch.cat([s_past, s_new], dim=-1), dim=-1)
    c = past_k.shape[2]
    out = torch.matmul(probs[..., :c], past_v.float()) + probs[..., c:] * value.float()  # (B, H_kv, g, d)
    ctx.outputs[i] = (key, value, probs.sum(dim=(1, 2)))
    return out.to(query.dtype).reshape(b, h, 1, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(PREFILL_NAME, prefill_export_attention)
AttentionInterface.register(DECODE_NAME, decode_export_attention)
