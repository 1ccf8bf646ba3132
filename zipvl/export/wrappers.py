# SPDX-License-Identifier: Apache-2.0
"""Graph wrappers: the modules torch.onnx exports, one per engine graph, plus the model description.

- ``embed``: token ids (B, S) -> embeddings (B, S, hidden).
- ``vision``: pixels -> projected image features (LLaVA / LLaVA-NeXT: per-crop features before LLaVA-NeXT's
  unpad/newline packing, which the runtime does; Qwen2-VL: one image's patches + its rotary positions -> merged).
- ``prefill``: (1, n, hidden) embeddings, positions, probes -> last logits + per layer compacted K/V, kept count and
  kept indices (the ZipVL op, one lowering or the other).
- ``decode``: (B, 1, hidden) embeddings, positions, per layer cache buffers + valid lengths -> logits + per layer
  the buffers with the new token's K/V written at slot length (present, bound in place by the runtime) and the
  token's query (for the runtime's re-selection).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModelError
from .attention import ExportContext, active

VLM_TYPES = {"LlavaForConditionalGeneration": "llava", "LlavaNextForConditionalGeneration": "llava_next",
             "Qwen2VLForConditionalGeneration": "qwen2_vl"}
TEXT_TYPES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def model_kind(model) -> str:
    name = type(model).__name__
    kind = VLM_TYPES.get(name) or TEXT_TYPES.get(name)
    if kind is None:
        raise UnsupportedModelError(
            f"zipvl-build does not support {name}; supported: {', '.join([*VLM_TYPES, *TEXT_TYPES])}")
    return kind


def text_parts(model):
    """(decoder stack, lm_head) of a supported model."""
    inner = model.model
    return getattr(inner, "language_model", inner), model.lm_head


def describe(model) -> dict:
    """The model section of the manifest: everything the runtime needs to drive the graphs."""
    kind = model_kind(model)
    text_cfg = model.config.get_text_config(decoder=True)
    heads = text_cfg.num_attention_heads
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // heads
    desc = {
        "type": kind, "architecture": type(model).__name__, "num_layers": text_cfg.num_hidden_layers,
        "hidden_size": text_cfg.hidden_size, "num_heads": heads, "num_kv_heads": text_cfg.num_key_value_heads,
        "head_dim": head_dim, "vocab_size": text_cfg.vocab_size, "dtype": "float32",
        "max_position_embeddings": text_cfg.max_position_embeddings, "mrope": kind == "qwen2_vl",
        "eos_token_id": text_cfg.eos_token_id, "pad_token_id": getattr(text_cfg, "pad_token_id", None),
        # the attention's softmax scale: the runtime's re-selection recomputes the decode attention with it
        "scaling": float(getattr(text_parts(model)[0].layers[0].self_attn, "scaling", head_dim**-0.5)),
    }
    cfg = model.config
    if kind in ("llava", "llava_next"):
        vc = cfg.vision_config
        desc["image_token_id"] = cfg.image_token_id
        desc["vision"] = {"image_size": vc.image_size, "patch_size": vc.patch_size,
                          "feature_layer": cfg.vision_feature_layer,
                          "select_strategy": cfg.vision_feature_select_strategy}
        if kind == "llava_next":
            desc["vision"]["image_grid_pinpoints"] = [list(p) for p in cfg.image_grid_pinpoints]
    elif kind == "qwen2_vl":
        vc = cfg.vision_config
        desc["image_token_id"] = cfg.image_token_id
        desc["vision_start_token_id"] = cfg.vision_start_token_id
        desc["vision_end_token_id"] = cfg.vision_end_token_id
        desc["vision"] = {"patch_size": vc.patch_size, "temporal_patch_size": vc.temporal_patch_size,
                          "spatial_merge_size": vc.spatial_merge_size, "in_channels": vc.in_channels}
    return desc


class EmbedGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):  # (B, S) int64 -> (B, S, hidden)
        return self.embed(input_ids)


class LlavaVisionGraph(nn.Module):
    """pixel_values (N, 3, H, W) -> projected features (N, tokens, hidden), one row per image (LLaVA) or crop
    (LLaVA-NeXT)."""

    def __init__(self, model):
        super().__init__()
        self.tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.layer = model.config.vision_feature_layer
        self.strategy = model.config.vision_feature_select_strategy

    def forward(self, pixel_values):
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states
        layers = [self.layer] if isinstance(self.layer, int) else list(self.layer)
        feats = torch.cat([hidden[i] for i in layers], dim=-1)
        if self.strategy == "default":
            feats = feats[:, 1:]  # drop CLS
        return self.projector(feats)


class Qwen2VLVisionGraph(nn.Module):
    """One image: pixel patches (P, C*T*ps*ps) + rotary positions (P, 2) int64 -> merged features (P / m^2, hidden).

    Same blocks as the HF tower; full attention over the image's patches (one image per call), written out so no
    ``cu_seqlens.tolist()`` split reaches the exporter.
    """

    def __init__(self, model):
        super().__init__()
        self.visual = model.model.visual

    def forward(self, pixel_values, vision_position_ids):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        v = self.visual
        hs = v.patch_embed(pixel_values)
        cos, sin = v.rotary_pos_emb(hs, vision_position_ids)
        p = hs.shape[0]
        for blk in v.blocks:
            attn = blk.attn
            q, k, val = attn.qkv(blk.norm1(hs)).reshape(p, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
            o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                               val.transpose(0, 1)[None], scale=attn.scaling)
            hs = hs + attn.proj(o[0].transpose(0, 1).reshape(p, -1))
            hs = hs + blk.mlp(blk.norm2(hs))
        return v.merger(hs)


class PrefillGraph(nn.Module):
    """inputs_embeds (1, n, hidden), position_ids (1, n) or (3, 1, n), probes (1, m) int32 [, image_mask (1, n) bool
    with protect_text] -> logits (1, vocab) of the last position, then per layer key/value (1, H_kv, n, d) compacted
    (first kept_count valid), kept_count (1,) int32, kept_indices (1, n) int32 [, attended_indices (1, n) int32 with
    tau_evict: the sparse attention's own set, -1 padded]."""

    def __init__(self, model, taus: list[float], sparse_prefill: bool = True, selection: dict | None = None,
                 floors: list[float] | None = None, evict_tau: float = 0.0):
        super().__init__()
        self.text, self.lm_head = text_parts(model)
        self.taus = [float(t) for t in taus]
        self.sparse_prefill = bool(sparse_prefill)
        self.selection = dict(selection or {})  # the op's variant attributes (graphs.prefill_selection)
        self.floors = [float(f) for f in floors or []]  # per-layer min kept ratio; [] = none
        self.evict_tau = float(evict_tau)

    def forward(self, inputs_embeds, position_ids, probes, image_mask=None):
        ctx = ExportContext(probes=probes, taus=self.taus, sparse_prefill=self.sparse_prefill,
                            selection=self.selection, floors=self.floors, evict_tau=self.evict_tau,
                            image_mask=image_mask)
        with active(ctx):
            hs = self.text(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False).last_hidden_state
        outs = [self.lm_head(hs[:, -1, :])]
        for i in range(len(self.taus)):
            outs.extend(ctx.outputs[i])
        return tuple(outs)


class DecodeGraph(nn.Module):
    """input_ids (B, 1) int64, position_ids (B, 1) or (3, B, 1), past = per layer (key (B, H_kv, C_i, d), value,
    length (B,) int32: entries [0, length) of each row are valid; per KV head: (B * H_kv, 1, C_i, d) and
    (B * H_kv,)) -> logits (B, vocab), then per layer present
    key/value (B, H_kv, C_i, d) (the buffers with the token at slot length) and query (B, H, d) after RoPE.

    A generated token is text, so the step embeds it itself: one session run per step (no separate embed graph and
    thread pool between steps); the table is the embed graph's, stored once in weights.bin."""

    def __init__(self, model, num_layers: int, per_kv_head: bool = False):
        super().__init__()
        self.text, self.lm_head = text_parts(model)
        self.embed = model.get_input_embeddings()
        self.num_layers = num_layers
        self.per_kv_head = per_kv_head  # past (B * H_kv, 1, C_i, d) and length (B * H_kv,): a length per KV head

    def forward(self, input_ids, position_ids, past):
        ctx = ExportContext(past={i: tuple(past[3 * i: 3 * i + 3]) for i in range(self.num_layers)},
                            per_kv_head=self.per_kv_head)
        with active(ctx):
            hs = self.text(inputs_embeds=self.embed(input_ids), position_ids=position_ids,
                           use_cache=False).last_hidden_state
        outs = [self.lm_head(hs[:, -1, :])]
        for i in range(self.num_layers):
            outs.extend(ctx.outputs[i])
        return tuple(outs)
