# SPDX-License-Identifier: Apache-2.0
"""Selection variants (ZipVLConfig fields) and presets, each against an independent expectation:

- presets: "paper" is ZipVLConfig() exactly; unknown names and bad fields raise one clear error naming them;
- probe sets, pooling and max-over-heads equal brute-force NumPy/plain-Python computations of the tau rule;
- protected tokens (sinks, recent, text) and per-layer floors hold in every layer's cache slots of a tiny VLM;
- dense prefill + eviction gives dense prefill logits; tau_evict keeps a superset of the attention's set;
- tau = 1 is exactly dense for every variant and preset.
"""

import numpy as np
import pytest
import torch

import zipvl
from zipvl import ZipVLConfig, ZipVLConfigError, ZipVLInputError
from zipvl.reference.hf_compat import cache_kwargs, output_cache
from zipvl.reference.policy import LayerContext, ZipVLPolicy
from zipvl.reference.selection import score_tokens, select_tokens
from zipvl.reference.variants import span_probes
from zipvl.testing import IMAGE_TOKEN, tiny_inputs, tiny_model

# ---- config and presets ------------------------------------------------------------------------------------------


def test_paper_preset_is_the_default_config_and_recommended_is_a_preset():
    assert ZipVLConfig.preset("paper") == ZipVLConfig()
    assert ZipVLConfig().variants() == {}
    presets = ZipVLConfig.presets()
    assert ZipVLConfig.RECOMMENDED in presets and "paper" in presets
    assert all(isinstance(d, str) and d and "\n" not in d for d in presets.values())
    for name in presets:  # every preset builds and round-trips
        cfg = ZipVLConfig.preset(name)
        assert ZipVLConfig.from_dict(cfg.to_dict()) == cfg
    assert ZipVLConfig.preset("accurate", tau=0.9).tau == 0.9


def test_unknown_preset_and_override_raise_one_clear_error():
    with pytest.raises(ZipVLConfigError) as err:
        ZipVLConfig.preset("fastest")
    assert "'fastest'" in str(err.value) and all(name in str(err.value) for name in ZipVLConfig.presets())
    with pytest.raises(ZipVLConfigError, match="unknown ZipVLConfig fields"):
        ZipVLConfig.preset("paper", window=3)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"probe_set": "middle"}, "probe_set must be one of"),
        ({"probe_set": "recent", "n_recent": 0}, "n_recent must be >= 1"),
        ({"question_tokens": -1}, "question_tokens must be >= 0"),
        ({"pool": "median"}, "pool must be one of"),
        ({"pool_kernel": 4}, "pool_kernel must be odd"),
        ({"pool_kernel": 0}, "pool_kernel must be odd"),
        ({"protect_first": -2}, "protect_first must be >= 0"),
        ({"protect_last": 1.5}, "protect_last must be an integer"),
        ({"protect_text": 1}, "protect_text must be True or False"),
        ({"head_reduce": "mean"}, "head_reduce must be one of"),
        ({"head_reduce": "kv"}, "head_reduce='kv'"),  # per-KV-head sets decide the eviction only
        ({"head_reduce": "kv", "sparse_prefill": False, "tau_evict": 0.99}, "head_reduce='kv'"),
        ({"sparse_prefill": "no"}, "sparse_prefill must be True or False"),
        ({"tau": 0.9, "tau_evict": 0.8}, "tau_evict must be None or in [tau, 1]"),
        ({"tau_evict": 1.2}, "tau_evict must be None or in [tau, 1]"),
        ({"min_ratio": 1.5}, "min_ratio must be a ratio in [0, 1]"),
        ({"min_ratio": ()}, "min_ratio must be a ratio in [0, 1]"),
        ({"min_ratio": (0.1, -0.1)}, "min_ratio must be a ratio in [0, 1]"),
    ],
)
def test_bad_variant_field_raises_one_clear_error(kwargs, needle):
    with pytest.raises(ZipVLConfigError) as err:
        ZipVLConfig(**kwargs)
    assert needle in str(err.value)


def test_export_rejects_variants_by_name(tmp_path):
    from zipvl.export.build import build_engine

    with pytest.raises(ZipVLInputError, match="protect_text"):  # a text model has no visual token to sparsify
        build_engine(tiny_model("llama", num_layers=1), tmp_path, config=ZipVLConfig(protect_text=True),
                     progress=False)
    with pytest.raises(ZipVLInputError, match="pool='max'"):  # the standard lowering pools with MaxPool only
        build_engine(tiny_model("llama", num_layers=1), tmp_path, config=ZipVLConfig(pool="avg"), progress=False)


# ---- brute-force references (NumPy / plain Python) ---------------------------------------------------------------


def _qk(n=150, seed=0, h=4, h_kv=2, d=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, h, n, d, generator=g), torch.randn(1, h_kv, n, d, generator=g)


def _ctx(image_mask=None, layer=0, num_layers=1):
    return LayerContext(layer_idx=layer, num_layers=num_layers,
                        extras={} if image_mask is None else {"image_mask": image_mask})


def _tau_rule(rule_mass, score, tau, total):
    """Smallest p whose descending mass reaches tau * total (fp64), then the top-p scores, ties to lower position."""
    cumulative = np.cumsum(np.sort(rule_mass.astype(np.float64))[::-1])
    p = min(len(score), int((cumulative < tau * total).sum()) + 1)
    return set(sorted(range(len(score)), key=lambda j: (-score[j], j))[:p])


def _pool(x, k, op):
    r = k // 2
    return np.array([op(x[max(0, j - r): j + r + 1]) for j in range(len(x))], dtype=np.float32)


@pytest.mark.parametrize("op", ["max", "avg"])
def test_pooling_equals_brute_force(op):
    q, k = _qk()
    probes = torch.tensor(sorted(set(range(100, 150)) | {3, 40, 77}))
    mass, score = score_tokens(q, k, probes)  # the paper's op, tested elsewhere; pooling + tau rule checked here
    fn = np.max if op == "max" else np.mean
    pm, ps = _pool(mass[0].numpy(), 5, fn), _pool(score[0].numpy(), 5, fn)
    expected = _tau_rule(pm, ps, 0.7, pm.astype(np.float64).sum())
    policy = ZipVLPolicy(ZipVLConfig(tau=0.7, pool=op, pool_kernel=5))
    policy.probes = lambda n, device: probes
    sel = policy.select(q, k, None, _ctx())
    assert set(sel.kept[0].nonzero().flatten().tolist()) == expected


def test_max_pooling_keeps_the_neighbours_of_a_peak():
    n, peak, d = 64, 30, 16
    q = torch.ones(1, 4, n, d)
    k = 0.01 * torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(0))
    k[:, :, peak] = 3.0  # every query that sees it puts almost all its attention on the peak
    plain = ZipVLPolicy(ZipVLConfig(tau=0.95)).select(q, k, None, _ctx()).kept[0]
    pooled = ZipVLPolicy(ZipVLConfig(tau=0.95, pool="max", pool_kernel=5)).select(q, k, None, _ctx()).kept[0]
    span = list(range(peak - 2, peak + 3))
    assert pooled[span].all()
    assert not plain[span].all()  # without pooling the span does not survive whole


def test_max_over_heads_equals_brute_force():
    q, k = _qk(n=140, seed=3)
    h, g, d = q.shape[1], q.shape[1] // k.shape[1], q.shape[3]
    probes = torch.tensor(sorted(set(range(110, 140)) | {5, 50, 90}))
    qn, kn = q[0].double().numpy(), k[0].double().numpy()
    per_head = np.zeros((h, q.shape[2]))
    for head in range(h):
        for r in probes.tolist():
            logits = kn[head // g, : r + 1] @ qn[head, r] / np.sqrt(d)
            w = np.exp(logits - logits.max())
            per_head[head, : r + 1] += w / w.sum()
    mass = per_head.max(axis=0)
    seen_by = np.array([(probes.numpy() >= j).sum() for j in range(q.shape[2])])
    expected = _tau_rule(mass, mass / seen_by, 0.8, mass.sum())
    policy = ZipVLPolicy(ZipVLConfig(tau=0.8, head_reduce="max"))
    policy.probes = lambda n, device: probes
    sel = policy.select(q, k, None, _ctx())
    np.testing.assert_allclose(sel.mass[0].numpy(), mass, rtol=1e-5, atol=1e-6)
    assert set(sel.kept[0].nonzero().flatten().tolist()) == expected
    sum_sel = ZipVLPolicy(ZipVLConfig(tau=0.8)).select(q, k, None, _ctx())
    assert not torch.equal(sum_sel.kept, sel.kept)  # a different reduction, a different set


def test_per_kv_head_sets_equal_the_tau_rule_on_each_kv_head():
    q, k = _qk(n=140, seed=4)
    h, h_kv, d = q.shape[1], k.shape[1], q.shape[3]
    g = h // h_kv
    probes = torch.tensor(sorted(set(range(110, 140)) | {5, 50, 90}))
    qn, kn = q[0].double().numpy(), k[0].double().numpy()
    seen_by = np.array([(probes.numpy() >= j).sum() for j in range(q.shape[2])])
    policy = ZipVLPolicy(ZipVLConfig(tau=0.8, head_reduce="kv", sparse_prefill=False))
    policy.probes = lambda n, device: probes
    sel = policy.select(q, k, None, _ctx())
    assert sel.kept.shape == (1, h_kv, q.shape[2]) and sel.count.shape == (1, h_kv)
    for kv in range(h_kv):  # each KV head: the paper's rule over its own query group's probe rows
        mass = np.zeros(q.shape[2])
        for head in range(kv * g, (kv + 1) * g):
            for r in probes.tolist():
                logits = kn[kv, : r + 1] @ qn[head, r] / np.sqrt(d)
                w = np.exp(logits - logits.max())
                mass[: r + 1] += w / w.sum()
        np.testing.assert_allclose(sel.mass[0, kv].numpy(), mass, rtol=1e-5, atol=1e-6)
        expected = _tau_rule(mass, mass / (g * seen_by), 0.8, g * len(probes))
        assert set(sel.kept[0, kv].nonzero().flatten().tolist()) == expected
        assert int(sel.count[0, kv]) == len(expected)
    assert not torch.equal(sel.kept[0, 0], sel.kept[0, 1])  # the heads chose different sets


def test_per_kv_head_cache_masks_each_head_in_decode():
    from types import SimpleNamespace

    from zipvl.reference.attention import _decode
    from zipvl.reference.cache import ZipVLLayer

    gen = torch.Generator().manual_seed(5)
    h, h_kv, n, d = 4, 2, 12, 8
    key, value = torch.randn(1, h_kv, n, d, generator=gen), torch.randn(1, h_kv, n, d, generator=gen)
    keep = torch.rand(1, h_kv, n, generator=gen) < 0.5
    keep[:, :, -1] = True
    keep[:, 0, 3] = keep[:, 1, 3] = False  # evicted by both heads: gone from the layer
    layer = ZipVLLayer()
    layer.update(key, value)
    layer.keep(keep)
    layer.prefilled = True
    assert layer.physical_length == int(keep[0].any(0).sum())
    assert layer.held_bytes() == 2 * d * 4 * int(keep.sum()) < layer.nbytes()
    new_k, new_v, query = (torch.randn(1, x, 1, d, generator=gen) for x in (h_kv, h_kv, h))
    layer.update(new_k, new_v)
    state = SimpleNamespace(policy=SimpleNamespace(config=ZipVLConfig(decode_interval=0), decode_reselect=False))
    out = _decode(SimpleNamespace(layer_idx=0), state, layer, query, layer.keys, layer.values, d**-0.5)
    for head in range(h):  # brute force: each query head attends to its KV head's kept tokens and the new one
        kv = head // (h // h_kv)
        idx = keep[0, kv].nonzero().flatten()
        ks, vs = torch.cat([key[0, kv, idx], new_k[0, kv]]), torch.cat([value[0, kv, idx], new_v[0, kv]])
        w = torch.softmax(ks @ query[0, head, 0] * d**-0.5, dim=0)
        torch.testing.assert_close(out[0, head, 0], w @ vs, atol=1e-5, rtol=0)


def test_per_kv_head_eviction_in_a_tiny_vlm():
    model, inputs, n, cache, state = _evict_only_run(ZipVLConfig(tau=0.5, sparse_prefill=False, head_reduce="kv"))
    _, shared, _ = _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.5, sparse_prefill=False))
    assert any(not torch.equal(layer.heads[0, 0], layer.heads[0, 1]) for layer in cache.layers)
    assert cache.held_bytes() < cache.nbytes() and cache.held_bytes() != shared.held_bytes()
    kv_entry = 2 * model.config.text_config.num_key_value_heads * 16 * 4  # head_dim 16, fp32
    assert sum(s.kv_bytes_after for s in state.prefill_stats.layers) == pytest.approx(cache.held_bytes())
    everything = torch.ones(n, dtype=torch.bool)
    for layer, held in zip(cache.layers, cache.retained_fraction(everything)):
        assert held == pytest.approx(float(layer.heads[0].sum()) / (layer.heads.shape[1] * n))
    assert kv_entry * n * len(cache.layers) > cache.held_bytes()
    # decode with re-selection every 3 tokens on the per-head cache: the window is evicted from every head
    zipvl.enable(model, ZipVLConfig(tau=0.5, sparse_prefill=False, head_reduce="kv", decode_interval=3))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=7, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True)
    zipvl.disable(model)
    assert out.sequences.shape[1] == n + 7
    final = output_cache(out)
    reselected = [s for f in final.stats for s in f.layers if s.phase == "decode"]
    assert reselected and any(s.kept[0] < s.length[0] for s in reselected)
    for layer in final.layers:  # generated tokens are held by every KV head; heads still differ on the prompt
        assert layer.heads.shape[-1] == layer.physical_length
        assert bool(layer.heads[0][:, layer.slots[0] >= n].all())


def test_probe_sets():
    n = 200
    assert span_probes(n, ZipVLConfig(probe_set="recent", n_recent=10), None).tolist() == list(range(190, 200))
    image = torch.zeros(2, n, dtype=torch.bool)
    image[0, 20:60], image[1, 20:170] = True, True
    q_cfg = ZipVLConfig(probe_set="question")
    assert span_probes(n, q_cfg, image[:1]).tolist() == list(range(72, 200))  # span of 140 capped at 128 probes
    assert span_probes(n, q_cfg, image).tolist() == list(range(170, 200))  # the shortest span of the batch
    assert span_probes(n, q_cfg, torch.zeros(1, n, dtype=torch.bool)).tolist() == list(range(72, 200))
    assert span_probes(n, ZipVLConfig(probe_set="question", question_tokens=7), None).tolist() == list(range(193, 200))
    with pytest.raises(ZipVLInputError, match="image_mask"):
        span_probes(n, q_cfg, None)
    # The policy runs the paper's op on those probes.
    q, k = _qk(n=n)
    sel = ZipVLPolicy(q_cfg).select(q, k, None, _ctx(image[1:]))
    ref = select_tokens(q, k, torch.arange(170, 200), q_cfg.tau)
    assert torch.equal(sel.kept, ref.kept) and torch.equal(sel.count, ref.count)


def test_protected_count_rule_is_tau_over_the_unprotected_mass():
    q, k = _qk(n=120, seed=5)
    cfg = ZipVLConfig(tau=0.6, protect_first=4, protect_last=10)
    sel = ZipVLPolicy(cfg).select(q, k, None, _ctx())
    protected = set(range(4)) | set(range(110, 120))
    mass, score = sel.mass[0].double().numpy(), sel.score[0].numpy()
    rest = [j for j in range(120) if j not in protected]
    picked = _tau_rule(mass[rest], score[rest], 0.6, mass[rest].sum())
    expected = protected | {rest[i] for i in picked}
    assert set(sel.kept[0].nonzero().flatten().tolist()) == expected
    assert int(sel.count) == len(expected)


# ---- inside a tiny VLM: read every layer's cache slots -----------------------------------------------------------


def _run(model, inputs, config=None, policy=None, image=True):
    state = zipvl.enable(model, config, policy=policy)
    if image:
        state.extras["image_mask"] = inputs["input_ids"] == IMAGE_TOKEN
    cache = zipvl.ZipVLCache()
    with torch.no_grad():
        logits = model(**inputs, **cache_kwargs(model, cache), use_cache=True).logits
    zipvl.disable(model)
    return logits, cache, state


def _evict_only_run(config):
    """A tiny LLaVA prefilled under an eviction-only ``config``: its logits must be dense's (the kept set only
    evicts). -> (model, inputs, n, cache, state)."""
    model = tiny_model("llava")
    inputs = tiny_inputs("llava", text_len=150).kwargs
    with torch.no_grad():
        dense = model(**inputs).logits
    logits, cache, state = _run(model, inputs, config)
    torch.testing.assert_close(logits, dense, atol=1e-5, rtol=0)
    return model, inputs, inputs["input_ids"].shape[1], cache, state


def _slots(cache, row=0):
    return [set(layer.slots[row][layer.valid[row]].tolist()) for layer in cache.layers]


def test_protected_sinks_and_recent_are_in_every_layer():
    inputs = tiny_inputs("llava", text_len=150).kwargs
    n = inputs["input_ids"].shape[1]
    _, cache, _ = _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.5, protect_first=3, protect_last=5))
    must = set(range(3)) | set(range(n - 5, n))
    assert all(must <= s and len(s) < n for s in _slots(cache))


def test_protect_text_keeps_every_text_token_and_sparsifies_images():
    inputs = tiny_inputs("llava", text_len=150, batch=2, pad=[0, 3]).kwargs
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    _, cache, _ = _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.3, protect_text=True))
    for row in range(2):
        text = set(((ids[row] != IMAGE_TOKEN) & (attn[row] == 1)).nonzero().flatten().tolist())
        image = set((ids[row] == IMAGE_TOKEN).nonzero().flatten().tolist())
        slots = _slots(cache, row)
        assert all(text <= s for s in slots)
        assert any(not image <= s for s in slots)  # visual tokens were evicted somewhere
    with pytest.raises(ZipVLInputError, match="image_mask"):
        _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.3, protect_text=True), image=False)


def test_per_layer_floors_hold_in_every_layer():
    inputs = tiny_inputs("llava", text_len=150).kwargs
    n = inputs["input_ids"].shape[1]
    floors = (0.9, 0.0, 0.6)
    _, free, _ = _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.3))
    _, floored, _ = _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.3, min_ratio=floors))
    free_len, floor_len = [len(s) for s in _slots(free)], [len(s) for s in _slots(floored)]
    assert all(length >= np.ceil(f * n) for length, f in zip(floor_len, floors))
    assert free_len[0] < np.ceil(0.9 * n)  # the floor is binding
    assert floor_len[0] == int(np.ceil(0.9 * n))
    with pytest.raises(ZipVLConfigError, match="3 layers"):
        _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.3, min_ratio=(0.5, 0.5)))


def test_dense_prefill_with_zipvl_eviction():
    _, inputs, n, cache, state = _evict_only_run(ZipVLConfig(tau=0.5, sparse_prefill=False))
    assert {s.mode for s in state.prefill_stats.layers} == {"evict_only"}
    slots = _slots(cache)
    assert all(len(s) < n for s in slots)
    _, sparse_cache, _ = _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.5))
    assert slots[0] == _slots(sparse_cache)[0]  # same layer-0 input, same ZipVL decision


class _Spy(ZipVLPolicy):
    def __init__(self, config):
        super().__init__(config)
        self.seen = []

    def select(self, *args):
        sel = super().select(*args)
        self.seen.append(sel)
        return sel


def test_tau_evict_keeps_a_superset_in_the_cache_and_leaves_attention_alone():
    inputs = tiny_inputs("llava", text_len=150).kwargs
    spy = _Spy(ZipVLConfig(tau=0.5, tau_evict=0.9))
    logits, cache, state = _run(tiny_model("llava"), inputs, policy=spy)
    ref_logits, ref_cache, _ = _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.5))
    torch.testing.assert_close(logits, ref_logits, atol=0, rtol=0)  # the attention used the tau = 0.5 sets
    slots, attended = _slots(cache), [set(s.kept[0].nonzero().flatten().tolist()) for s in spy.seen]
    assert attended == _slots(ref_cache)
    assert all(a < s for a, s in zip(attended, slots))
    _, strict_cache, _ = _run(tiny_model("llava"), inputs, ZipVLConfig(tau=0.9))
    assert slots[0] == _slots(strict_cache)[0]
    layer_stats = sorted(state.prefill_stats.layers, key=lambda s: s.layer)
    assert [s.kept[0] for s in layer_stats] == [len(a) for a in attended]
    assert [s.cache_length[0] for s in layer_stats] == [len(s) for s in slots]


# ---- tau = 1 is exactly dense for every variant and preset -------------------------------------------------------

VARIANTS = {
    "recent": {"probe_set": "recent"},
    "question": {"probe_set": "question"},
    "question_k": {"probe_set": "question", "question_tokens": 8},
    "pool_max": {"pool": "max"},
    "pool_avg": {"pool": "avg", "pool_kernel": 3},
    "protect": {"protect_first": 4, "protect_last": 8},
    "protect_text": {"protect_text": True},
    "heads_max": {"head_reduce": "max"},
    "heads_kv": {"head_reduce": "kv", "sparse_prefill": False},
    "dense_prefill": {"sparse_prefill": False},
    "tau_evict": {"tau_evict": 1.0},
    "floors": {"min_ratio": (0.5, 0.2, 0.9)},
    **{f"preset_{name}": {"preset": name} for name in ZipVLConfig.presets()},
}


@pytest.fixture(scope="module")
def dense_reference():
    model = tiny_model("llava")
    inputs = tiny_inputs("llava", text_len=150).kwargs
    with torch.no_grad():
        logits = model(**inputs).logits
        seq = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0)
    return inputs, logits, seq


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tau_one_is_exactly_dense(variant, dense_reference):
    inputs, ref_logits, ref_seq = dense_reference
    fields = dict(VARIANTS[variant])
    name = fields.pop("preset", None)
    overrides = {"tau": 1.0, "decode_interval": 4}
    if name is not None:
        if "tau_evict" in ZipVLConfig.preset(name).variants():
            overrides["tau_evict"] = 1.0
        config = ZipVLConfig.preset(name, **overrides)
    else:
        config = ZipVLConfig(**{**overrides, **fields})
    model = tiny_model("llava")
    logits, cache, _ = _run(model, inputs, config)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    n = inputs["input_ids"].shape[1]
    assert cache.physical_lengths() == [[n]] * len(cache.layers)
    state = zipvl.enable(model, config)
    state.extras["image_mask"] = inputs["input_ids"] == IMAGE_TOKEN
    with torch.no_grad():
        seq = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(seq, ref_seq)


def test_decode_reselection_uses_tau_evict_and_is_off_with_protect_text():
    inputs = tiny_inputs("llava", text_len=150).kwargs

    def decode_stats(config):
        model = tiny_model("llava")
        state = zipvl.enable(model, config)
        state.extras["image_mask"] = inputs["input_ids"] == IMAGE_TOKEN
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0,
                                 return_dict_in_generate=True)
        return [s for f in output_cache(out).stats for s in f.layers if s.phase == "decode"]

    evicting = decode_stats(ZipVLConfig(tau=0.5, decode_interval=4))
    assert evicting and any(s.kept[0] < s.length[0] for s in evicting)
    kept_all = decode_stats(ZipVLConfig(tau=0.5, tau_evict=1.0, decode_interval=4))
    assert kept_all and all(s.kept == s.length for s in kept_all)
    assert decode_stats(ZipVLConfig(tau=0.5, protect_text=True, decode_interval=4)) == []
