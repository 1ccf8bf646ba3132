# SPDX-License-Identifier: Apache-2.0
"""One prompt through one method: prefill, greedy decode, fidelity against the dense run of the same prompt.

Fidelity is measured by teacher forcing: after the method's prefill, the dense model's greedy tokens are fed through
the method's (copied) cache, giving the method's next-token distribution at every position of the dense answer.
Top-1 agreement and KL(P_dense || P_method) compare them position by position. The method's own greedy answer
equals the dense one exactly when every teacher-forced top-1 agrees (up to float ties), so that case reuses the
dense tokens; otherwise the method decodes freely from its own cache.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..reference.apply import disable, enable
from ..reference.cache import ZipVLCache
from ..reference.hf_compat import cache_kwargs, image_token_id
from ..reference.policy import TokenPolicy
from ..reference.stats import ForwardStats
from .metrics import kl_divergence


@dataclass
class Trace:
    """One method on one prompt."""

    tokens: list[int]
    logprobs: torch.Tensor | None  # (T, V) log-probs along this run's own greedy tokens (kept for the dense reference)
    prefill_s: float
    decode_s: float
    stats: ForwardStats | None = None
    retention: list[float] | None = None  # per layer: fraction of the focus tokens left in the cache after prefill
    rest_retention: list[float] | None = None  # the same for every other prompt token
    tf_agree: list[bool] = field(default_factory=list)  # per dense position: same top-1 as dense
    tf_kl: list[float] = field(default_factory=list)  # per dense position: KL(P_dense || P_method), nats
    reused_reference: bool = False


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(src, "eos_token_id", None)
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else list(value))
    return ids


def prepare(model, inputs: dict) -> dict:
    """Add what some models require and processors may omit (Qwen2-VL's ``mm_token_type_ids``)."""
    inputs = dict(inputs)
    image_id = image_token_id(model)
    if "mm_token_type_ids" not in inputs and image_id is not None and "image_grid_thw" in inputs:
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).long()
    return inputs


def _step(model, token_ids: list[int], mask: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([token_ids], dtype=torch.long, device=mask.device)
    mask = torch.cat([mask, torch.ones(1, len(token_ids), dtype=mask.dtype, device=mask.device)], dim=1)
    # Unpadded prompt: no mask, so every model derives positions from the cache's logical length (Qwen2-VL would
    # otherwise rebuild positions for the whole masked length).
    out = model(input_ids=ids, attention_mask=None if bool(mask.all()) else mask, **cache_kwargs(model, cache),
                use_cache=True)
    return torch.log_softmax(out.logits[0].float(), dim=-1), mask


def _greedy(model, first: torch.Tensor, mask: torch.Tensor, cache, max_new_tokens: int, eos: set[int]):
    tokens, logps, logp = [], [], first
    for step in range(max_new_tokens):
        tok = int(logp.argmax())
        tokens.append(tok)
        logps.append(logp)
        if tok in eos or step == max_new_tokens - 1:
            break
        out, mask = _step(model, [tok], mask, cache)
        logp = out[-1]
    return tokens, torch.stack(logps)


def _retention(cache, focus: list[int], n: int) -> tuple[list[float], list[float]] | tuple[None, None]:
    """Per layer: fraction of the focus positions and of the other prompt positions left after prefill."""
    if not focus or not isinstance(cache, ZipVLCache):
        return None, None
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.tensor(focus)] = True
    return cache.retained_fraction(mask), cache.retained_fraction(~mask)


@torch.no_grad()
def run_prompt(model, inputs: dict, policy: TokenPolicy | None, max_new_tokens: int, eos: set[int],
               reference: Trace | None = None, focus: list[int] | None = None) -> Trace:
    """Prefill + greedy decode of one batch-1 prompt, dense (``policy=None``) or with ``policy``; with a dense
    ``reference`` also the teacher-forced fidelity (see the module docstring)."""
    state = None
    if policy is not None:
        state = enable(model, policy=policy)
        state.mark_images(inputs["input_ids"])
    try:
        cache = ZipVLCache() if policy is not None else DynamicCache()
        start = time.perf_counter()
        out = model(**inputs, **cache_kwargs(model, cache), use_cache=True)
        prefill_s = time.perf_counter() - start
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        stats = state.prefill_stats if state is not None else None
        retention, rest = _retention(cache, focus, inputs["input_ids"].shape[1])
        trace = Trace(tokens=[], logprobs=None, prefill_s=prefill_s, decode_s=0.0, stats=stats,
                      retention=retention, rest_retention=rest)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        start = time.perf_counter()
        if reference is not None and reference.tokens:
            ref = reference.tokens
            forced = first[None]
            if len(ref) > 1:
                rest, _ = _step(model, ref[:-1], mask, copy.deepcopy(cache))
                forced = torch.cat([forced, rest], dim=0)
            agree = forced.argmax(dim=-1).cpu() == torch.tensor(ref)
            trace.tf_agree = agree.tolist()
            trace.tf_kl = kl_divergence(reference.logprobs, forced.cpu()).tolist()
            if bool(agree.all()):
                trace.tokens, trace.reused_reference = list(ref), True
        if not trace.tokens:
            trace.tokens, logprobs = _greedy(model, first, mask, cache, max_new_tokens, eos)
            trace.logprobs = logprobs.cpu() if policy is None else None
        trace.decode_s = time.perf_counter() - start
        return trace
    finally:
        if state is not None:
            disable(model)
