# SPDX-License-Identifier: Apache-2.0
"""Export of each engine graph: example inputs, dynamic shapes, I/O names, translation table.

I/O names are the runtime's contract (see docs/engine.md): ``inputs_embeds``, ``position_ids``, ``probes``;
``logits``; per layer ``present.{i}.key/value``, ``kept_count.{i}``, ``kept_indices.{i}`` (prefill) and
``past.{i}.key/value/length`` -> ``present.{i}.key/value``, ``query.{i}`` (decode).

``--ops`` picks the lowering of the two attention ops in prefill and decode (embed and vision do not depend on it):
standard = opset 18 + ``com.microsoft.GroupQueryAttention``, plugin = opset 23 (``Attention``) + ZipVLTokenSelect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.export import Dim

from ..config import ZipVLConfig
from ..reference.selection import probe_positions
from . import lowering_plugin, lowering_standard
from .attention import DECODE_NAME, PREFILL_NAME
from .wrappers import DecodeGraph, EmbedGraph, LlavaVisionGraph, PrefillGraph, Qwen2VLVisionGraph

#: graphs whose content depends on --ops (the attention lowerings); the others can be reused across lowerings
OPS_GRAPHS = ("prefill", "decode")


def graph_names(desc: dict) -> list[str]:
    return ["embed"] + (["vision"] if "vision" in desc else []) + ["prefill", "decode"]


def _lowering(ops: str):
    """(module, opset) of a lowering; its onnx schemas registered."""
    module = lowering_plugin if ops == "plugin" else lowering_standard
    module.register_schemas()
    return module, (lowering_plugin.OPSET if ops == "plugin" else 18)


def export_graph(name: str, model, desc: dict, config: ZipVLConfig, ops: str, path: Path) -> None:
    fn = {"embed": _embed, "vision": _vision, "prefill": _prefill, "decode": _decode}[name]
    module, args, dynamic, inputs, outputs, table = fn(model, desc, config, ops)
    opset = _lowering(ops)[1] if name in OPS_GRAPHS else 18
    with torch.no_grad(), _attention(model, name):
        torch.onnx.export(module.eval(), args, str(path), dynamo=True, dynamic_shapes=dynamic, input_names=inputs,
                          output_names=outputs, custom_translation_table=table, external_data=True, optimize=True,
                          opset_version=opset, verbose=False)


def export_extras(model, desc: dict, out_dir: Path) -> list[str]:
    """Non-graph tensors the runtime needs (LLaVA-NeXT's image_newline for its packing)."""
    if desc["type"] == "llava_next":
        np.save(out_dir / "image_newline.npy", model.model.image_newline.detach().float().numpy())
        return ["image_newline.npy"]
    return []


class _attention:
    """Route the text tower to the export attention of this graph, restore afterwards."""

    def __init__(self, model, graph: str):
        self.model, self.graph = model, graph

    def __enter__(self):
        text = self.model.config.get_text_config(decoder=True)
        self.saved = text._attn_implementation
        name = {"prefill": PREFILL_NAME, "decode": DECODE_NAME}.get(self.graph)
        if name is not None:
            self._set(name)

    def __exit__(self, *exc):
        self._set(self.saved or "sdpa")

    def _set(self, name):
        if hasattr(self.model.config, "vision_config"):
            self.model.set_attn_implementation({"text_config": name, "vision_config": "sdpa"})
        else:
            self.model.set_attn_implementation(name)


def _positions(desc: dict, batch: int, n: int, start: int = 0) -> torch.Tensor:
    pos = torch.arange(start, start + n).expand(batch, n)
    return pos[None].expand(3, batch, n).contiguous() if desc["mrope"] else pos.contiguous()


def _embed(model, desc, config, ops):
    ids = torch.randint(3, desc["vocab_size"], (2, 5))
    dyn = ({0: Dim("batch", min=1), 1: Dim("seq", min=1)},)
    return EmbedGraph(model), (ids,), dyn, ["input_ids"], ["inputs_embeds"], None


def _vision(model, desc, config, ops):
    v = desc["vision"]
    if desc["type"] == "qwen2_vl":
        ps, tps, c, m = v["patch_size"], v["temporal_patch_size"], v["in_channels"], v["spatial_merge_size"]
        grid = (1, 2 * m, 4 * m)
        p = grid[1] * grid[2]
        pixels = torch.randn(p, c * tps * ps * ps)
        from transformers.vision_utils import get_vision_position_ids

        pos = get_vision_position_ids(torch.tensor([grid]), m)
        groups = Dim("merged_tokens", min=1)
        dyn = ({0: (m * m) * groups}, {0: (m * m) * groups})
        return (Qwen2VLVisionGraph(model), (pixels, pos), dyn, ["pixel_values", "vision_position_ids"],
                ["image_features"], None)
    size = v["image_size"]
    pixels = torch.randn(2, 3, size, size)
    dyn = ({0: Dim("images", min=1)},)
    return LlavaVisionGraph(model), (pixels,), dyn, ["pixel_values"], ["image_features"], None


def prefill_selection(config) -> dict:
    """The selection variants baked into every layer of the prefill graph, as the op's attributes (trace-time
    arguments of the lowerings: at the paper's values they add no node)."""
    return {"pool_kernel": config.pool_kernel if config.pool == "max" else 1, "protect_first": config.protect_first,
            "protect_last": config.protect_last, "head_max": config.head_reduce == "max",
            "per_kv_head": config.head_reduce == "kv"}


def prefill_floors(desc, config) -> list[float]:
    """Per-layer kept-ratio floors (``min_ratio``); [] when none is set."""
    floors = [config.layer_floor(i, desc["num_layers"]) for i in range(desc["num_layers"])]
    return floors if any(floors) else []


def _prefill_taus(desc, config) -> list[float]:
    return [1.0 if i in config.dense_layers else config.tau for i in range(desc["num_layers"])]


def _prefill(model, desc, config, ops):
    n = max(config.n_probes + 16, 32)
    embeds = torch.randn(1, n, desc["hidden_size"]) * 0.02
    probes = probe_positions(n, config).to(torch.int32)[None]
    seq = Dim("seq", min=2)
    dyn = ({1: seq}, {(2 if desc["mrope"] else 1): seq}, {1: Dim("probes", min=1, max=max(2, config.n_probes))})
    args, inputs = (embeds, _positions(desc, 1, n), probes), ["inputs_embeds", "position_ids", "probes"]
    if config.protect_text:  # the image mask: every token outside it is kept
        image = torch.zeros(1, n, dtype=torch.bool)
        image[:, 2: n // 2] = True
        args, dyn, inputs = (*args, image), (*dyn, {1: seq}), [*inputs, "image_mask"]
    evict_tau = config.evict_tau if config.tau_evict is not None else 0.0
    outputs = ["logits"]
    for i in range(desc["num_layers"]):
        outputs += [f"present.{i}.key", f"present.{i}.value", f"kept_count.{i}", f"kept_indices.{i}"]
        outputs += [f"attended_indices.{i}"] if evict_tau else []
    lowering = _lowering(ops)[0]
    fn = lowering.plugin_prefill_attention if ops == "plugin" else lowering.standard_prefill_attention
    table = {torch.ops.zipvl.prefill_attention.default: fn}
    graph = PrefillGraph(model, _prefill_taus(desc, config), config.sparse_prefill, prefill_selection(config),
                         prefill_floors(desc, config), evict_tau)
    return graph, args, dyn, inputs, outputs, table


def _decode(model, desc, config, ops):
    b, layers = 2, desc["num_layers"]
    h_kv, d = desc["num_kv_heads"], desc["head_dim"]
    batch = Dim("batch", min=1)
    per_kv_head = config.head_reduce == "kv"  # the buffers as (B * H_kv, 1, C, d): one length per KV head
    rows, heads = (b * h_kv, 1) if per_kv_head else (b, h_kv)
    past_rows = h_kv * batch if per_kv_head else batch
    past, past_dyn, inputs, outputs = [], [], ["input_ids", "position_ids"], ["logits"]
    for i in range(layers):
        c = 5 + i
        cap = Dim(f"cache_{i}", min=2)
        # valid entries per row (< C: room for the token)
        length = (c - 1 - torch.arange(rows, dtype=torch.int32) % 3).to(torch.int32)
        past += [torch.randn(rows, heads, c, d), torch.randn(rows, heads, c, d), length]
        past_dyn += [{0: past_rows, 2: cap}, {0: past_rows, 2: cap}, {0: past_rows}]
        inputs += [f"past.{i}.key", f"past.{i}.value", f"past.{i}.length"]
        outputs += [f"present.{i}.key", f"present.{i}.value", f"query.{i}"]
    ids = torch.randint(0, desc["vocab_size"], (b, 1))
    pos_dyn = {1: batch} if desc["mrope"] else {0: batch}
    dyn = ({0: batch}, pos_dyn, past_dyn)
    lowering = _lowering(ops)[0]
    fn = lowering.plugin_decode_attention if ops == "plugin" else lowering.standard_decode_attention
    table = {torch.ops.zipvl.decode_attention.default: fn}
    return (DecodeGraph(model, layers, per_kv_head), (ids, _positions(desc, b, 1, start=9), past), dyn, inputs,
            outputs, table)
