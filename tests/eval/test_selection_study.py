# SPDX-License-Identifier: Apache-2.0
"""The selection study's harness: presets run as variants beside the paper's ZipVL (each with its own config, tau
swept), tau = 1 stays dense for every variant, the Pareto front is the non-dominated set, the needle grid spreads
its haystacks over the essays."""

import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from zipvl import ZipVLConfig
from zipvl.config import ZipVLConfigError
from zipvl.errors import ZipVLInputError
from zipvl.eval import EvalSettings, Item, evaluate_items, write_reports
from zipvl.eval.evaluate import pareto_front
from zipvl.eval.tasks import TaskOptions, make_items
from zipvl.testing import tiny_model


def _items():
    words = [f"w{3 + (11 * j) % 900}" for j in range(160)]
    words[50] = "w950"
    return [Item(id="t0", task="toy", prompt=" ".join(words), answers=["w950"], scorer="needle", focus="w950",
                 meta={"context": 160, "depth": 0.3})]


def test_variant_configs_follow_their_presets():
    s = EvalSettings(taus=(0.96, 0.995), baselines=(), variants=("safe_evict", "more_probes"))
    assert [k for k, _, _ in s.plan()] == ["dense", "zipvl@0.96", "zipvl@0.995", "safe_evict@0.96",
                                           "safe_evict@0.995", "more_probes@0.96", "more_probes@0.995"]
    assert s.config_for("safe_evict@0.96", 0.96) == ZipVLConfig.preset("safe_evict", tau=0.96)
    # tau above the preset's stricter eviction threshold: eviction follows tau (tau_evict >= tau is the contract)
    assert s.config_for("safe_evict@0.995", 0.995).evict_tau == 0.995
    assert s.config_for("more_probes@0.96", 0.96).n_probes == 256
    assert s.config_for("zipvl@0.96", 0.96) == ZipVLConfig(tau=0.96)
    with pytest.raises(ZipVLConfigError, match="unknown ZipVLConfig preset 'snapkv'"):
        EvalSettings(variants=("snapkv",))


@torch.no_grad()
def test_every_variant_is_dense_at_tau_one_and_sparser_below(word_tokenizer, tmp_path):
    model = tiny_model("llama", num_layers=3)
    variants = ("max_heads", "accurate", "floored")
    settings = EvalSettings(taus=(0.8, 1.0), baselines=(), max_new_tokens=3, variants=variants)
    result = evaluate_items(model, word_tokenizer, _items(), settings, task="needle", progress=False)
    methods = result["methods"]
    for name in ("zipvl", *variants):
        dense_twin = methods[f"{name}@1"]["summary"]
        assert dense_twin["mean_ratio"] == 1.0 and dense_twin["exact_match"] == 1.0 and dense_twin["mean_kl"] < 1e-6
        assert methods[f"{name}@0.8"]["summary"]["mean_ratio"] < 1.0
    assert methods["accurate@0.8"]["config"]["protect_first"] == 4 and methods["zipvl@0.8"]["config"] == {}
    assert methods["max_heads@0.8"]["method"] == "variant"
    # the floor binds: 'floored' keeps at least 10 % in every layer
    assert min(methods["floored@0.8"]["summary"]["layer_ratios"]) >= 0.1
    write_reports({"model": "tiny", "settings": {}, "tasks": {"needle": result}}, tmp_path, plots=True)
    md = (tmp_path / "report.md").read_text()
    assert "Selection study" in md and "| max_heads@0.8 |" in md


def _point(key, ratio, fidelity):
    return {"method": "variant", "summary": {"mean_ratio": ratio, "exact_match": fidelity, "accuracy": None,
                                             "attn_flops_reduction": 0.0, "mean_kl": 0.0}}


def test_pareto_front_is_the_non_dominated_set():
    points = {"a@1": (1.0, 1.0), "b@1": (0.5, 0.9), "c@1": (0.6, 0.8), "d@1": (0.5, 0.7), "e@1": (0.3, 0.2),
              "f@1": (0.6, 0.9)}
    result = {"methods": {"dense": {"method": "dense", "summary": {"mean_ratio": 1.0, "exact_match": 1.0}},
                          **{k: _point(k, *v) for k, v in points.items()}}}
    front = {p["key"] for p in pareto_front(result) if p["front"]}
    # brute force, independently: p is dominated if some q is no worse in both and better in one
    expected = {k for k, (r, f) in points.items()
                if not any(r2 <= r and f2 >= f and (r2, f2) != (r, f) for r2, f2 in points.values())}
    assert front == expected == {"a@1", "b@1", "e@1"}


def test_needle_grid_spreads_haystacks_over_essays():
    from tokenizers import decoders, models, pre_tokenizers

    # one token per byte: decodes back to the essays' text (the word tokenizer cannot spell them)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_bpe = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    byte_bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=byte_bpe)
    one = make_items("needle", tok, TaskOptions(contexts=(50,), depths=(0.5,), needles=2, essays=1))
    two = make_items("needle", tok, TaskOptions(contexts=(50,), depths=(0.5,), needles=2, essays=2))
    assert one[0].prompt == two[0].prompt  # needle 0 always starts at the first place
    assert one[1].prompt != two[1].prompt and two[1].meta["essay"] == 1
    assert len(make_items("needle", tok, TaskOptions(contexts=(50,), depths=(0.1, 0.9), needles=8))) == 16
    with pytest.raises(ZipVLInputError, match="--essays"):
        make_items("needle", tok, TaskOptions(essays=0))
