# SPDX-License-Identifier: Apache-2.0
"""Peers in zipvl-bench: eager PyTorch dense and ONNX Runtime GenAI dense beside the backend's variants, the
ratios against them, and the ORT GenAI helper that builds its model from a local checkpoint."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from pathlib import Path
import torch

from zipvl.bench import ortgenai
from zipvl.bench.backends import BackendUnavailableError
from zipvl.bench.cli import main
from zipvl.bench.peer_tables import markdown
from zipvl.bench.peers import compare, parse_peers
from zipvl.errors import ZipVLConfigError
from zipvl.testing import tiny_model, tiny_tokenizer

BENCH = ["--model", "tiny:llama", "--lengths", "96", "--repeats", "1", "--warmup", "0", "--contexts", "96",
         "--batches", "1,2", "--steps", "2", "--skip", "attention,crossover", "--no-progress", "--quiet"]


def test_parse_peers_rejects_unknown_names():
    assert parse_peers("torch, ortgenai") == ("torch", "ortgenai")
    with pytest.raises(ZipVLConfigError, match="unknown peer"):
        parse_peers("torch,vllm")


def test_unknown_peer_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(BENCH + ["--peers", "vllm"])
    assert e.value.code == 2
    assert "unknown peer" in capsys.readouterr().err


def test_compare_ratios_against_peer_and_limit():
    report = {"prefill": [{"n": 4096, "dense": {"median_s": 8.0}, "zipvl": {"median_s": 4.0}, "limit": 1.25}],
              "decode": [{"context": 2048, "rows": [{"batch": 4, "dense_tps": 20.0, "zipvl_tps": 30.0}]}],
              "peers": {"ortgenai": {"prefill": [{"n": 4096, "median_s": 6.0}, {"n": 8192, "skipped": "x"}],
                                     "decode": [{"context": 2048, "rows": [{"batch": 4, "tokens_per_s": 15.0}]}]}}}
    cmp = compare(report)
    (p,), (d,) = cmp["prefill"], cmp["decode"]
    assert p["zipvl_speedup"] == pytest.approx(1.5) and p["dense_speedup"] == pytest.approx(0.75)
    assert p["zipvl_of_limit"] == pytest.approx(1.2) and p["zipvl_meets_limit"]
    assert d["zipvl_ratio"] == pytest.approx(2.0) and d["dense_ratio"] == pytest.approx(4 / 3)
    assert "| ortgenai | 4096 |" in markdown({**report, "peer_comparison": cmp, "mode": "m"})


def test_torch_peer_in_the_same_run(tmp_path):
    out = tmp_path / "r.json"
    assert main(BENCH + ["--peers", "torch", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    peer = report["peers"]["torch"]
    assert [p["n"] for p in peer["prefill"]] == [96] and peer["prefill"][0]["median_s"] > 0
    assert [r["batch"] for r in peer["decode"][0]["rows"]] == [1, 2]
    cmp = report["peer_comparison"]
    assert [(r["peer"], r["n"]) for r in cmp["prefill"]] == [("torch", 96)]
    assert [(r["context"], r["batch"]) for r in cmp["decode"]] == [(96, 1), (96, 2)]


def test_save_causal_lm_keeps_the_vlm_language_model(tmp_path):
    """A LLaVA's LM re-saved as a plain causal LM gives the VLM's text-only logits (what ORT GenAI is built from)."""
    import transformers as tf

    vlm = tiny_model("llava")
    ortgenai.save_causal_lm(vlm, tiny_tokenizer(), tmp_path / "lm")
    lm = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    assert type(lm).__name__ == "LlamaForCausalLM"
    ids = torch.randint(3, 900, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, vlm(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "lm" / "tokenizer.json").is_file()


def test_missing_ortgenai_is_one_clear_error(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime_genai" else real(n, *a))
    with pytest.raises(BackendUnavailableError, match=r"onnxruntime_genai: pip install 'zipvl\[peers\]'"):
        ortgenai.require()
    assert main(BENCH + ["--peers", "ortgenai"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zipvl[peers]" in err[0]


@pytest.fixture(scope="module")
def tiny_ortgenai(tmp_path_factory):
    for mod in ("onnxruntime_genai", "onnx_ir", "onnxscript"):
        pytest.importorskip(mod)
    root = tmp_path_factory.mktemp("og")
    model = tiny_model("llama")
    ortgenai.save_causal_lm(model, tiny_tokenizer(), root / "src")
    return model, ortgenai.build_model(root / "src", root / "model")


def test_ortgenai_peer_runs_the_same_weights(tiny_ortgenai):
    """The builder's model, run by the peer, predicts the torch model's greedy tokens."""
    import onnxruntime_genai as og

    model, folder = tiny_ortgenai
    peer = ortgenai.OrtGenAIPeer(folder, threads=1)
    ids = torch.randint(3, 900, (1, 40), generator=torch.Generator().manual_seed(1))
    assert peer.prefill(ids) > 0 and len(peer.decode_steps(ids, 2, 3)) == 3
    params = og.GeneratorParams(peer.model)
    params.set_search_options(max_length=44, batch_size=1)
    gen = og.Generator(peer.model, params)
    gen.append_tokens(ids.numpy().astype(np.int32))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    np.testing.assert_allclose(gen.get_logits()[0, -1], logits.numpy(), atol=1e-4, rtol=1e-4)
    assert peer.max_length() == model.config.max_position_embeddings
    full = torch.randint(3, 900, (1, peer.max_length()), generator=torch.Generator().manual_seed(2))
    assert peer.prefill(full) > 0  # a prompt of exactly the context length is valid (no room asked beyond it)


def test_ortgenai_peer_in_the_bench(tiny_ortgenai, tmp_path):
    _, folder = tiny_ortgenai
    out = tmp_path / "r.json"
    assert main(BENCH + ["--peers", "ortgenai", "--ortgenai-model", str(folder), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["peers"]["ortgenai"]["describe"]["folder"] == str(folder)
    assert {r["peer"] for r in report["peer_comparison"]["prefill"]} == {"ortgenai"}


def test_peer_decode_beyond_its_context_is_skipped():
    from zipvl.bench.peers import Peer, run_peers

    class Short(Peer):
        name = "short"

        def describe(self):
            return {}

        def max_length(self):
            return 100

    out = run_peers([Short()], lambda n: torch.zeros(1, n, dtype=torch.long), [128], [96], [1], 1, 0, 8, 1)
    assert "skipped" in out["short"]["prefill"][0] and "skipped" in out["short"]["decode"][0]


def test_a_failing_peer_is_a_skipped_row():
    from zipvl.bench.peers import Peer, run_peers

    class Broken(Peer):
        name = "broken"

        def describe(self):
            return {}

        def prefill(self, ids):
            raise RuntimeError("out of context")

        def decode_steps(self, ids, batch, steps):
            raise RuntimeError("no cache")

    out = run_peers([Broken()], lambda n: torch.zeros(1, n, dtype=torch.long), [16], [16], [1], 1, 0, 2, 0)
    assert out["broken"]["prefill"] == [{"n": 16, "skipped": "RuntimeError: out of context"}]
    assert out["broken"]["decode"][0]["rows"] == [{"batch": 1, "skipped": "RuntimeError: no cache"}]


def test_fresh_process_peak_of_an_engine(tmp_path):
    """One prefill per fresh interpreter: the exact high-water mark, above what the loaded engine holds; a folder
    that is no engine comes back as a skipped point with the runtime's reason, not as a crash of the sweep."""
    from zipvl.bench.peak import run_fresh_peaks
    from zipvl.validate.tiny import tiny_engine

    folder = str(tiny_engine("llava", "standard", 0.975))
    engines = {"zipvl": folder, "shared": (folder, True), "broken": str(tmp_path)}
    out = run_fresh_peaks(engines, lambda n: (torch.arange(n)[None] % 900) + 3, [64, 128])
    assert [p["n"] for p in out["zipvl"]] == [64, 128]
    for p in out["zipvl"] + out["shared"]:
        assert p["peak_mib"] >= p["loaded_mib"] > p["base_mib"] > 0 and p["method"] == "VmHWM, fresh process"
        # the bound's parts follow the engine: its weights file, and 2 (K, V) x layers x kv heads x d x fp32 x n
        assert p["weights_mib"] == pytest.approx((Path(folder) / "weights.bin").stat().st_size / 2**20)
        assert p["bound_mib"] == pytest.approx(p["weights_mib"] + p["kv_mib"] + 1024)
    assert out["zipvl"][1]["kv_mib"] == pytest.approx(2 * out["zipvl"][0]["kv_mib"])
    assert [p["share_weights"] for p in out["shared"]] == [True, True]
    assert all("manifest" in p["skipped"].lower() for p in out["broken"])
