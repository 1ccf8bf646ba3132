# SPDX-License-Identifier: Apache-2.0
"""The baselines keep what they claim: checked against independent naive attention on random tensors, and inside a
tiny model (cache lengths, dense layers, dense prefill)."""

import math

import pytest
import torch

import zipvl
from zipvl import FixedRatioPolicy, LayerContext, ZipVLConfig
from zipvl.baselines import POLICIES, RATIO_BASELINES, FastVPolicy, RandomPolicy, SnapKVPolicy, make_policy
from zipvl.errors import ZipVLConfigError
from zipvl.testing import IMAGE_TOKEN, tiny_inputs, tiny_model

H, HKV, D = 4, 2, 16


def qk(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, H, n, D, generator=g), torch.randn(1, HKV, n, D, generator=g)


def naive_attention(q, k, rows):
    """softmax(q[rows] k^T / sqrt(d)) with the causal mask, K repeated per GQA group, summed over heads and rows."""
    kk = k.repeat_interleave(H // HKV, dim=1)
    n = q.shape[2]
    logits = q[:, :, rows] @ kk.transpose(-1, -2) / math.sqrt(D)
    mask = torch.arange(n)[None, :] > torch.as_tensor(rows)[:, None]
    return torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1).sum(dim=(1, 2))[0]


def run_layers(policy, n, num_layers, image_mask=None):
    extras = {} if image_mask is None else {"image_mask": image_mask[None]}
    out = []
    for layer in range(num_layers):
        q, k = qk(n, seed=layer)
        out.append(policy.select(q, k, None, LayerContext(layer, num_layers, extras)))
    return out


def test_fastv_dense_below_k_then_one_set_of_top_image_tokens():
    n, layers, k, ratio = 80, 6, 2, 0.7
    image = torch.zeros(n, dtype=torch.bool)
    image[10:60] = True
    policy = FastVPolicy(ratio, k=k)
    sels = run_layers(policy, n, layers, image)
    assert all(bool(s.kept.all()) for s in sels[:k])
    target = math.ceil(policy.later_ratio(layers) * n)
    # the decision uses the last query's attention at layer k - 1
    q, kk = qk(n, seed=k - 1)
    attn = naive_attention(q, kk, [n - 1])
    ranked = attn.masked_fill(~image, float("-inf"))
    want = ~image
    want[ranked.topk(target - int((~image).sum())).indices] = True
    for s in sels[k:]:
        assert torch.equal(s.kept[0], want)  # the same set at every later layer, whatever their own q/k
        assert int(s.count) == target
    mean = sum(float(s.ratio) for s in sels) / layers
    assert abs(mean - ratio) < 1.5 / n  # matched average ratio (up to ceil)


def test_fastv_text_only_prunes_all_tokens_and_keeps_nontext_when_budget_is_short():
    n, layers = 50, 4
    sels = run_layers(FastVPolicy(0.5, k=1), n, layers)
    assert bool(sels[0].kept.all())
    assert all(int(s.count) == math.ceil(FastVPolicy(0.5, k=1).later_ratio(layers) * n) for s in sels[1:])
    # image tokens only 10 of 50: the text (40) is always kept, so the realised ratio exceeds a low target
    image = torch.zeros(n, dtype=torch.bool)
    image[5:15] = True
    sels = run_layers(FastVPolicy(0.2, k=1), n, layers, image)
    assert all(bool(s.kept[0][~image].all()) and int(s.count) == 40 for s in sels[1:])


def test_snapkv_keeps_window_plus_top_pooled_window_attention():
    n, ratio, window = 120, 0.5, 16
    policy = SnapKVPolicy(ratio, window=window, kernel_size=5)
    assert policy.sparse_prefill is False
    q, k = qk(n)
    sel = policy.select(q, k, None, LayerContext(3, 8))
    count = math.ceil(ratio * n)
    assert int(sel.count) == count and bool(sel.kept[0, n - window:].all())
    mass = naive_attention(q, k, list(range(n - window, n)))
    torch.testing.assert_close(sel.mass[0], mass, atol=1e-5, rtol=1e-5)
    pooled = torch.nn.functional.avg_pool1d(mass[None, None], 5, 1, 2, count_include_pad=False)[0, 0]
    prefix = pooled[: n - window]
    kept_prefix = sel.kept[0, : n - window]
    assert int(kept_prefix.sum()) == count - window
    assert float(prefix[kept_prefix].min()) >= float(prefix[~kept_prefix].max())
    # a budget smaller than the window keeps the most recent tokens
    small = SnapKVPolicy(0.05, window=window).select(q, k, None, LayerContext(0, 8))
    assert small.kept[0].nonzero().squeeze(-1).tolist() == list(range(n - math.ceil(0.05 * n), n))


def test_random_count_last_token_and_seed():
    n = 64
    a = run_layers(RandomPolicy(0.3, seed=1), n, 3)
    b = run_layers(RandomPolicy(0.3, seed=1), n, 3)
    c = run_layers(RandomPolicy(0.3, seed=2), n, 3)
    for s in a:
        assert int(s.count) == math.ceil(0.3 * n) and bool(s.kept[0, -1])
    assert all(torch.equal(x.kept, y.kept) for x, y in zip(a, b))
    assert not all(torch.equal(x.kept, y.kept) for x, y in zip(a, c))
    assert not torch.equal(a[0].kept, a[1].kept)  # layers differ


def test_registry():
    assert set(RATIO_BASELINES) <= set(POLICIES)
    assert make_policy("dense") is None
    assert isinstance(make_policy("zipvl", config=ZipVLConfig(tau=0.9)), zipvl.ZipVLPolicy)
    assert isinstance(make_policy("fixed", 0.5), FixedRatioPolicy)  # reused, not copied
    for name in RATIO_BASELINES:
        assert make_policy(name, 0.5).ratio == 0.5
        with pytest.raises(ZipVLConfigError):
            make_policy(name)
    with pytest.raises(ZipVLConfigError):
        make_policy("h3o", 0.5)
    with pytest.raises(ZipVLConfigError):
        FastVPolicy(1.5)


@torch.no_grad()
def test_fastv_in_tiny_llava_prunes_only_image_tokens():
    model = tiny_model("llava", num_layers=4)
    inputs = tiny_inputs("llava", text_len=40).kwargs
    image = inputs["input_ids"] == IMAGE_TOKEN
    state = zipvl.enable(model, policy=FastVPolicy(0.8, k=2))
    state.extras["image_mask"] = image
    cache = zipvl.ZipVLCache()
    model(**inputs, past_key_values=cache, use_cache=True)
    zipvl.disable(model)
    n = image.shape[1]
    lengths = [layer.lengths()[0] for layer in cache.layers]
    assert lengths[:2] == [n, n]
    assert lengths[2] == lengths[3] < n
    for layer in cache.layers[2:]:
        slots = layer.slots[0][layer.valid[0]]
        assert bool(torch.isin((~image[0]).nonzero().squeeze(-1), slots).all())  # every text token kept


@torch.no_grad()
def test_snapkv_prefill_is_dense_and_cache_is_budgeted():
    model = tiny_model("llama", num_layers=3)
    inputs = tiny_inputs("llama", text_len=100).kwargs
    ref = model(**inputs).logits
    zipvl.enable(model, policy=SnapKVPolicy(0.4, window=8))
    cache = zipvl.ZipVLCache()
    out = model(**inputs, past_key_values=cache, use_cache=True).logits
    zipvl.disable(model)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert [layer.lengths()[0] for layer in cache.layers] == [40] * 3
