# SPDX-License-Identifier: Apache-2.0
"""Forced-ratio and shape-only modes keep exactly the asked ratio, and say so."""

import json
import math

import pytest

from zipvl.bench import BenchConfig
from zipvl.bench.cli import main


def _run(tmp_path, *extra):
    path = tmp_path / "r.json"
    argv = ["--lengths", "201", "--repeats", "1", "--warmup", "0", "--skip", "crossover", "--contexts", "201",
            "--batches", "1", "--steps", "1", "--json", str(path), "--no-progress", "--quiet", *extra]
    assert main(argv) == 0
    return json.loads(path.read_text())


def test_forced_ratio_is_kept_exactly(tmp_path):
    report = _run(tmp_path, "--model", "tiny:llama", "--kept-ratio", "0.5")
    p = report["prefill"][0]
    kept = math.ceil(0.5 * 201)
    assert p["zipvl_stats"]["kept"] == [kept] * 3
    assert p["zipvl_stats"]["layer_ratios"] == pytest.approx([kept / 201] * 3)
    assert p["kv_bytes_zipvl"] * 201 == p["kv_bytes_dense"] * kept  # the cache holds exactly the kept tokens
    assert report["mode"] == "tiny random weights, forced r=0.5"
    assert report["mode_detail"]["forced"] and report["mode_detail"]["tau"] is None
    assert report["attention"][0]["ratio"] == pytest.approx(kept / 201)
    assert report["decode"][0]["kv_bytes_zipvl"] * 201 == report["decode"][0]["kv_bytes_dense"] * kept


def test_shape_only_mode_is_labelled_and_truncation_reported(tmp_path):
    report = _run(tmp_path, "--model", "shape:smollm2-135m", "--layers", "2", "--kept-ratio", "0.4",
                  "--skip", "crossover,decode,attention")
    assert report["mode"] == "shape-only, forced r=0.4, 2/30 layers"
    assert report["mode_detail"]["shape_only"] and report["model"]["weights"] == "random"
    assert any("truncated to 2 of 30" in n for n in report["notes"])
    st = report["prefill"][0]["zipvl_stats"]
    assert st["kept"] == [math.ceil(0.4 * 201)] * 2
    assert report["model_shape"]["layers"] == 2 and report["model_shape"]["hidden"] == 576


def test_shape_only_without_ratio_is_refused(capsys):
    assert main(["--model", "shape:llava-next-7b", "--no-progress"]) == 2
    assert "--kept-ratio" in capsys.readouterr().err
    with pytest.raises(Exception, match="kept-ratio"):
        BenchConfig(model="shape:llava-next-7b")


def test_unknown_model_and_stage(capsys):
    assert main(["--model", "/nonexistent/ckpt", "--no-progress"]) == 2
    assert "neither 'default'" in capsys.readouterr().err
    assert main(["--model", "tiny:llama", "--skip", "warp", "--no-progress"]) == 2
