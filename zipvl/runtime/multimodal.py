# SPDX-License-Identifier: Apache-2.0
"""Prompt preparation outside the graphs: token embedding, image features merged at the image tokens, and the
original positions (1-D, or Qwen2-VL's 3-D mRoPE positions plus the per-sequence rope delta for decoding)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import numpy as np

from ..errors import ZipVLInputError


@dataclass
class Prompt:
    """One request. input_ids (n,) int64; pixel_values as the model's processor returns them (LLaVA
    (N, 3, H, W), LLaVA-NeXT (N, crops, 3, h, w) + image_sizes (N, 2), Qwen2-VL (patches, dim) + image_grid_thw
    (N, 3))."""

    input_ids: np.ndarray
    pixel_values: np.ndarray | None = None
    image_sizes: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None

    def __post_init__(self):
        self.input_ids = np.asarray(self.input_ids, dtype=np.int64).reshape(-1)


def image_features(desc: dict, vision, prompt: Prompt, newline: np.ndarray | None) -> np.ndarray:
    """All image features of the prompt in order, (tokens, hidden)."""
    kind, px = desc["type"], np.asarray(prompt.pixel_values, dtype=np.float32)
    if kind == "llava":
        px = px.reshape(-1, *px.shape[-3:])
        feats = vision.run(None, {"pixel_values": px})[0]
        return feats.reshape(-1, feats.shape[-1])
    if kind == "llava_next":
        return _llava_next(desc, vision, px, np.asarray(prompt.image_sizes), newline)
    if kind == "qwen2_vl":
        import torch
        from transformers.vision_utils import get_vision_position_ids

        grids = np.asarray(prompt.image_grid_thw, dtype=np.int64).reshape(-1, 3)
        merge, out, start = desc["vision"]["spatial_merge_size"], [], 0
        for grid in grids:
            p = int(np.prod(grid))
            pos = get_vision_position_ids(torch.from_numpy(grid[None]), merge).numpy().astype(np.int64)
            out.append(vision.run(None, {"pixel_values": px[start: start + p], "vision_position_ids": pos})[0])
            start += p
        return np.concatenate(out)
    raise ZipVLInputError(f"model type {kind} takes no images")


def _llava_next(desc, vision, px, image_sizes, newline):
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        image_size_to_num_patches,
        unpad_image,
    )

    v = desc["vision"]
    size, pinpoints = v["image_size"], v["image_grid_pinpoints"]
    counts = [image_size_to_num_patches(list(map(int, s)), pinpoints, size) for s in image_sizes]
    crops = np.concatenate([px[i, :c] for i, c in enumerate(counts)]) if px.ndim == 5 else px
    feats = vision.run(None, {"pixel_values": crops})[0]  # (crops, tokens, hidden)
    out, start = [], 0
    side = size // v["patch_size"]
    for s, c in zip(image_sizes, counts):
        f, start = feats[start: start + c], start + c
        if c > 1:  # numpy port of LlavaNextModel.pack_image_features (spatial_unpad + newline)
            gh, gw = get_anyres_image_grid_shape(list(map(int, s)), pinpoints, size)
            x = f[1:].reshape(gh, gw, side, side, -1).transpose(4, 0, 2, 1, 3).reshape(f.shape[-1], gh * side, -1)
            x = unpad_image(x, np.asarray(s))
            x = np.concatenate([x, np.broadcast_to(newline[:, None, None], (x.shape[0], x.shape[1], 1))], axis=-1)
            out.append(np.concatenate([f[0], x.reshape(x.shape[0], -1).T]))
        else:
            out.append(np.concatenate([f[0], newline[None]]))
    return np.concatenate(out)


def mrope_positions(ids: np.ndarray, grids: np.ndarray | None, image_token_id: int, merge: int):
    """Qwen2-VL's get_rope_index for one unpadded sequence -> positions (3, n) int64, rope delta (int)."""
    parts, cur, grid_iter = [], 0, iter(np.asarray(grids).reshape(-1, 3) if grids is not None else [])
    for is_image, group in groupby(ids.tolist(), key=lambda t: t == image_token_id):
        length = len(list(group))
        if not is_image:
            parts.append(np.broadcast_to(np.arange(cur, cur + length), (3, length)))
            cur += length
            continue
        t, h, w = (int(x) for x in next(grid_iter))
        lt, lh, lw = t, h // merge, w // merge
        tt, hh, ww = np.meshgrid(np.arange(lt), np.arange(lh) + cur, np.arange(lw) + cur, indexing="ij")
        parts.append(np.stack([tt.reshape(-1) + cur, hh.reshape(-1), ww.reshape(-1)]))
        cur += max(h, w) // merge
    pos = np.concatenate(parts, axis=1).astype(np.int64)
    return pos, int(pos.max()) + 1 - len(ids)


def prepare(desc: dict, embed, vision, prompt: Prompt, newline):
    """-> inputs_embeds (1, n, hidden) float32, position_ids (1, n) or (3, 1, n), rope delta."""
    ids = prompt.input_ids
    n = len(ids)
    embeds = embed.run(None, {"input_ids": ids[None]})[0]
    image_token = desc.get("image_token_id")
    slots = np.flatnonzero(ids == image_token) if image_token is not None else np.zeros(0, dtype=np.int64)
    if prompt.pixel_values is not None:
        if vision is None:
            raise ZipVLInputError("this engine has no vision graph but the prompt has an image")
        feats = image_features(desc, vision, prompt, newline)
        if feats.shape[0] != len(slots):
            raise ZipVLInputError(f"the prompt has {len(slots)} image tokens but its image gives {feats.shape[0]} "
                                  f"features")
        embeds[0, slots] = feats
    elif len(slots):
        raise ZipVLInputError(f"the prompt has {len(slots)} image tokens but no pixel_values")
    if desc["mrope"]:
        if len(slots):
            pos, delta = mrope_positions(ids, prompt.image_grid_thw, image_token, desc["vision"]["spatial_merge_size"])
        else:
            pos, delta = np.broadcast_to(np.arange(n), (3, n)).astype(np.int64), 0
        return embeds, np.ascontiguousarray(pos[:, None, :]), delta
    return embeds, np.arange(n, dtype=np.int64)[None], 0
