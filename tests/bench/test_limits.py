# SPDX-License-Identifier: Apache-2.0
"""The physical limits against hand-computed values (the issue's worked examples)."""

import math

import pytest

from zipvl.bench.limits import (
    ModelShape,
    attention_limit,
    decode_limit,
    effective_ratio,
    flops_split,
    linear_flops,
    prefill_limit,
    time_split_limit,
)

SMOLLM2 = ModelShape(hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536, layers=30, vocab=49152)
LLAVA_NEXT_7B = ModelShape(hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008, layers=32, vocab=32064)


def test_linear_flops_by_hand():
    # q,o: 576*576 each; k,v: 576*192 each; MLP: 3*576*1536; x2 FLOPs per multiply-add, x n tokens.
    per_token = 2 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    assert linear_flops(SMOLLM2, 8192) == pytest.approx(8192 * per_token)


def test_prefill_limit_by_hand():
    n, r, m = 8192, 0.55, 128
    f_lin = 2 * n * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    f_attn = 2 * n * n * 576
    f_probe = 2 * m * n * 576
    f_head = 2 * 576 * 49152
    expected = (30 * (f_lin + f_attn) + f_head) / (30 * (f_lin + f_attn * r * r + f_probe) + f_head)
    assert prefill_limit(SMOLLM2, n, r, m) == pytest.approx(expected, rel=1e-12)
    assert prefill_limit(SMOLLM2, n, r) == pytest.approx(1.64, abs=0.01)  # "SmolLM2 at 8K, r = 0.55: ~1.6x"


def test_prefill_limit_paper_scale():
    assert prefill_limit(LLAVA_NEXT_7B, 131072, 0.42) == pytest.approx(2.48, abs=0.02)  # paper: 2.3x measured
    assert prefill_limit(LLAVA_NEXT_7B, 65536, 0.42) == pytest.approx(1.88, abs=0.02)


def test_dense_layers_cost_no_probe_and_tau_one_is_no_gain():
    assert prefill_limit(SMOLLM2, 4096, [1.0] * 30, probed=[False] * 30) == pytest.approx(1.0)
    # probing but keeping everything is slower than dense: the limit is below 1
    assert prefill_limit(SMOLLM2, 4096, 1.0) < 1.0


def test_attention_and_decode_limits():
    assert attention_limit(0.42) == pytest.approx(1 / 0.42**2)
    assert attention_limit(0.42) == pytest.approx(5.67, abs=0.01)
    assert attention_limit([0.5, 1.0]) == pytest.approx(1 / ((0.25 + 1.0) / 2))
    assert effective_ratio([0.5, 1.0]) == pytest.approx(math.sqrt(0.625))
    assert decode_limit(300, 100) == 3.0


def test_time_split_limit():
    # 10 s dense, 4 s of it attention, r = 0.5 -> 10 / (6 + 1) s
    assert time_split_limit(10.0, 4.0, 0.5) == pytest.approx(10 / 7)


def test_flops_split_share():
    s = flops_split(SMOLLM2, 8192)
    assert s["attn_share"] == pytest.approx(s["F_attn"] / (s["F_attn"] + s["F_lin"]))
    assert 0.5 < s["attn_share"] < 0.6
