# SPDX-License-Identifier: Apache-2.0
"""The embedded default (real SmolLM2 weights) through the whole harness at 2K. Slow; no timing assertions."""

import pytest

from zipvl.bench import BenchConfig, run_bench
from zipvl.bench.report import missing_fields, render


@pytest.mark.slow
def test_default_model_2k(capsys):
    report = run_bench(BenchConfig(model="default", lengths=[2048], repeats=1, warmup=0, crossover_lengths=[512, 2048],
                                   crossover_repeats=1, contexts=[2048], batches=[1, 2], steps=2,
                                   memory_budget_mib=1024, max_batch=4, progress=False))
    assert missing_fields(report) == []
    assert report["mode"] == "real weights, adaptive tau=0.975"
    p = report["prefill"][0]
    ratios = p["zipvl_stats"]["layer_ratios"]
    assert len(ratios) == 30 and min(ratios) < max(ratios) and p["r_eff"] < 0.9  # real, adaptive sparsity
    assert 1.0 < p["limit"] < 2.0
    assert p["kv_bytes_zipvl"] < p["kv_bytes_dense"]
    assert report["decode"][0]["limit"] > 1.0
    with capsys.disabled():
        render(report)
