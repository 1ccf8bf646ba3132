# SPDX-License-Identifier: Apache-2.0
"""The CPU twin (libzipvl_cpu.so) against the PyTorch reference: same kept sets and counts, attention to ~1e-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zipvl
from zipvl import ZipVLConfig
from zipvl.errors import ZipVLInputError

TAUS = [0.5, 0.75, 0.9, 0.95, 0.975, 1.0]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def cpu_ops(cpu_library):
    from zipvl.plugins import cpu_ops

    return cpu_ops


def _f32(x: float) -> float:
    """The node's tau / scaling are FLOAT attributes: the reference must see the same fp32 value."""
    return float(np.float32(x))


def _random_probes(gen: torch.Generator, b: int, n: int, m: int) -> torch.Tensor:
    """(B, m) strictly ascending per-sequence probe sets ending at n - 1."""
    rows = []
    for _ in range(b):
        others = torch.randperm(n - 1, generator=gen)[: m - 1] if n > 1 else torch.empty(0, dtype=torch.long)
        rows.append(torch.cat([others.sort().values, torch.tensor([n - 1])]))
    return torch.stack(rows)


def _case(seed, b, h_kv, group, n, d, sharpness, per_sequence_probes):
    gen = torch.Generator().manual_seed(seed)
    h = h_kv * group
    q = torch.randn(b, h, n, d, generator=gen) * sharpness
    k = torch.randn(b, h_kv, n, d, generator=gen)
    v = torch.randn(b, h_kv, n, d, generator=gen)
    if per_sequence_probes:
        m = int(torch.randint(1, min(n, 40) + 1, (1,), generator=gen))
        probes = _random_probes(gen, b, n, m)
    else:
        probes = zipvl.probe_positions(n, ZipVLConfig(n_recent=16, n_random=16, seed=seed))
    return q, k, v, probes


shapes = st.tuples(
    st.integers(0, 2**31 - 1),          # seed
    st.integers(1, 3),                  # B
    st.integers(1, 3),                  # H_kv
    st.integers(1, 3),                  # GQA group g = H / H_kv
    st.one_of(st.just(1), st.integers(2, 160)),  # n: n = 1, n < #probes (all positions), n > #probes
    st.sampled_from([1, 4, 8, 16, 32]),  # d
    st.sampled_from([0.3, 1.0, 3.0]),    # query scale: flat to peaked attention
    st.booleans(),                       # (B, m) per-sequence probes instead of one (m,) set
)


@SETTINGS
@given(case=shapes, tau=st.sampled_from(TAUS))
def test_token_select_matches_reference(cpu_ops, selection_checker, case, tau):
    q, k, _, probes = _case(*case)
    tau = _f32(tau)
    reference = zipvl.select_tokens(q, k, probes, tau)
    kept_indices, kept_count, mass = cpu_ops.token_select(q.numpy(), k.numpy(), probes.numpy(), tau)
    # Same kept positions and counts as the reference (a fp32 near-tie in the reference itself is the only
    # accepted difference; none occurs in these derandomized examples on x86-64 with torch 2.13).
    selection_checker(kept_indices, kept_count, mass, reference, probes, q.shape[1], tau)
    # Every probe row of every head sums to one.
    m = probes.shape[-1]
    np.testing.assert_allclose(mass.sum(-1), q.shape[1] * m, rtol=1e-5)


@SETTINGS
@given(case=shapes, tau=st.sampled_from(TAUS))
def test_sparse_attention_matches_reference(cpu_ops, case, tau):
    q, k, v, probes = _case(*case)
    selection = zipvl.select_tokens(q, k, probes, _f32(tau))
    kept_indices = selection.indices().to(torch.int32)
    kept_count = selection.count.to(torch.int32)
    out, k_compact, v_compact = cpu_ops.sparse_attention(q, k, v, kept_indices, kept_count)
    reference = zipvl.sparse_attention(q, k, v, selection.kept)
    np.testing.assert_allclose(out, reference.numpy(), atol=1e-5, rtol=1e-5)
    (k_ref, v_ref), valid = zipvl.compact([k, v], selection.kept)
    p_max = k_ref.shape[2]
    mask = valid[:, None, :, None].numpy()
    np.testing.assert_array_equal(k_compact[:, :, :p_max] * mask, k_ref.numpy() * mask)
    np.testing.assert_array_equal(v_compact[:, :, :p_max] * mask, v_ref.numpy() * mask)
    for b, c in enumerate(kept_count.tolist()):  # past the count: zeros
        assert not k_compact[b, :, c:].any() and not v_compact[b, :, c:].any()


def test_tau_one_is_dense_attention(cpu_ops):
    q, k, v, probes = _case(7, 2, 2, 2, 70, 16, 1.0, False)
    kept_indices, kept_count, _ = cpu_ops.token_select(q, k, probes, 1.0)
    assert (kept_count == 70).all() and (kept_indices == np.arange(70)).all()
    out, k_compact, _ = cpu_ops.sparse_attention(q, k, v, kept_indices, kept_count)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    np.testing.assert_allclose(out, dense.numpy(), atol=1e-5)
    np.testing.assert_array_equal(k_compact, k.numpy())


def test_single_token(cpu_ops):
    q, k, v, probes = _case(3, 2, 1, 4, 1, 8, 1.0, False)
    kept_indices, kept_count, mass = cpu_ops.token_select(q, k, probes, 0.5)
    assert kept_count.tolist() == [1, 1] and kept_indices.tolist() == [[0], [0]]
    np.testing.assert_allclose(mass, 4.0)  # H * m = 4 * 1
    out, _, _ = cpu_ops.sparse_attention(q, k, v, kept_indices, kept_count)
    np.testing.assert_allclose(out, v.repeat_interleave(4, dim=1).numpy(), atol=1e-6)  # softmax over one key


def test_zero_count_gives_zero_rows(cpu_ops):
    q, k, v, _ = _case(5, 1, 2, 2, 12, 8, 1.0, False)
    out, k_compact, v_compact = cpu_ops.sparse_attention(q, k, v, np.full((1, 12), -1), np.zeros(1))
    assert not out.any() and not k_compact.any() and not v_compact.any()


@pytest.mark.parametrize("probes, message", [
    ([0, 2, 1, 9], "probes"),  # not ascending
    ([0, 3, 8], "probes"),     # last != n - 1
    ([-1, 9], "probes"),       # out of range
])
def test_bad_probes_are_rejected(cpu_ops, probes, message):
    q, k, _, _ = _case(1, 1, 1, 1, 10, 4, 1.0, False)
    with pytest.raises(ZipVLInputError, match=message):
        cpu_ops.token_select(q, k, np.array(probes), 0.9)


def test_bad_arguments_are_rejected(cpu_ops):
    q, k, v, probes = _case(1, 1, 2, 1, 10, 4, 1.0, False)
    with pytest.raises(ZipVLInputError, match="tau"):
        cpu_ops.token_select(q, k, probes, 1.5)
    with pytest.raises(ZipVLInputError, match="multiple|disagree|shape"):
        cpu_ops.token_select(q[:, :1], k, probes, 0.9)  # H = 1 < H_kv = 2
    with pytest.raises(ZipVLInputError, match="kept_indices"):
        cpu_ops.sparse_attention(q, k, v, np.array([[3, 1] + [-1] * 8]), np.array([2]))  # not ascending
