# SPDX-License-Identifier: Apache-2.0
"""zipvl-build / zipvl-validate command lines on a tiny model, and the validation's own logic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zipvl.export.cli import main as build_main
from zipvl.runtime import load_manifest
from zipvl.validate.cli import main as validate_main
from zipvl.validate.compare import Tolerance, classify, compare_logits
from zipvl.validate.tiny import MAX_SEQUENCE, tiny_engine, tiny_model_dir


def test_build_cli_writes_a_checked_engine(tmp_path, capsys):
    base = tiny_engine("llava")
    out = tmp_path / "engine"
    code = build_main([str(tiny_model_dir("llava")), "-o", str(out), "--ops", "plugin", "--tau", "0.9",
                       "--n-recent", "8", "--n-random", "8", "--decode-interval", "16", "--max-sequence",
                       str(MAX_SEQUENCE), "--reuse", str(base), "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ops"] == "plugin" and summary["engine_bytes"] > 0
    manifest = load_manifest(out)
    assert manifest["zipvl"]["tau"] == 0.9 and manifest["limits"]["max_sequence"] == MAX_SEQUENCE
    assert set(manifest["graphs"]) == {"embed", "vision", "prefill", "decode"}
    assert {"prefill.onnx", "decode.onnx", "vision.onnx", "embed.onnx", "weights.bin"} <= set(manifest["files"])


def test_build_cli_rejects_a_non_checkpoint(tmp_path, capsys):
    assert build_main([str(tmp_path), "-o", str(tmp_path / "e"), "--quiet"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_validate_cli_passes_and_writes_json(tmp_path):
    report_path = tmp_path / "report.json"
    code = validate_main([str(tiny_engine("qwen2_vl")), "--model", str(tiny_model_dir("qwen2_vl")), "--prompts", "2",
                          "--max-new-tokens", "20", "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert code == 0 and report["passed"]
    assert report["summary"]["tokens_identical"] and report["summary"]["kept_sets_identical"]
    assert report["summary"]["reselections"] == 1
    assert report["batches"][0]["logits"]["steps"] == 20


def test_validate_cli_exits_nonzero_on_missed_tolerance(tmp_path):
    report_path = tmp_path / "report.json"
    code = validate_main([str(tiny_engine("llava")), "--model", str(tiny_model_dir("llava")), "--prompts", "2",
                          "--max-new-tokens", "4", "--atol", "0", "--rtol", "0", "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert code == 1 and not report["passed"] and not report["batches"][0]["logits"]["passed"]


def test_compare_logits_uses_tolerance():
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((2, 50)).astype(np.float32) for _ in range(3)]
    assert compare_logits([r + 1e-6 for r in ref], ref, Tolerance())["passed"]
    bad = compare_logits([r + (i == 2) * 0.1 for i, r in enumerate(ref)], ref, Tolerance())
    assert not bad["passed"] and bad["max_abs_error"] == pytest.approx(0.1, rel=1e-3)


def test_classify_near_ties():
    score = np.array([0.5, 0.3, 0.2000001, 0.2, 0.1])
    assert classify(np.array([0, 1, 2]), np.array([0, 1, 2]), score, 1e-5) == "identical"
    assert classify(np.array([0, 1, 3]), np.array([0, 1, 2]), score, 1e-5) == "near_tie"
    assert classify(np.array([0, 1, 4]), np.array([0, 1, 2]), score, 1e-5) == "mismatch"
