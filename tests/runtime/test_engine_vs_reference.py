# SPDX-License-Identifier: Apache-2.0
"""Engine (ONNX Runtime) vs PyTorch reference on tiny LLaVA / LLaVA-NeXT / Qwen2-VL models from config:
both lowerings, tau = 1 and 0.975, a batch of 2 prompts of different lengths, 34 greedy tokens crossing two
decode-time re-selections (interval 16)."""

from __future__ import annotations

import numpy as np
import pytest

import zipvl

from zipvl.runtime import Engine
from zipvl.validate.compare import Tolerance, compare_batch
from zipvl.validate.prompts import make_prompts
from zipvl.validate.tiny import tiny_engine, tiny_model_dir

ARCHS = ("llava", "llava_next", "qwen2_vl")
TOL = Tolerance(atol=1e-4, rtol=1e-4)  # fp32 on both sides: observed errors are ~1e-6
NEW_TOKENS = 34


@pytest.fixture(scope="module")
def models():
    from zipvl.export.build import load_model

    return {arch: load_model(tiny_model_dir(arch))[0] for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ops", ["standard", "plugin"])
@pytest.mark.parametrize("tau", [1.0, 0.975])
def test_engine_matches_reference(models, arch, ops, tau):
    engine = Engine(tiny_engine(arch, ops, tau))
    prompts = make_prompts(engine, 2, seed=3)
    assert len(prompts[0].input_ids) != len(prompts[1].input_ids)
    report = compare_batch(engine, models[arch], prompts, NEW_TOKENS, TOL)
    assert report["kept_sets_identical"], report["layers"]
    assert report["cache_lengths_prefill"]["equal"], report["cache_lengths_prefill"]
    assert report["cache_lengths_final"]["equal"], report["cache_lengths_final"]
    assert report["retained_identical"]  # the decode re-selections kept the same tokens, by original position
    assert report["logits"]["passed"], report["logits"]
    assert report["tokens"]["identical"] and report["tokens"]["generated"] == NEW_TOKENS, report["tokens"]
    assert report["reselections"] == 2
    if tau == 1.0:
        assert all(layer["engine_kept"] == report["lengths"] for layer in report["layers"])


def test_cache_lengths_after_prefill_are_kept_counts():
    """Per layer and sequence, the runtime's cache holds exactly the prefill's kept tokens (evicted, compacted)."""
    engine = Engine(tiny_engine("llava", "standard", 0.975))
    prompts = make_prompts(engine, 2, seed=5)
    out = engine.generate(prompts, max_new_tokens=2)
    for i in range(engine.num_layers):
        assert out.cache_lengths_prefill[i] == [p.counts[i] for p in out.prefills]
        assert out.cache_lengths_prefill[i] == out.prefill_stats.layers[i].kept
    assert out.cache_lengths == [[c + 1 for c in layer] for layer in out.cache_lengths_prefill]
    assert out.prefill_stats.kv_bytes_after <= out.prefill_stats.kv_bytes_before


def test_reselection_evicts_inside_the_window():
    """A strict tau on a long generation: the window re-selection really evicts, and matches the reference."""
    engine = Engine(tiny_engine("llava", "standard", 0.975))
    engine.config = engine.config.__class__.from_dict({**engine.config.to_dict(), "tau": 0.6})
    prompts = make_prompts(engine, 2, seed=7)
    out = engine.generate(prompts, max_new_tokens=NEW_TOKENS)
    kept = [s.kept for stats in out.decode_stats for s in stats.layers]
    assert kept and any(k < 16 for row in kept for k in row)
    generated = np.arange(NEW_TOKENS - 1)
    for i, layer in enumerate(out.retained):  # by original position: prompt part = the prefill's kept set
        for r, held in enumerate(layer):
            pre = out.prefills[r]
            assert (np.diff(held) > 0).all()
            assert np.array_equal(held[held < pre.length], pre.indices[i])
            assert set(held[held >= pre.length] - pre.length) <= set(generated)
    assert any(len(held) < out.prefills[r].counts[i] + NEW_TOKENS - 1
               for i, layer in enumerate(out.retained) for r, held in enumerate(layer))
    final = np.array(out.cache_lengths)
    assert (final < np.array(out.cache_lengths_prefill) + NEW_TOKENS - 1).any()


def _assert_matches(report):
    assert report["kept_sets_identical"], report["layers"]
    assert report["cache_lengths_prefill"]["equal"] and report["cache_lengths_final"]["equal"], (
        report["cache_lengths_prefill"], report["cache_lengths_final"])
    assert report["retained_identical"]
    assert report["logits"]["passed"] and report["tokens"]["identical"], (report["logits"], report["tokens"])


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_evict_question_engine_matches_reference(models, arch):
    """The "evict_question" preset as an engine (question-span probes from the runtime, max pooling and protected
    first / last tokens in the graph): same kept sets, caches, logits and tokens as the reference."""
    engine = Engine(tiny_engine(arch, "standard", 0.975, preset="evict_question"))
    assert engine.config.probe_set == "question" and engine.config.protect_last == 32
    prompts = make_prompts(engine, 2, seed=3)
    assert all(prompt.pixel_values is not None for prompt in prompts)  # the question span starts after the image
    _assert_matches(compare_batch(engine, models[arch], prompts, NEW_TOKENS, TOL))
    probes = engine.probes(prompts[0]).numpy()
    image = np.flatnonzero(prompts[0].input_ids == engine.desc["image_token_id"])
    assert probes[0] == image[-1] + 1 or len(probes) == engine.config.n_probes  # the text after the last image token


@pytest.mark.parametrize("preset,tau", [("max_heads", 0.975), ("floored", 0.3), ("evict_question_heads", 0.975)])
def test_head_max_and_floor_engines_match_reference(models, preset, tau):
    """Max over heads and the per-layer kept-ratio floor in the graph (presets "max_heads", "floored" - at a strict
    tau so the floor binds - and their mix with evict_question): same kept sets, caches, logits and tokens."""
    engine = Engine(tiny_engine("llava", "standard", tau, preset=preset))
    prompts = make_prompts(engine, 2, seed=5)
    report = compare_batch(engine, models["llava"], prompts, NEW_TOKENS, TOL)
    _assert_matches(report)
    if preset == "floored":
        floor = engine.config.min_ratio
        assert all(c >= np.ceil(floor * len(p.input_ids) - 1e-9) for layer in report["layers"]
                   for p, c in zip(prompts, layer["engine_kept"]))


def test_safe_evict_engine_keeps_a_larger_cache_than_its_attention(models):
    """tau_evict (preset "safe_evict") in the graph: the sparse attention runs on the tau set, the cache keeps the
    larger tau_evict set and decode re-selects at tau_evict - caches, retained tokens, logits and tokens as the
    reference's; the engine's statistics bill the attention by its own, smaller count."""
    engine = Engine(tiny_engine("llava", "standard", 0.9, preset="safe_evict"))
    assert engine.config.tau == 0.9 and engine.config.evict_tau == 0.99
    prompts = make_prompts(engine, 2, seed=3)
    report = compare_batch(engine, models["llava"], prompts, NEW_TOKENS, TOL)
    _assert_matches(report)
    assert report["reselections"] == 2
    out = engine.generate(prompts, max_new_tokens=1)
    cached = np.array([p.counts for p in out.prefills])
    attended = np.array([p.attended_counts for p in out.prefills])
    assert (cached >= attended).all() and (cached > attended).any()
    assert [s.kept for s in out.prefill_stats.layers] == attended.T.tolist()
    assert out.cache_lengths_prefill == cached.T.tolist()
    assert report["engine_layer_ratios"] == pytest.approx(report["reference_layer_ratios"])


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_visual_only_engine_keeps_every_text_token(models, arch):
    """protect_text (preset "visual_only") with the image mask as a prefill input: only visual tokens are evicted,
    every text token stays in every layer's cache, and decode never re-selects (generated tokens are text) - as the
    reference does."""
    engine = Engine(tiny_engine(arch, "standard", 0.5, preset="visual_only"))  # strict: few visual tokens
    prompts = make_prompts(engine, 2, seed=3)
    report = compare_batch(engine, models[arch], prompts, NEW_TOKENS, TOL)
    _assert_matches(report)
    assert report["reselections"] == 0
    out = engine.generate(prompts, max_new_tokens=1)
    for prompt, pre in zip(prompts, out.prefills):
        image = prompt.input_ids == engine.desc["image_token_id"]
        assert image.any() and (~image).any()
        for kept in pre.indices:
            assert set(np.flatnonzero(~image)) <= set(kept.tolist())
        assert any(len(kept) < len(prompt.input_ids) for kept in pre.indices)  # some visual tokens were evicted


@pytest.mark.parametrize("preset", list(zipvl.ZipVLConfig.presets()))
def test_every_preset_builds_and_matches_reference(models, preset):
    """Every named preset is exportable (zipvl-build --preset NAME, standard lowering) and the engine agrees with
    the reference (what zipvl-validate checks): kept sets, caches, logits, tokens."""
    engine = Engine(tiny_engine("llava", "standard", 0.9, preset=preset))
    wanted = zipvl.ZipVLConfig.preset(preset).variants()
    assert engine.config.variants() == wanted
    report = compare_batch(engine, models["llava"], make_prompts(engine, 2, seed=11), 18, TOL)
    _assert_matches(report)


def test_per_kv_head_engine_matches_reference():
    """One kept set per KV head (preset "evict_question_kv") as an engine: per-head compacted K/V from the prefill,
    a decode cache with a length per KV head (GroupQueryAttention over (sequence, KV head) rows), re-selection on
    each head's own entries. On the sharpened tiny model the heads keep different tokens and counts; the reference
    agrees on every head's set, length and retained tokens, the logits and the tokens."""
    from zipvl.export.build import load_model

    engine = Engine(tiny_engine("llava", "standard", 0.8, preset="evict_question_kv", sharp=True, protect_last=4))
    assert engine.kv_sets == engine.desc["num_kv_heads"] == 2
    prompts = make_prompts(engine, 2, seed=3)
    report = compare_batch(engine, load_model(tiny_model_dir("llava", sharp=True))[0], prompts, NEW_TOKENS, TOL)
    _assert_matches(report)
    assert report["reselections"] == 2
    out = engine.generate(prompts, max_new_tokens=NEW_TOKENS)
    heads = [np.asarray(p.head_counts) for p in out.prefills]  # (layers, H_kv) per prompt
    assert any(len(set(row)) > 1 for h in heads for row in h)  # KV heads keep different counts...
    assert any(set(a.tolist()) != set(b.tolist()) for p in out.prefills for a, b in p.indices)  # ...and tokens
    final = np.array(out.cache_lengths)  # (layers, B, H_kv)
    assert final.shape == (engine.num_layers, 2, 2)
    assert (final < np.array(out.cache_lengths_prefill) + NEW_TOKENS - 1).any()  # decode re-selection evicted
    assert out.kv_bytes == int(final.sum()) * 2 * engine.desc["head_dim"] * 4  # each entry: one head's K and V


@pytest.mark.parametrize("ops", ["standard", "plugin"])
def test_dense_prefill_engine_matches_reference_and_dense_logits(models, ops):
    """The "evict_only" variant as an engine (sparse_prefill=False): the reference with the same config agrees on kept
    sets, caches, logits and tokens, and the prefill's logits are the dense engine's (every token attended)."""
    engine = Engine(tiny_engine("llava", ops, 0.975, preset="evict_only"))
    assert not engine.config.sparse_prefill
    prompts = make_prompts(engine, 2, seed=3)
    report = compare_batch(engine, models["llava"], prompts, NEW_TOKENS, TOL)
    assert report["kept_sets_identical"] and report["cache_lengths_prefill"]["equal"], report["layers"]
    assert report["logits"]["passed"] and report["tokens"]["identical"], (report["logits"], report["tokens"])
    dense = Engine(tiny_engine("llava", ops, 1.0))
    for prompt in prompts:
        evicting, full = engine.prefill(prompt), dense.prefill(prompt)
        np.testing.assert_allclose(evicting.logits, full.logits, atol=1e-5, rtol=1e-5)
        assert sum(evicting.counts) < sum(full.counts)  # ...while the cache is evicted
    stats = engine.generate(prompts, max_new_tokens=1).prefill_stats
    assert stats.attn_flops_reduction < 0  # dense attention + the probe: it saves KV, not prefill FLOPs


def test_shared_weights_engine_is_the_same_engine():
    """One memory-mapped copy of the weights for every graph: the same tokens and logits as private copies, each
    tensor mapped once even where graphs share it."""
    folder = tiny_engine("llava", "standard", 0.975)
    private, shared = Engine(folder), Engine(folder, share_weights=True)
    prompts = make_prompts(private, 2, seed=7)
    a, b = private.generate(prompts, max_new_tokens=6), shared.generate(prompts, max_new_tokens=6)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    for x, y in zip(a.logits, b.logits):
        np.testing.assert_allclose(x, y, atol=1e-5)  # un-packed GEMMs may sum in another order
    import onnx

    values = shared.weights._values
    external = [i for g in shared.manifest["graphs"].values()
                for i in onnx.load(str(folder / g), load_external_data=False).graph.initializer
                if i.data_location == onnx.TensorProto.EXTERNAL]
    assert 0 < len(values) < len(external)  # prefill and decode read the same tensors: one view each
    assert all(not arr.flags.writeable for arr, _ in values.values())  # a view of the read-only map, not a copy


def test_full_feature_select_engine_matches_reference(tmp_path):
    """LLaVA's "full" feature select (each image's CLS token goes to the LM beside its patch tokens, a per-tile
    summary; what scripts/train_vision.py --feature-select full trains): the vision graph hands the LM side² + 1
    tokens per image and the engine matches the reference on them."""
    from zipvl.export.build import build_engine, load_model
    from zipvl.testing import tiny_model
    from zipvl.validate.tiny import MAX_SEQUENCE, tiny_config

    model = tiny_model("llava")
    model.config.vision_feature_select_strategy = "full"
    model.save_pretrained(tmp_path / "model")
    model, source = load_model(tmp_path / "model")
    build_engine(model, tmp_path / "engine", ops="standard", config=tiny_config(), max_batch=4,
                 max_sequence=MAX_SEQUENCE, source_dir=source, progress=False)
    engine = Engine(tmp_path / "engine")
    assert engine.desc["vision"]["select_strategy"] == "full"
    vision = model.config.vision_config
    prompts = make_prompts(engine, 2, seed=3)
    for prompt in prompts:
        assert (prompt.input_ids == model.config.image_token_id).sum() == (vision.image_size // vision.patch_size) ** 2 + 1
    report = compare_batch(engine, model, prompts, NEW_TOKENS, TOL)
    assert report["kept_sets_identical"] and report["cache_lengths_prefill"]["equal"], report["layers"]
    assert report["logits"]["passed"] and report["tokens"]["identical"], (report["logits"], report["tokens"])
