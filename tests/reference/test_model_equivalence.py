# SPDX-License-Identifier: Apache-2.0
"""ZipVL inside real transformers models (tiny, from config), checked against independent references:

- tau = 1 is dense: logits and greedy tokens, prefill and 32 decode steps across re-selections, all architectures;
- tau < 1: the prefill equals dense attention with the non-kept keys masked and non-kept query rows zeroed, and each
  decode step equals dense decoding with exactly the evicted keys masked (original positions kept).
"""

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import zipvl
from zipvl import ZipVLConfig
from zipvl.testing import ARCHITECTURES, tiny_inputs, tiny_model

NEW_TOKENS = 32
INTERVAL = 12  # re-selection at decode steps 12 and 24 of 32


def _greedy(model, inputs):
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, 1), out.past_key_values


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.no_grad()
def test_tau_one_is_exactly_dense(arch):
    dense_model, zip_model = tiny_model(arch), tiny_model(arch)
    inputs = tiny_inputs(arch, text_len=150).kwargs
    ref_logits = dense_model(**inputs).logits
    ref_seq, ref_step_logits, _ = _greedy(dense_model, inputs)
    state = zipvl.enable(zip_model, ZipVLConfig(tau=1.0, decode_interval=INTERVAL))
    torch.testing.assert_close(zip_model(**inputs).logits, ref_logits, atol=1e-5, rtol=0)
    seq, step_logits, cache = _greedy(zip_model, inputs)
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(step_logits, ref_step_logits, atol=1e-5, rtol=0)
    assert isinstance(cache, zipvl.ZipVLCache)
    assert state.prefill_stats.mean_ratio == 1.0
    # Re-selection ran (twice) and, at tau = 1, evicted nothing.
    assert sum(1 for s in cache.stats if s.phase == "decode") == 2
    assert cache.physical_lengths() == [[seq.shape[1] - 1]] * len(cache.layers)  # the last token is never fed


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
@torch.no_grad()
def test_tau_one_padded_batch_matches_dense(arch):
    dense_model, zip_model = tiny_model(arch), tiny_model(arch)
    inputs = tiny_inputs(arch, text_len=140, batch=2, pad=[0, 3]).kwargs
    ref_seq, ref_logits, _ = _greedy(dense_model, inputs)
    zipvl.enable(zip_model, ZipVLConfig(tau=1.0, decode_interval=INTERVAL))
    seq, logits, _ = _greedy(zip_model, inputs)
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


# ---- an independent masked-dense reference: full n x n attention with explicit masks -------------------------

class MaskedReference:
    """Attention that sees only ``allowed[layer]`` key slots (B, L) and zeroes query rows outside ``rows[layer]``."""

    name = "zipvl_test_masked"

    def __init__(self):
        self.allowed: dict[int, torch.Tensor] = {}
        self.rows: dict[int, torch.Tensor] = {}
        AttentionInterface.register(self.name, self)
        AttentionMaskInterface.register(self.name, sdpa_mask)

    def __call__(self, module, query, key, value, attention_mask, scaling=None, **kw):
        b, h, q, d = query.shape
        length = key.shape[2]
        g = h // key.shape[1]
        k, v = key.repeat_interleave(g, 1).double(), value.repeat_interleave(g, 1).double()
        scores = query.double() @ k.transpose(-1, -2) * scaling
        q_slots = torch.arange(length - q, length)
        causal = torch.arange(length)[None, :] <= q_slots[:, None]
        allowed = self.allowed[module.layer_idx][:, :length]
        mask = causal[None, None] & allowed[:, None, None, :]
        out = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v
        if q > 1 and module.layer_idx in self.rows:
            out = out * self.rows[module.layer_idx][:, None, :, None]
        return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _set_attention(model, name):
    if hasattr(model.config, "vision_config"):
        model.set_attn_implementation({"text_config": name, "vision_config": "sdpa"})
    else:
        model.set_attn_implementation(name)


def _slot_sets(cache: zipvl.ZipVLCache, total: int) -> dict[int, torch.Tensor]:
    """Per layer, (B, total) bool of the logical slots still held by the ZipVL cache."""
    sets = {}
    for i, layer in enumerate(cache.layers):
        held = torch.zeros(layer.slots.shape[0], total, dtype=torch.bool)
        for b in range(held.shape[0]):
            s = layer.slots[b][layer.valid[b]]
            held[b, s[s < total]] = True
        sets[i] = held
    return sets


@pytest.mark.parametrize("arch", ["llama", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl"])
@torch.no_grad()
def test_sparse_prefill_and_evicted_decode_equal_masked_dense(arch):
    ref = MaskedReference()
    zip_model, masked_model = tiny_model(arch), tiny_model(arch)
    _set_attention(masked_model, ref.name)
    inputs = tiny_inputs(arch, text_len=200).kwargs
    n = inputs["input_ids"].shape[1]
    state = zipvl.enable(zip_model, ZipVLConfig(tau=0.9, decode_interval=INTERVAL))
    cache = zipvl.ZipVLCache()
    out = zip_model(**inputs, past_key_values=cache, use_cache=True)

    # Every layer's cache holds exactly its kept count, and the layers differ (adaptive ratio).
    kept_counts = [s.kept[0] for s in sorted(state.prefill_stats.layers, key=lambda s: s.layer)]
    assert [layer.physical_length for layer in cache.layers] == kept_counts
    assert all(c < n for c in kept_counts)

    kept = _slot_sets(cache, n)
    ref.allowed, ref.rows = dict(kept), dict(kept)
    ref_cache = DynamicCache()
    ref_out = masked_model(**inputs, past_key_values=ref_cache, use_cache=True)
    assert (out.logits - ref_out.logits).abs().max() < 1e-4
    assert (ref_out.logits - tiny_model(arch)(**inputs).logits).abs().max() > 1e-2  # the masking matters

    # Decode with teacher forcing on ZipVL's greedy tokens; the reference masks what ZipVL had evicted *before* each
    # step (eviction at a re-selection step happens after that step's attention).
    token = out.logits[:, -1:].argmax(-1)
    step_kwargs = {}
    if arch.startswith("qwen2"):
        step_kwargs["mm_token_type_ids"] = torch.zeros_like(token)
    evicted_during_decode = 0
    for step in range(NEW_TOKENS):
        total = n + step + 1
        before = _slot_sets(cache, total)
        for i in before:
            before[i][:, total - 1] = True  # the new token itself
        ref.allowed = before
        kw = dict(input_ids=token, past_key_values=cache, use_cache=True, **step_kwargs)
        z = zip_model(**kw).logits[:, -1]
        r = masked_model(input_ids=token, past_key_values=ref_cache, use_cache=True, **step_kwargs).logits[:, -1]
        assert (z - r).abs().max() < 1e-4, f"decode step {step}"
        evicted_during_decode += sum(int(before[i].sum()) - layer.physical_length for i, layer in enumerate(cache.layers))
        token = z.argmax(-1, keepdim=True)
    assert evicted_during_decode > 0  # re-selection really evicted inside the windows
    assert cache.get_seq_length() == n + NEW_TOKENS  # logical length: positions continue from the original


@torch.no_grad()
def test_padded_batch_equals_rows_alone():
    """Left padding: each row's kept sets and last logits equal those of the row run alone."""
    arch = "qwen2"
    model = tiny_model(arch)
    zipvl.enable(model, ZipVLConfig(tau=0.9))
    batch = tiny_inputs(arch, text_len=180, batch=2, pad=[0, 5]).kwargs
    cache = zipvl.ZipVLCache()
    logits = model(**batch, past_key_values=cache).logits[:, -1]
    for b, pad in enumerate([0, 5]):
        alone = {k: v[b : b + 1, pad:] for k, v in batch.items()}
        c1 = zipvl.ZipVLCache()
        l1 = model(**alone, past_key_values=c1).logits[:, -1]
        torch.testing.assert_close(logits[b : b + 1], l1, atol=1e-5, rtol=0)
        for layer_b, layer_1 in zip(cache.layers, c1.layers):
            slots_b = layer_b.slots[b][layer_b.valid[b]] - pad
            assert torch.equal(slots_b, layer_1.slots[0])


@torch.no_grad()
def test_stats_are_attached_and_consistent():
    model = tiny_model("llava")
    state = zipvl.enable(model, ZipVLConfig(tau=0.9, dense_layers=(0,)))
    inputs = tiny_inputs("llava", text_len=300).kwargs
    model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0)
    stats = state.prefill_stats
    n = inputs["input_ids"].shape[1]
    assert [s.layer for s in stats.layers] == [0, 1, 2]
    assert stats.layers[0].mode == "dense_layer" and stats.layers[0].kept == [n]
    assert all(s.mode == "sparse" and 0 < s.kept[0] < n for s in stats.layers[1:])
    entry = 2 * 2 * 16 * 4  # K and V, 2 KV heads, head dim 16, fp32
    assert stats.kv_bytes_before == 3 * n * entry
    assert stats.kv_bytes_after == entry * sum(s.kept[0] for s in stats.layers)
    assert 0 < stats.attn_flops_reduction < 1
    d = stats.to_dict()
    assert d["layer_ratios"] == pytest.approx([1.0] + [s.kept[0] / n for s in stats.layers[1:]])
    zipvl.disable(model)
    assert model.zipvl is None and model.config.get_text_config()._attn_implementation == "sdpa"


@torch.no_grad()
def test_nonempty_foreign_cache_is_rejected():
    model = tiny_model("llama")
    inputs = tiny_inputs("llama", text_len=20).kwargs
    cache = DynamicCache()
    model(**inputs, past_key_values=cache)
    zipvl.enable(model)
    with pytest.raises(zipvl.ZipVLInputError, match="ZipVLCache"):
        model(**inputs, past_key_values=cache)


def test_cache_overflow_is_a_clear_error():
    model = tiny_model("llama")
    zipvl.enable(model, ZipVLConfig(tau=1.0))
    inputs = tiny_inputs("llama", text_len=20).kwargs
    with pytest.raises(zipvl.ZipVLInputError, match="KV cache overflow"):
        model(**inputs, past_key_values=zipvl.ZipVLCache(max_length=10))


@torch.no_grad()
def test_fixed_ratio_policy_keeps_that_ratio_and_timer_sections():
    model = tiny_model("llama")
    state = zipvl.enable(model, policy=zipvl.FixedRatioPolicy(0.4))
    state.timer = zipvl.SectionTimer()
    inputs = tiny_inputs("llama", text_len=250).kwargs
    model(**inputs)
    n = inputs["input_ids"].shape[1]
    assert [s.kept[0] for s in state.prefill_stats.layers] == [-(-4 * n // 10)] * 3
    assert {"probe", "select", "sparse_attention", "evict"} <= set(state.timer.seconds)
    with pytest.raises(zipvl.ZipVLConfigError):
        zipvl.FixedRatioPolicy(1.5)


@torch.no_grad()
def test_beam_search_reorders_the_evicting_cache():
    """Beam search reorders/expands the cache every step: at tau = 1 it must equal dense beam search."""
    dense_model, zip_model = tiny_model("llama"), tiny_model("llama")
    inputs = tiny_inputs("llama", text_len=150).kwargs
    ref = dense_model.generate(**inputs, max_new_tokens=20, num_beams=3, do_sample=False, pad_token_id=0)
    zipvl.enable(zip_model, ZipVLConfig(tau=1.0, decode_interval=8))
    out = zip_model.generate(**inputs, max_new_tokens=20, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(out, ref)
