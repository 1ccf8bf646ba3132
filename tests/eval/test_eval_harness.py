# SPDX-License-Identifier: Apache-2.0
"""The harness on tiny models: teacher-forced fidelity is exact for identical methods, the free greedy loop equals
transformers' generate, matched ratios reach the baselines, reports are written, runs are deterministic."""

import json

import pytest
import torch

import zipvl
from zipvl import ZipVLConfig
from zipvl.eval import EvalSettings, Item, evaluate_items, run_prompt, write_reports
from zipvl.eval.runner import prepare
from zipvl.testing import tiny_inputs, tiny_model

EOS = {2}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread is faster than two on a shared 2-core box (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.no_grad()
def test_identical_method_has_perfect_fidelity():
    model = tiny_model("llama")
    inputs = tiny_inputs("llama", text_len=200).kwargs
    ref = run_prompt(model, inputs, None, 8, set())
    assert len(ref.tokens) == 8 and ref.logprobs.shape[0] == 8
    same = run_prompt(model, inputs, zipvl.ZipVLPolicy(ZipVLConfig(tau=1.0)), 8, set(), reference=ref)
    assert same.tf_agree == [True] * 8 and max(same.tf_kl) < 1e-6
    assert same.tokens == ref.tokens and same.reused_reference
    assert same.stats.mean_ratio == 1.0
    sparse = run_prompt(model, inputs, zipvl.FixedRatioPolicy(0.3), 8, set(), reference=ref)
    assert sparse.stats.mean_ratio < 0.35 and max(sparse.tf_kl) > 1e-4


@pytest.mark.parametrize("arch", ["llama", "llava", "qwen2_vl"])
@torch.no_grad()
def test_free_greedy_matches_generate(arch):
    model = tiny_model(arch)
    inputs = prepare(model, tiny_inputs(arch, text_len=150).kwargs)
    for policy in (None, zipvl.ZipVLPolicy(ZipVLConfig(tau=0.9))):
        mine = run_prompt(model, inputs, policy, 10, EOS).tokens
        if policy is not None:
            zipvl.enable(model, policy=policy)
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=2)
        zipvl.disable(model)
        assert mine == out[0, inputs["input_ids"].shape[1]:].tolist()[: len(mine)]


def _items():
    items = []
    for i in range(2):
        words = [f"w{3 + (7 * j + i) % 900}" for j in range(150)]
        words[40 + 30 * i] = "w950"
        items.append(Item(id=f"t{i}", task="toy", prompt=" ".join(words), answers=["w950"], scorer="needle",
                          focus="w950", meta={"context": 160, "depth": round(0.25 * (i + 1), 2)}))
    return items


def _strip(report):
    for e in report["methods"].values():
        for r in e["items"]:
            r.pop("prefill_s"), r.pop("decode_s")
        e["summary"].pop("prefill_s")
    return report


@torch.no_grad()
def test_evaluate_matched_ratio_reports_and_determinism(word_tokenizer, tmp_path):
    model = tiny_model("llama", num_layers=4)  # deep enough for FastV's 2 dense layers to be matched
    settings = EvalSettings(taus=(0.9, 1.0), match_taus=(0.9,), max_new_tokens=3)
    result = evaluate_items(model, word_tokenizer, _items(), settings, task="needle", progress=False)
    methods = result["methods"]
    assert list(methods) == ["dense", "zipvl@0.9", "zipvl@1", "fixed@0.9", "fixed@1", "fastv@0.9", "snapkv@0.9",
                             "random@0.9"]
    zr = methods["zipvl@0.9"]["summary"]["mean_ratio"]
    assert zr < 1.0
    for key in ("fixed@0.9", "snapkv@0.9", "random@0.9", "fastv@0.9"):
        assert methods[key]["target_ratio"] == zr
        assert abs(methods[key]["summary"]["mean_ratio"] - zr) < 0.02  # matched (up to ceil)
    assert methods["zipvl@1"]["summary"]["exact_match"] == 1.0 and methods["zipvl@1"]["summary"]["mean_kl"] < 1e-6
    assert methods["snapkv@0.9"]["summary"]["first_kl"] < 1e-8  # dense prefill: same first distribution
    assert methods["snapkv@0.9"]["summary"]["attn_flops_reduction"] < 0  # pays scoring, saves no attention
    assert len(methods["zipvl@0.9"]["summary"]["focus_retention"]) == 4
    again = evaluate_items(model, word_tokenizer, _items(), settings, task="needle", progress=False)
    assert json.dumps(_strip(again), default=str) == json.dumps(_strip(result), default=str)

    report = {"model": "tiny", "settings": {"taus": [0.9, 1.0]}, "tasks": {"needle": result}}
    paths = write_reports(report, tmp_path)
    names = {p.name for p in paths}
    assert {"results.json", "report.md", "tau_sweep_needle.png", "layer_ratios_needle.png"} <= names
    md = (tmp_path / "report.md").read_text()
    assert "Needle grid" in md and "| fixed@0.9 |" in md and "Adaptive (ZipVL) vs fixed" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"]["needle"]["adaptive_vs_fixed"][0]["tau"] == 0.9
    assert (tmp_path / "tau_sweep_needle.png").read_bytes()[:4] == b"\x89PNG"


def test_settings_validation():
    with pytest.raises(zipvl.ZipVLInputError):
        EvalSettings(taus=(0.9,), match_taus=(0.975,))
    with pytest.raises(zipvl.ZipVLInputError):
        EvalSettings(baselines=("h2o",))
    with pytest.raises(zipvl.ZipVLInputError):
        EvalSettings(match="layer")
