# SPDX-License-Identifier: Apache-2.0
"""The runtime cache with fused decode attention: the decode graph writes each token into the bound buffers in
place, and the re-selection recomputes the token's attention (a fused op returns no probabilities)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zipvl.runtime import Engine
from zipvl.runtime.kv_cache import KVCache, LayerCache
from zipvl.validate.prompts import make_prompts
from zipvl.validate.tiny import tiny_engine


def test_attention_is_the_softmax_over_each_rows_valid_entries():
    rng = np.random.default_rng(0)
    layer = LayerCache(batch=2, kv_heads=2, capacity=9, head_dim=8)
    layer.key[:] = rng.standard_normal(layer.key.shape)
    layer.lengths[:] = [7, 3]
    query = rng.standard_normal((2, 4, 8)).astype(np.float32)
    probs = layer.attention(query, 8**-0.5).numpy()
    for r, n in enumerate([7, 3]):
        q = query[r].astype(np.float64).reshape(2, 2, 8)
        logits = np.einsum("hgd,htd->hgt", q, layer.key[r, :, :n].astype(np.float64)) * 8**-0.5
        w = np.exp(logits - logits.max(-1, keepdims=True))
        np.testing.assert_allclose(probs[r, :n], (w / w.sum(-1, keepdims=True)).sum((0, 1)), atol=1e-6)
        assert (probs[r, n:] == 0).all()
    assert probs.sum(-1) == pytest.approx([4.0, 4.0], abs=1e-5)  # every head's row sums to 1


@pytest.mark.parametrize("ops", ["standard", "plugin"])
def test_decode_step_writes_the_token_in_place(ops):
    """One step: the graph writes each row's token at slot length into the bound buffers (no copy), the lengths
    advance, every other slot is untouched, and the written K equals the token's K (recomputed by a fresh cache)."""
    engine = Engine(tiny_engine("llava", ops, 0.975), verify=False)
    prompts = make_prompts(engine, 2, seed=11)
    pre = [engine.prefill(p) for p in prompts]
    counts = [[p.counts[i] for p in pre] for i in range(engine.num_layers)]
    cache = KVCache(counts, engine.desc["num_kv_heads"], engine.desc["head_dim"], 4, engine.limits["kv_capacity"])
    for i, layer in enumerate(cache.layers):
        for r, p in enumerate(pre):
            layer.fill(r, p.keys[i], p.values[i], p.counts[i])
    before = [(layer.key.copy(), layer.lengths.copy()) for layer in cache.layers]
    buffers = [layer.key.__array_interface__["data"][0] for layer in cache.layers]
    io = engine.bind_cache(cache)
    tokens = np.array([p.logits.argmax() for p in pre])
    positions = np.array([p.length + p.rope_delta for p in pre])
    step = engine.decode_step(io, cache, tokens, positions)
    assert step.logits.shape == (2, engine.desc["vocab_size"])
    for i, layer in enumerate(cache.layers):
        key0, len0 = before[i]
        assert layer.key.__array_interface__["data"][0] == buffers[i]
        np.testing.assert_array_equal(layer.lengths, len0 + 1)
        changed = np.zeros(layer.key.shape, dtype=bool)
        for r in range(2):
            changed[r, :, len0[r]] = True
            assert np.abs(layer.key[r, :, len0[r]]).sum() > 0  # the token's K landed at slot length
        np.testing.assert_array_equal(layer.key[~changed], key0[~changed])
        assert step.queries[i].shape == (2, engine.desc["num_heads"], engine.desc["head_dim"])
        assert torch.isfinite(layer.attention(step.queries[i], engine.scaling)).all()
