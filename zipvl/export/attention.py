# SPDX-License-Identifier: Apache-2.0
"""Export-only attention functions, registered in transformers' AttentionInterface.

``zipvl_export_prefill`` calls the ``zipvl::prefill_attention`` op and stashes the compacted K/V, counts and kept
indices in the active :class:`ExportContext`, so the graph wrapper can return them as graph outputs.
``zipvl_export_decode`` calls the ``zipvl::decode_attention`` op against the runtime-owned cache buffers handed in
through the context (the model gets no HF cache, so nothing concatenates the whole cache inside the graph): it
attends over each row's valid entries plus the new token, writes the token into the buffers (present K/V) and
stashes the token's query, from which the runtime recomputes the re-selection's attention every
``decode_interval`` steps (a fused attention returns no probabilities).

Neither name is registered in AttentionMaskInterface: HF then builds no mask (prefill is unpadded and causal, decode
masks with the runtime's per-row lengths).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface

from . import ops  # noqa: F401  (registers torch.ops.zipvl.prefill_attention / decode_attention)

PREFILL_NAME = "zipvl_export_prefill"
DECODE_NAME = "zipvl_export_decode"


@dataclass
class ExportContext:
    """What the attention functions read (probes, taus, past cache) and write (per-layer outputs)."""

    probes: torch.Tensor | None = None  # (1, m) int32
    taus: list[float] = field(default_factory=list)  # per layer; 1.0 = dense layer
    sparse_prefill: bool = True  # False: dense attention, the kept set only compacts the cache
    selection: dict = field(default_factory=dict)  # the op's variant attributes (graphs.prefill_selection)
    floors: list[float] = field(default_factory=list)  # per layer: min kept ratio (ZipVLConfig.min_ratio); [] = none
    evict_tau: float = 0.0  # > tau: the cache keeps the tau_evict set (ZipVLConfig.tau_evict); 0 = the tau set
    image_mask: torch.Tensor | None = None  # (1, n) bool: protect every text token (ZipVLConfig.protect_text)
    per_kv_head: bool = False  # decode: the past buffers hold one length per KV head (head_reduce="kv")
    past: dict = field(default_factory=dict)  # layer -> (key (B,H_kv,C,d), value, length (B,) int32)
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
    """query (1, H, n, d), key/value (1, H_kv, n, d) -> ((1, n, H, d), None); stashes (K_c, V_c, count, indices)
    and, with tau_evict, the attention's own count."""
    ctx = _ctx()
    i = module.layer_idx
    _, h, _, d = query.shape
    scale = float(d**-0.5 if scaling is None else scaling)
    tau = float(ctx.taus[i])
    variants = dict(ctx.selection)
    if ctx.floors:
        variants["floor_ratio"] = float(ctx.floors[i])
    if ctx.evict_tau:
        variants["evict_tau"] = max(float(ctx.evict_tau), tau)  # a dense layer (tau 1) keeps everything anyway
    if ctx.image_mask is not None:
        variants["image_mask"] = ctx.image_mask
    out, kept, count, kc, vc, attended = torch.ops.zipvl.prefill_attention(
        query, key, value, ctx.probes, tau, bool(ctx.sparse_prefill), scale, int(h), int(key.shape[1]), int(d),
        **variants)
    ctx.outputs[i] = (kc, vc, count, kept) + ((attended,) if ctx.evict_tau else ())
    return out.transpose(1, 2).contiguous(), None


def decode_export_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One-token decode over the runtime's cache buffers, through the ``zipvl::decode_attention`` op.

    query (B, H, 1, d), key/value (B, H_kv, 1, d) = the new token only; past key/value (B, H_kv, C, d) and valid
    lengths (B,) int32 from the context. Returns ((B, 1, H, d), None); stashes (present key, present value, query):
    the buffers with the token written at slot length, and the token's query for the runtime's re-selection.
    """
    ctx = _ctx()
    i = module.layer_idx
    past_k, past_v, past_length = ctx.past[i]
    _, h, _, d = query.shape
    scale = float(d**-0.5 if scaling is None else scaling)
    out, present_k, present_v = torch.ops.zipvl.decode_attention(
        query, key, value, past_k, past_v, past_length, scale, int(h), int(key.shape[1]), int(d),
        per_kv_head=ctx.per_kv_head)
    ctx.outputs[i] = (present_k, present_v, query[:, :, 0])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(PREFILL_NAME, prefill_export_attention)
AttentionInterface.register(DECODE_NAME, decode_export_attention)
