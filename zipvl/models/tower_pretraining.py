# SPDX-License-Identifier: Apache-2.0
"""Stage 1 of the vision recipe: teach the CLIP tower to see before it talks to the LM.

LLaVA starts from a CLIP tower that contrastive pre-training already taught to see; no such weights can be
downloaded here, so stage 1 trains the tower on labelled tiles instead — whether a tile holds an object, its shape and
its colour — with small linear heads on the mean of the patch tokens the LM will read. It needs no LM, so it runs at
thousands of tiles per minute on the CPU; stage 2 (:mod:`zipvl.models.vision_training`) then trains projector + tower
through the frozen LM. The heads are thrown away: only the tower's weights carry over.

Labelled tiles: the easy-vqa train images (shape and colour read off their own questions) and procedural single
tiles (:mod:`zipvl.data.scenes`, one or no object, plain or striped background).
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass

import torch

from ..data.scenes import COLORS, SHAPES, overview, random_canvas, random_scene


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 1500
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    scene_fraction: float = 0.5  # share of each batch that is procedural tiles (the rest easy-vqa train images)
    empty_fraction: float = 0.3  # share of procedural tiles with no object
    # share of each batch that is canvas overviews (scenes.canvas_images' first image, 2 x 2 to 4 x 4), labelled with
    # their object count; stage 1's heads do not read counts, so only the word-tile regression asks for them
    overview_fraction: float = 0.0
    seed: int = 0
    bf16: bool = True


def easyvqa_labels(questions, answers, image_ids) -> dict[int, tuple[str, str]]:
    """(shape, colour) per easy-vqa image, read off the image's own shape and colour questions ("what shape is
    present?" -> shape; "what is the color of the circle?" -> colour and shape); images whose questions give
    neither are left out."""
    shape, color = {}, {}
    for q, a, i in zip(questions, answers, image_ids):
        words = set(re.findall(r"[a-z]+", q))
        if a in SHAPES:
            shape[i] = a
            color.update({i: c for c in words & set(COLORS)})
        elif a in COLORS:
            color[i] = a
            shape.update({i: s for s in words & set(SHAPES)})
    return {i: (shape[i], color[i]) for i in shape if i in color}


class TileHeads(torch.nn.Module):
    """Linear read-outs of the mean patch token: object present, shape, colour."""

    def __init__(self, hidden: int):
        super().__init__()
        self.present = torch.nn.Linear(hidden, 2)
        self.shape = torch.nn.Linear(hidden, len(SHAPES))
        self.color = torch.nn.Linear(hidden, len(COLORS))

    def forward(self, patch_tokens: torch.Tensor):
        pooled = patch_tokens.mean(1)
        return self.present(pooled), self.shape(pooled), self.color(pooled)


class LabelledTiles:
    """Seeded, endless batches of (pixels, present, shape, colour, count); shape/colour are -1 on empty tiles and on
    overviews, count is -1 except on overviews. Procedural tiles are rendered at ``image_size``; easy-vqa's 64 px
    images are resized by the processor, as in zipvl-eval."""

    def __init__(self, image_processor, image_size: int, cfg: PretrainConfig):
        from easy_vqa import get_train_image_paths, get_train_questions
        from PIL import Image

        self.rng = random.Random(cfg.seed)
        self.cfg, self.size, self.proc = cfg, image_size, image_processor
        labels = easyvqa_labels(*get_train_questions())
        paths = get_train_image_paths()
        self.evqa = [(Image.open(paths[i]).convert("RGB"), lab) for i, lab in sorted(labels.items())]

    def _scene_tile(self):
        n = 0 if self.rng.random() < self.cfg.empty_fraction else 1
        scene = random_scene(self.rng, 1, 1, self.size, n)
        lab = (scene.shapes[0].shape, scene.shapes[0].color) if n else None
        return scene.render(), lab

    def _overview(self):
        scene = random_canvas(self.rng, self.rng.randint(2, 4), self.size)
        return overview(scene.render(), self.size), len(scene.shapes)

    def batch(self, size: int):
        n_overview = round(size * self.cfg.overview_fraction)
        size -= n_overview
        n_scene = round(size * self.cfg.scene_fraction)
        items = [self._scene_tile() for _ in range(n_scene)] + self.rng.sample(self.evqa, size - n_scene)
        items += [self._overview() for _ in range(n_overview)]
        images = []
        for img, _ in items:  # flips keep shape and colour; easy-vqa's triangles point either way after it
            if self.rng.random() < 0.5:
                img = img.transpose(0)
            images.append(img)
        pixels = self.proc(images=images, return_tensors="pt")["pixel_values"]
        present = torch.tensor([lab is not None for _, lab in items], dtype=torch.long)
        pair = [lab if isinstance(lab, tuple) else None for _, lab in items]
        shape = torch.tensor([SHAPES.index(lab[0]) if lab else -1 for lab in pair])
        color = torch.tensor([list(COLORS).index(lab[1]) if lab else -1 for lab in pair])
        count = torch.tensor([lab if isinstance(lab, int) else -1 for _, lab in items])
        return pixels, present, shape, color, count


def patch_tokens(tower, pixels: torch.Tensor) -> torch.Tensor:
    """What LLaVA hands the projector with ``vision_feature_layer=-1`` and the "default" strategy."""
    return tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1:]


def _loss_and_hits(heads, tokens, present, shape, color):
    lp, ls, lc = heads(tokens)
    ce = torch.nn.functional.cross_entropy
    loss = ce(lp, present) + ce(ls, shape, ignore_index=-1) + ce(lc, color, ignore_index=-1)
    obj = present.bool()
    hits = {"present": (lp.argmax(-1) == present).float().mean().item(),
            "shape": (ls.argmax(-1) == shape)[obj].float().mean().item(),
            "color": (lc.argmax(-1) == color)[obj].float().mean().item()}
    return loss, hits


def warmup_cosine(step: int, steps: int, warmup: int) -> float:
    """The lr factor of a tile stage: linear warm-up over ``warmup`` steps times a cosine from 1 to 0."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


def pretrain_tower(tower, image_processor, image_size: int, cfg: PretrainConfig, log=print) -> dict:
    """Trains ``tower`` (a CLIPVisionModel) in place; returns the log and the accuracy on held-out tiles."""
    torch.manual_seed(cfg.seed)
    heads = TileHeads(tower.config.hidden_size)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = LabelledTiles(image_processor, image_size, cfg)
    tower.train()
    history, start = [], time.perf_counter()
    for step in range(cfg.steps):
        lr = cfg.lr * warmup_cosine(step, cfg.steps, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        pixels, present, shape, color, _ = data.batch(cfg.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            tokens = patch_tokens(tower, pixels)
        loss, hits = _loss_and_hits(heads, tokens.float(), present, shape, color)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append({"step": step, "loss": loss.item(), **hits})
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"tower step {step:5d}  loss {loss.item():.3f}  shape {hits['shape']:.2f}  color {hits['color']:.2f}"
                f"  present {hits['present']:.2f}  {time.perf_counter() - start:.0f} s")
    tower.eval()
    return {"history": history, "heldout": heldout_tile_accuracy(tower, heads, image_processor),
            "seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
def heldout_tile_accuracy(tower, heads, image_processor, n: int = 512) -> dict:
    """Head accuracy (shape, colour) on the first ``n`` labelled easy-vqa *test* images (labels from their questions)."""
    images, labels = heldout_easyvqa_images(n)
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
    shape = torch.tensor([SHAPES.index(s) for s, _ in labels])
    color = torch.tensor([list(COLORS).index(c) for _, c in labels])
    _, hits = _loss_and_hits(heads, patch_tokens(tower, pixels), torch.ones_like(shape), shape, color)
    return {"easyvqa_test_images": len(labels), "shape": round(hits["shape"], 4), "color": round(hits["color"], 4)}


def heldout_easyvqa_images(n: int) -> tuple[list, list[tuple[str, str]]]:
    """The first ``n`` labelled easy-vqa *test* images (PIL, unresized: the processor resizes, as in zipvl-eval)
    and their (shape, colour), read off their own questions."""
    from easy_vqa import get_test_image_paths, get_test_questions
    from PIL import Image

    labels = sorted(easyvqa_labels(*get_test_questions()).items())[:n]
    paths = get_test_image_paths()
    return [Image.open(paths[i]).convert("RGB") for i, _ in labels], [lab for _, lab in labels]
