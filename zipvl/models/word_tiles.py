# SPDX-License-Identifier: Apache-2.0
"""Word tiles: visual tokens the frozen LM reads as words.

The frozen SmolLM2 answers the vision tasks from a perfect description of each image (easy-vqa 0.985, the
1,024-visual-token canvas 0.91; ``scripts/frozen_lm_ceiling.py``), while tokens that the answer loss alone shapes
let it *name* a colour but not *check* one named in the question (docs/vision.md). So here the projector is taught
to hand the LM each tile in the LM's own vocabulary. A tile's 64 tokens are a target sequence:

    vectors[:64 - n]  +  the LM's input embeddings of " <colour> <shape>" (or " empty"), n of them

``vectors`` are 64 trained vectors shared by every tile (a soft prompt that tells the LM how to read a tile and in
which form to answer); the last n positions are the caption's word embeddings, exactly. Three steps, LM frozen
throughout (:func:`zipvl.models.vision_training.train` runs them):

1. :func:`train_tile_prompt` trains ``vectors`` by the answer loss through the frozen LM, on training samples whose
   tiles are written with their exact captions (no tower involved);
2. :func:`align_tower` trains tower + projector to output those target sequences for labelled tiles (easy-vqa train
   images, procedural tiles with one or no object): a regression, no LM, thousands of tiles a minute. It has to be
   near-exact on both parts: the words carry the tile, the vectors tell the LM to read it and to answer in a word
   (reproduced loosely, the LM answers with sentence openings);
3. the usual answer-loss stage may follow from there.

The model stays a plain LLaVA: the targets only shape what its projector outputs.
"""

from __future__ import annotations

import time

import torch

from ..data.scenes import COLORS, SHAPES, count_caption
from .text_teacher import labelled_loss, relative_error, train_prompt_vectors
from .tower_pretraining import LabelledTiles, PretrainConfig, heldout_easyvqa_images, patch_tokens, warmup_cosine

EMPTY = "empty"


def tile_cells(caption: str) -> list[str]:
    """``scenes.tile_caption``'s text split into one cell per tile, raster order ("red circle" / "empty")."""
    return [cell for row in caption.split("\n") for cell in row.split(", ")]


class TilePrompt(torch.nn.Module):
    """The target token sequence of a tile: trained vectors, then the caption's word embeddings (the LM's own)."""

    def __init__(self, embeddings: torch.nn.Embedding, tokenizer, tokens_per_tile: int):
        super().__init__()
        rms = embeddings.weight.pow(2).mean().sqrt()
        self.vectors = torch.nn.Parameter(torch.randn(tokens_per_tile, embeddings.weight.shape[1]) * rms)
        self.embeddings, self.tokenizer = embeddings, tokenizer
        self._ids: dict[str, list[int]] = {}

    def caption_ids(self, cell: str) -> list[int]:
        if cell not in self._ids:
            self._ids[cell] = self.tokenizer(" " + cell, add_special_tokens=False)["input_ids"]
        return self._ids[cell]

    def tile(self, cell: str) -> torch.Tensor:
        """[tokens_per_tile, d]: what the projector should output for a tile holding ``cell``."""
        words = self.embeddings(torch.tensor(self.caption_ids(cell))).detach()
        return torch.cat([self.vectors[: len(self.vectors) - len(words)], words])

    def fill(self, ids: torch.Tensor, cells: list[str], image_token_id: int) -> torch.Tensor:
        """Input embeddings of ``ids`` with the image slots holding ``cells``' target sequences, in order."""
        x = self.embeddings(ids)
        slots = (ids == image_token_id)[..., None]
        return x.masked_scatter(slots, torch.cat([self.tile(c) for c in cells]).to(x.dtype))


def train_tile_prompt(model, image_token_id: int, prompt: TilePrompt, batches, steps: int, lr: float,
                      log=print, bf16: bool = True, cosine: bool = False) -> list[float]:
    """Step 1: ``steps`` AdamW steps on ``prompt.vectors`` alone, the LM frozen (:func:`train_prompt_vectors`).
    ``batches`` yields (encoded batch with labels, the cells of its images in order). Returns the loss per step."""

    def batch_loss(batch):
        inputs, cells = batch
        x = prompt.fill(inputs["input_ids"], cells, image_token_id)
        hidden = model.model.language_model(inputs_embeds=x, attention_mask=inputs["attention_mask"])
        return labelled_loss(model, hidden.last_hidden_state, inputs["labels"])

    return train_prompt_vectors(prompt.vectors, batch_loss, batches, steps, lr, "tile prompt", log, bf16, cosine)


def labelled_cells(present: torch.Tensor, shape: torch.Tensor, color: torch.Tensor,
                   count: torch.Tensor) -> list[str]:
    """:class:`LabelledTiles`' labels as caption cells (an overview's: its count, :func:`scenes.count_caption`)."""
    colors = list(COLORS)
    return [count_caption(n) if n >= 0 else f"{colors[c]} {SHAPES[s]}" if p else EMPTY
            for p, s, c, n in zip(present.tolist(), shape.tolist(), color.tolist(), count.tolist())]


def tile_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """[tiles, 64, d]: the projector's output, what the LM reads for each tile."""
    return model.model.multi_modal_projector(patch_tokens(model.model.vision_tower, pixels))


def align_tower(model, processor, prompt: TilePrompt, steps: int, lr: float, tower_lr: float, batch: int, seed: int,
                bf16: bool, position_lr: float = 3e-2, caption_weight: float = 10.0, overview_fraction: float = 0.2,
                fresh_projector: bool = True, log=print) -> list[dict]:
    """Step 2: tower + a freshly initialised projector (or, continuing a word-tile model, its own) regress each labelled tile's target sequence
    (:func:`relative_error`, the caption's positions weighted ``caption_weight``; cosine lr, AdamW, clip 1).
    Returns the per-step log: the loss, the error on the trained vectors' and on the caption's positions, and the
    share of the batch's tiles (and of its canvas overviews, ``overview_fraction`` of each batch) that decode to
    their own caption.

    The tower's patch position embedding learns at ``position_lr`` (100x the rest): stage 1 pools the patch tokens,
    so its tower's last layer no longer tells the patches apart (a linear fit of the vectors from it: relative error
    0.90; with the patch index added: 0.013), and the 62 position-specific vectors, which teach the LM to read a tile
    and answer in a word, stayed at 0.94 after 1,200 steps at the tower's lr; at 3e-2, 2,400 steps from v7's tower
    bring them to 0.0027 (docs/vision.md, stage 15)."""
    torch.manual_seed(seed)
    size = model.config.vision_config.image_size
    data = LabelledTiles(processor.image_processor, size,
                         PretrainConfig(seed=seed, scene_fraction=0.6, overview_fraction=overview_fraction))
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    # a fresh projector: the regression defines its output entirely, and an answer-trained one can sit far off the
    # embeddings' scale (v7's tokens: RMS 7.3 on canvas tiles, the embeddings' 0.14; from there the regression stalled)
    for layer in projector.modules() if fresh_projector else ():
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    position = tower.embeddings.position_embedding.weight
    opt = torch.optim.AdamW([{"params": list(projector.parameters()), "lr": lr, "base": lr},
                             {"params": [position], "lr": position_lr, "base": position_lr},
                             {"params": [p for p in tower.parameters() if p is not position], "lr": tower_lr,
                              "base": tower_lr}],
                            weight_decay=0.01)
    params = list(tower.parameters()) + list(projector.parameters())
    for p in params:
        p.requires_grad_(True)
    history, start = [], time.perf_counter()
    tower.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = g["base"] * warmup_cosine(step, steps, 50)
        pixels, present, shape, color, count = data.batch(batch)
        cells = labelled_cells(present, shape, color, count)
        target = torch.stack([prompt.tile(c) for c in cells]).detach()
        words = caption_mask(prompt, cells)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = tile_tokens(model, pixels)
        error = relative_error(out, target)
        weight = torch.where(words, caption_weight, 1.0)
        loss = (error * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        error = error.detach()
        hits = [a == b for a, b in zip(decode_cells(prompt, out.detach()), cells)]
        overviews = [h for h, n in zip(hits, count.tolist()) if n >= 0]
        history.append({"step": step, "loss": loss.item(), "vectors": error[~words].mean().item(),
                        "words": error[words].mean().item(), "cells": sum(hits) / len(hits),
                        **({"overviews": sum(overviews) / len(overviews)} if overviews else {})})
        if step % 100 == 0 or step == steps - 1:
            recent = history[-100:]
            mean = {k: sum(h[k] for h in recent) / len(recent) for k in history[-1] if k not in ("step", "overviews")}
            seen = [h["overviews"] for h in recent if "overviews" in h]
            log(f"align step {step:5d}  loss {mean['loss']:.4f}  error: vectors {mean['vectors']:.4f} words "
                f"{mean['words']:.4f}  cells {mean['cells']:.3f}"
                + (f"  overviews {sum(seen) / len(seen):.3f}" if seen else "") + f"  {time.perf_counter() - start:.0f} s")
    tower.eval()
    return history


def caption_mask(prompt: TilePrompt, cells: list[str]) -> torch.Tensor:
    """[tiles, tokens_per_tile] bool: True where a tile's target is its caption's words (the last n positions)."""
    mask = torch.zeros(len(cells), len(prompt.vectors), dtype=torch.bool)
    for i, cell in enumerate(cells):
        mask[i, len(prompt.vectors) - len(prompt.caption_ids(cell)):] = True
    return mask


def candidate_cells() -> list[str]:
    """Every caption a tile can have: empty, each colour-shape pair, an overview's count of one to three."""
    return [EMPTY] + [f"{c} {s}" for c in COLORS for s in SHAPES] + [count_caption(n) for n in (1, 2, 3)]


@torch.no_grad()
def decode_cells(prompt: TilePrompt, out: torch.Tensor) -> list[str]:
    """The candidate cell whose target sequence is nearest each tile's tokens (:func:`relative_error`, summed over
    the tile's tokens). Expanded as sum_t w_t (|o_t|^2 - 2 o_t.c_t + |c_t|^2) with w_t = 1 / |c_t|^2, all candidates
    in one matmul (fp64): 0.023 s per batch of 64 tiles; one pass per candidate cost 0.13 s, ~40 % of a regression
    step."""
    cells = candidate_cells()
    targets = torch.stack([prompt.tile(c) for c in cells]).double()  # [cells, 64, d]
    o = out.double()
    norms = targets.pow(2).sum(-1)  # [cells, 64]
    w = 1 / norms.clamp_min(1e-6)  # relative_error's denominator
    dist = (o.pow(2).sum(-1) @ w.T - 2 * o.flatten(1) @ (targets * w[..., None]).flatten(1).T
            + (norms * w).sum(-1))  # [tiles, cells]
    return [cells[i] for i in dist.argmin(1).tolist()]


def save_tile_prompt(prompt: TilePrompt, path) -> None:
    """The tile prompt's vectors (fp32): what :func:`decode_cells` compares a trained tower's tokens with."""
    from safetensors.torch import save_file

    save_file({"vectors": prompt.vectors.detach().float().contiguous()}, str(path))


def load_tile_prompt(embeddings: torch.nn.Embedding, tokenizer, path) -> TilePrompt:
    from safetensors.torch import load_file

    vectors = load_file(str(path))["vectors"]
    prompt = TilePrompt(embeddings, tokenizer, vectors.shape[0])
    prompt.vectors.data.copy_(vectors)
    prompt.vectors.requires_grad_(False)
    return prompt


@torch.no_grad()
def heldout_cell_accuracy(model, processor, prompt: TilePrompt, n: int = 512, seed: int = 12345) -> dict:
    """Share of held-out tiles whose tokens decode (:func:`decode_cells`) to their own caption: the first ``n``
    labelled easy-vqa *test* images, the tiles of fresh 4 x 4 canvases (``n`` tiles, mostly empty, as in the eval),
    and the overviews of ``n // 2`` more (their count)."""
    import random

    from ..data.scenes import overview, random_canvas, tile_caption, tiles

    proc = processor.image_processor
    images, labels = heldout_easyvqa_images(n)
    out = {"easyvqa_test_images": len(images),
           "easyvqa": _decoded_share(model, prompt, proc, images, [f"{c} {s}" for s, c in labels])}
    rng, size = random.Random(seed), model.config.vision_config.image_size
    canvas_tiles, cells = [], []
    while len(canvas_tiles) < n:
        scene = random_canvas(rng, 4, size)
        canvas_tiles += tiles(scene.render(), size)
        cells += tile_cells(tile_caption(scene.shapes, 4, 4))
    out["canvas_tiles"] = len(canvas_tiles)
    out["canvas"] = _decoded_share(model, prompt, proc, canvas_tiles, cells)
    objects = [i for i, c in enumerate(cells) if c != EMPTY]
    out["canvas_object_tiles"] = len(objects)
    out["canvas_objects"] = _decoded_share(model, prompt, proc, [canvas_tiles[i] for i in objects],
                                           [cells[i] for i in objects])
    scenes = [random_canvas(rng, 4, size) for _ in range(n // 2)]
    out["canvas_overviews"] = _decoded_share(model, prompt, proc, [overview(s.render(), size) for s in scenes],
                                             [count_caption(len(s.shapes)) for s in scenes])
    return out


def _decoded_share(model, prompt: TilePrompt, image_processor, images, cells: list[str]) -> float:
    hits = 0
    for k in range(0, len(images), 64):
        pixels = image_processor(images=images[k:k + 64], return_tensors="pt")["pixel_values"]
        hits += sum(a == b for a, b in zip(decode_cells(prompt, tile_tokens(model, pixels)), cells[k:k + 64]))
    return round(hits / len(images), 4)
