# SPDX-License-Identifier: Apache-2.0
"""Prompt building and timed greedy generation, dense or ZipVL, with a progress bar."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from .config import ZipVLConfig
from .errors import ZipVLInputError
from .reference.apply import disable, enable
from .reference.cache import ZipVLCache
from .reference.hf_compat import image_token_id, output_cache
from .reference.stats import ForwardStats


def chat_inputs(processor, messages: list[dict], images=None):
    """Tokenised chat prompt; with ``images``, one ``<image>`` placeholder per image leads the first user turn."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if images:
        token = getattr(processor, "image_token", "<image>")
        messages = [dict(m) for m in messages]
        messages[0]["content"] = token * len(images) + "\n" + messages[0]["content"]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if images:
        return processor(text=prompt, images=images, return_tensors="pt")
    return tokenizer(prompt, return_tensors="pt", add_special_tokens=False)


class _Progress(StoppingCriteria):
    """Ticks a progress bar and stamps the first-token time (the prefill's end) without stopping anything."""

    def __init__(self, bar, start: float):
        self.bar, self.start, self.first_token_s = bar, start, None

    def __call__(self, input_ids, scores, **kwargs):
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass
class Generation:
    text: list[str]
    tokens: torch.Tensor  # (B, new) generated ids
    ttft_s: float  # prefill + first token
    total_s: float
    stats: ForwardStats | None = None  # ZipVL prefill statistics (None when dense)
    cache_lengths: list = field(default_factory=list)
    kept_by_type: dict | None = None  # ZipVL: mean over layers of the prompt's visual / text tokens kept

    @property
    def decode_tps(self) -> float:
        steps = self.tokens.shape[1] - 1
        return steps * self.tokens.shape[0] / max(1e-9, self.total_s - self.ttft_s) if steps > 0 else 0.0


@torch.no_grad()
def generate(model, processor, inputs, max_new_tokens: int = 32, config: ZipVLConfig | None = None,
             progress: bool | str = False) -> Generation:
    """Greedy generation; ZipVL when ``config`` is given (enabled for this call only), dense otherwise."""
    if max_new_tokens < 1:
        raise ZipVLInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tokenizer = getattr(processor, "tokenizer", processor)
    state = enable(model, config) if config is not None else None
    if state is not None:
        state.mark_images(inputs["input_ids"])
    label = progress if isinstance(progress, str) else ("zipvl" if config else "dense")
    bar = tqdm(total=max_new_tokens, desc=label, unit="tok", leave=False) if progress else None
    try:
        with bar if bar is not None else nullcontext():
            start = time.perf_counter()
            ticker = _Progress(bar, start)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 stopping_criteria=StoppingCriteriaList([ticker]), return_dict_in_generate=True,
                                 pad_token_id=tokenizer.pad_token_id)
            total = time.perf_counter() - start
    finally:
        stats = state.prefill_stats if state is not None else None
        if state is not None:
            disable(model)
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    cache = output_cache(out)
    lengths = cache.physical_lengths() if hasattr(cache, "physical_lengths") else []
    kept = kept_by_type(cache, inputs["input_ids"], image_token_id(model)) \
        if isinstance(cache, ZipVLCache) else None
    return Generation(text=tokenizer.batch_decode(new, skip_special_tokens=True), tokens=new,
                      ttft_s=ticker.first_token_s or total, total_s=total, stats=stats, cache_lengths=lengths,
                      kept_by_type=kept)


def kept_by_type(cache: ZipVLCache, input_ids: torch.Tensor, image_token_id: int | None) -> dict:
    """Mean over layers of the fraction of the first prompt's visual and text tokens the cache still holds."""
    ids = input_ids[0]
    visual = ids == image_token_id if image_token_id is not None else torch.zeros_like(ids, dtype=torch.bool)
    out = {}
    for name, mask in (("visual", visual), ("text", ~visual)):
        if mask.any():
            per_layer = cache.retained_fraction(mask)
            out[name] = sum(per_layer) / len(per_layer)
    return out
