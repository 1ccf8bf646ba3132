# SPDX-License-Identifier: Apache-2.0
"""Validation prompts: real chat prompts through the engine's processor when it has one (the embedded default),
otherwise seeded random token prompts with one random image sized for the model (tiny models from config)."""

from __future__ import annotations

import numpy as np

from ..runtime.engine import Engine
from ..runtime.multimodal import Prompt, image_features

QUESTIONS = [
    "Describe this image in one sentence.",
    "What is the capital of France? Answer briefly, then explain why it is famous.",
    "List three colours you can see in the picture and say which one dominates.",
    "Write a short poem about the ocean at night.",
    "Explain in two sentences how a bicycle works.",
    "What would you pack for a weekend hiking trip? Give a short list.",
    "Summarise the picture for a child who cannot see it.",
    "Why is the sky blue? Keep the answer short.",
]


def make_prompts(engine: Engine, count: int, seed: int = 0) -> list[Prompt]:
    """``count`` prompts of different lengths, each with one image when the model takes images."""
    if engine.manifest.get("processor"):
        return _processor_prompts(engine, count, seed)
    return [_random_prompt(engine, np.random.default_rng(seed + i), 20 + 13 * i) for i in range(count)]


def _image(rng, size=(96, 128)):
    from PIL import Image

    h, w = size
    base = np.linspace(0, 255, w)[None, :, None] * np.array([1.0, 0.5, 0.2])[None, None, :]
    noise = rng.integers(0, 64, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _processor_prompts(engine: Engine, count: int, seed: int) -> list[Prompt]:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(engine.dir / engine.manifest["processor"])
    token = getattr(processor, "image_token", "<image>")
    out = []
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        question = " ".join(QUESTIONS[(i + j) % len(QUESTIONS)] for j in range(1 + i % 3))
        messages = [{"role": "user", "content": f"{token}\n{question}"}]
        text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = processor(images=_image(rng), text=text, return_tensors="np")
        out.append(Prompt(enc["input_ids"][0], enc.get("pixel_values"), enc.get("image_sizes"),
                          enc.get("image_grid_thw")))
    return out


def _random_prompt(engine: Engine, rng, text_len: int) -> Prompt:
    desc = engine.desc
    ids = rng.integers(3, min(desc["vocab_size"], 900) - 3, text_len)
    if "vision" not in desc:
        return Prompt(ids)
    v, kind = desc["vision"], desc["type"]
    prompt = Prompt(ids)
    if kind == "llava":
        prompt.pixel_values = rng.standard_normal((1, 3, v["image_size"], v["image_size"])).astype(np.float32)
    elif kind == "llava_next":
        s = v["image_size"]
        h, w = max(v["image_grid_pinpoints"], key=lambda p: p[0] * p[1])
        prompt.image_sizes = np.array([[h - 3, w - 5]])
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        crops = image_size_to_num_patches([h - 3, w - 5], v["image_grid_pinpoints"], s)
        prompt.pixel_values = rng.standard_normal((1, crops, 3, s, s)).astype(np.float32)
    elif kind == "qwen2_vl":
        m, ps, tps, c = v["spatial_merge_size"], v["patch_size"], v["temporal_patch_size"], v["in_channels"]
        grid = np.array([[1, 2 * m, 3 * m]])
        prompt.image_grid_thw = grid
        prompt.pixel_values = rng.standard_normal((int(grid.prod()), c * tps * ps * ps)).astype(np.float32)
    n_img = image_features(desc, engine.vision, prompt, engine.newline).shape[0]
    image = np.full(n_img, desc["image_token_id"])
    if kind == "qwen2_vl":  # <|vision_start|> image <|vision_end|>, ids from the tiny models' convention
        image = np.concatenate([[desc.get("vision_start_token_id", 997)], image,
                                [desc.get("vision_end_token_id", 998)]])
    prompt.input_ids = np.concatenate([ids[:4], image, ids[4:]]).astype(np.int64)
    return prompt
