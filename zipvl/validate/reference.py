# SPDX-License-Identifier: Apache-2.0
"""The PyTorch side of validation: ``zipvl.enable`` on the HF model, greedy ``generate`` on the engine's prompts
(left-padded into one batch, as the reference supports), with a recording policy that keeps the reference's own
kept sets (what :func:`zipvl.select_tokens` chose for each layer and row)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import ZipVLConfig
from ..reference.apply import disable, enable
from ..reference.cache import ZipVLCache
from ..reference.hf_compat import cache_kwargs
from ..reference.policy import ZipVLPolicy
from ..reference.selection import Selection
from ..runtime.multimodal import Prompt


class RecordingPolicy(ZipVLPolicy):
    """ZipVLPolicy that records each selection's cache set (what the engine's ``kept_indices`` report: the kept set,
    or the larger tau_evict set) and scores: ``records[layer]`` / ``scores[layer]`` list one (n_row,) array per row,
    in call order (one call per row when the batch is padded, one call for the batch otherwise).

    ``forced[layer]`` (optional, rows in the same order): use these cache sets instead of the reference's own
    choice, while still recording the reference's own choice on the same inputs. Validation uses it to follow the
    engine's path after an fp32 near-tie, so every later layer is still checked against the reference.

    With tau_evict the sparse attention's own (tau) set differs from the cache's: ``attended[layer]`` records it
    and ``forced_attention[layer]`` forces it, in the same way.
    """

    def __init__(self, config: ZipVLConfig, forced: dict[int, list[np.ndarray]] | None = None,
                 forced_attention: dict[int, list[np.ndarray]] | None = None):
        super().__init__(config)
        self.records: dict[int, list[np.ndarray]] = {}
        self.attended: dict[int, list[np.ndarray]] = {}
        self.scores: dict[int, list[np.ndarray]] = {}
        self.forced, self.forced_attention = forced, forced_attention

    def select(self, query, key, scaling, ctx):
        sel = super().select(query, key, scaling, ctx)
        i = ctx.layer_idx
        start = len(self.records.get(i, []))
        for row, score in zip(sel.cache_kept, sel.score):  # row (n,), or (H_kv, n) with a set per KV head
            self.records.setdefault(i, []).append(_positions(row))
            self.scores.setdefault(i, []).append(score.double().numpy())
        if sel.evict is not None:
            self.attended.setdefault(i, []).extend(_positions(row) for row in sel.kept)
        if self.forced is None or i not in self.forced:
            return sel
        kept = _mask(sel.kept, self.forced[i][start:])
        if sel.evict is not None:  # the cache set and the attention's own tau set, both the engine's
            attention = sel.kept if self.forced_attention is None else _mask(sel.kept, self.forced_attention[i][start:])
            return Selection(kept=attention, count=attention.sum(-1), mass=sel.mass, score=sel.score,
                             probes=sel.probes, evict=kept)
        return Selection(kept=kept, count=kept.sum(-1), mass=sel.mass, score=sel.score, probes=sel.probes)


def _mask(like: torch.Tensor, rows: list) -> torch.Tensor:
    """Kept positions per row (one array, or one per KV head) -> a bool mask shaped ``like`` (B, [H_kv,] n)."""
    kept = torch.zeros_like(like)
    for r in range(kept.shape[0]):
        for target, positions in zip(kept[r] if kept.dim() == 3 else [kept[r]],
                                     rows[r] if kept.dim() == 3 else [rows[r]]):
            target[torch.from_numpy(np.asarray(positions, dtype=np.int64))] = True
    return kept


def _positions(kept: torch.Tensor):
    """(n,) bool -> kept positions; (H_kv, n) -> one array per KV head."""
    if kept.dim() == 2:
        return [_positions(row) for row in kept]
    return kept.nonzero().squeeze(-1).numpy()


@dataclass
class ReferenceRun:
    tokens: np.ndarray  # (B, T)
    logits: list[np.ndarray]  # T x (B, vocab)
    kept: list[list]  # [layer][row] ascending kept positions (in the unpadded prompt); per KV head: [head] arrays
    scores: list[list[np.ndarray | None]]  # [layer][row] the reference's normalised scores (None: dense layer)
    prefill_counts: list[list[int]]  # [layer][row] cache entries after prefill
    cache_lengths: list[list[int]]  # [layer][row] after generation
    retained: list[list[np.ndarray]]  # [layer][row] original positions the cache holds after generation
    prefill_stats: object
    attended: list[list[np.ndarray]] | None = None  # [layer][row] the sparse attention's set (tau_evict only)


def batch_inputs(model, prompts: list[Prompt], desc: dict) -> dict:
    """Left-padded model kwargs for the prompts."""
    pad = desc.get("pad_token_id")
    pad = 0 if pad is None else int(pad)
    n = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), n), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, n - len(p.input_ids):] = torch.from_numpy(p.input_ids)
        mask[r, n - len(p.input_ids):] = 1
    kw = {"input_ids": ids, "attention_mask": mask}
    with_px = [p for p in prompts if p.pixel_values is not None]
    if not with_px:
        return kw
    kind = desc["type"]
    if kind == "llava":
        kw["pixel_values"] = torch.cat([torch.from_numpy(np.asarray(p.pixel_values)).reshape(-1, *np.shape(
            p.pixel_values)[-3:]) for p in with_px])
    elif kind == "llava_next":
        crops = max(np.shape(p.pixel_values)[1] for p in with_px)
        px = []
        for p in with_px:
            x = torch.from_numpy(np.asarray(p.pixel_values))
            px.append(torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 0, 0, crops - x.shape[1])))
        kw["pixel_values"] = torch.cat(px)
        kw["image_sizes"] = torch.cat([torch.from_numpy(np.asarray(p.image_sizes)).reshape(-1, 2) for p in with_px])
    elif kind == "qwen2_vl":
        kw["pixel_values"] = torch.cat([torch.from_numpy(np.asarray(p.pixel_values)) for p in with_px])
        kw["image_grid_thw"] = torch.cat([torch.from_numpy(np.asarray(p.image_grid_thw)).reshape(-1, 3)
                                          for p in with_px])
        kw["mm_token_type_ids"] = (ids == desc["image_token_id"]).long()
    return kw


@torch.no_grad()
def run_reference(model, prompts: list[Prompt], desc: dict, config: ZipVLConfig, max_new_tokens: int,
                  forced: dict[int, list[np.ndarray]] | None = None,
                  forced_attention: dict[int, list[np.ndarray]] | None = None) -> ReferenceRun:
    """Greedy reference generation with ZipVL enabled (EOS ignored, so both sides make the same number of steps).
    ``forced``: see :class:`RecordingPolicy`."""
    from transformers import GenerationConfig

    policy = RecordingPolicy(config, forced, forced_attention)
    state = enable(model, policy=policy)
    inputs = batch_inputs(model, prompts, desc)
    state.mark_images(inputs["input_ids"])
    saved_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # generate would otherwise merge the model's EOS back in
    try:
        cache = ZipVLCache()
        gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                               pad_token_id=desc.get("pad_token_id") or 0, output_logits=True,
                               return_dict_in_generate=True)
        out = model.generate(**inputs, generation_config=gen,
                             **cache_kwargs(model, cache))
    finally:
        model.generation_config.eos_token_id = saved_eos
        disable(model)
    b = len(prompts)
    n_in = out.sequences.shape[1] - len(out.logits)
    kept, scores = [], []
    for layer in range(desc["num_layers"]):
        rows = policy.records.get(layer)
        if rows is None:  # dense layer: the reference keeps every valid token
            rows = [np.arange(len(p.input_ids)) for p in prompts]
        kept.append(rows[-b:])
        scores.append(policy.scores.get(layer, [None] * b)[-b:])
    # tau_evict: the attention's own set per layer (a dense layer's is its cache set)
    attended = [policy.attended[i][-b:] if i in policy.attended else kept[i] for i in range(desc["num_layers"])] \
        if config.tau_evict is not None else None
    # what each layer's cache holds after prefill (the stats' ``kept`` is the attention's count)
    counts = [list(s.cache_length) for s in sorted(state.prefill_stats.layers, key=lambda s: s.layer)]
    pads = [n_in - len(p.input_ids) for p in prompts]  # left padding shifts every slot of a row
    if config.head_reduce == "kv":  # the engine's layout: each KV head's own entries
        h_kv = desc["num_kv_heads"]
        kept = [[row if isinstance(row, list) else [row] * h_kv for row in layer] for layer in kept]
        counts = [[[len(head) for head in row] for row in layer] for layer in kept]
        held = [[[layer.valid[r] if layer.heads is None else layer.valid[r] & layer.heads[r, j] for j in range(h_kv)]
                 for r in range(b)] for layer in cache.layers]
        retained = [[[(layer.slots[r][mask] - pads[r]).numpy() for mask in rows[r]] for r in range(b)]
                    for layer, rows in zip(cache.layers, held)]
        lengths = [[[int(mask.sum()) for mask in row] for row in rows] for rows in held]
    else:
        retained = [[(layer.slots[r][layer.valid[r]] - pads[r]).numpy() for r in range(b)] for layer in cache.layers]
        lengths = cache.physical_lengths()
    return ReferenceRun(tokens=out.sequences[:, n_in:].numpy(), logits=[x.float().numpy() for x in out.logits],
                        kept=kept, scores=scores, prefill_counts=counts, cache_lengths=lengths,
                        retained=retained, prefill_stats=state.prefill_stats, attended=attended)
