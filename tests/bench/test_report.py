# SPDX-License-Identifier: Apache-2.0
"""A full zipvl-bench run on a tiny model: every JSON field present, the plot written, every number labelled."""

import json

import pytest

from zipvl.bench.cli import main
from zipvl.bench.report import missing_fields


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--model", "tiny:llama", "--lengths", "192,256", "--repeats", "2", "--warmup", "1",
            "--crossover-lengths", "64,128,192", "--crossover-repeats", "1", "--contexts", "192", "--batches", "1,2",
            "--steps", "2", "--memory-budget", "40", "--max-batch", "3", "--json", str(out / "r.json"),
            "--plot", str(out / "r.png"), "--no-progress"]
    assert main(argv) == 0
    return json.loads((out / "r.json").read_text()), out


def test_json_has_every_field(full_run):
    report, _ = full_run
    assert missing_fields(report) == []
    assert report["schema"] == "zipvl-bench/1"
    assert [p["n"] for p in report["prefill"]] == [192, 256]
    p = report["prefill"][0]
    assert len(p["dense"]["samples_s"]) == 2 and len(p["zipvl"]["samples_s"]) == 2  # warm-up not counted
    assert set(p["breakdown_zipvl_s"]) == {"probe", "select", "sparse_attention", "evict", "rest"}
    assert len(p["zipvl_stats"]["layer_ratios"]) == 3
    assert p["limit"] > 0 and p["efficiency"] == pytest.approx(p["speedup"] / p["limit"])
    assert report["environment"]["backend"] == "torch-cpu" and report["environment"]["clock"] == "perf_counter"


def test_every_number_is_labelled_with_the_mode(full_run):
    report, _ = full_run
    label = report["mode"]
    assert label == "tiny random weights, adaptive tau=0.975"
    for section in ("prefill", "attention", "decode"):
        assert report[section] and all(point["mode"] == label for point in report[section])
    assert report["crossover"]["mode"] == label


def test_decode_and_memory_budget(full_run):
    report, _ = full_run
    d = report["decode"][0]
    assert [r["batch"] for r in d["rows"]][:2] == [1, 2]
    assert set(d["memory_fit"]) == {"dense", "zipvl"}
    for fit in d["memory_fit"].values():
        assert fit["measured_batch"] == min(fit["max_batch"], 3)
    assert d["limit"] == pytest.approx(d["kv_bytes_dense"] / d["kv_bytes_zipvl"])
    assert report["memory"]["per_length"][0]["kv_mib_dense"] > 0


def test_crossover_section(full_run):
    cross = full_run[0]["crossover"]
    assert cross["lengths"] == [64, 128, 192]
    assert len(cross["points"]) == 3
    if cross["recommended_min_length"] is not None and cross.get("fallback_check"):
        assert cross["fallback_check"]["ok"]  # shorter prompts then run dense: layers say mode="short"


def test_plot_written(full_run):
    _, out = full_run
    png = (out / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
