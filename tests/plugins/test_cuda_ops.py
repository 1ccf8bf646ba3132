# SPDX-License-Identifier: Apache-2.0
"""The CUDA kernels (libzipvl_kernels.so through zipvl.plugins.cuda_ops) against the PyTorch reference.

GPU only: skipped without a CUDA device. Selection: same mass (fp32 accumulation in both), count and kept set
exactly the reference formulas on the kernel's own mass, and the reference's kept set unless the reference sits on
a fp32 near-tie (see conftest.check_selection). Attention: within the dtype's tolerance; compacted K/V exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zipvl

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

LENGTHS = [1, 100, 1000, 4096, 32768]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATTENTION_TOL = {torch.float32: 2e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
B, H, H_KV, D = 4, 8, 2, 64


@pytest.fixture(scope="module", autouse=True)
def _exact_fp32_matmul():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference's probe scores must be true fp32
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.fixture(scope="module")
def cuda_ops(cuda_libraries):
    from zipvl.plugins import cuda_ops

    return cuda_ops


def _inputs(n, dtype, seed=0, sharpness=2.0):
    gen = torch.Generator(device="cuda").manual_seed(seed + n)
    q = (torch.randn(B, H, n, D, device="cuda", generator=gen) * sharpness).to(dtype)
    k = torch.randn(B, H_KV, n, D, device="cuda", generator=gen).to(dtype)
    v = torch.randn(B, H_KV, n, D, device="cuda", generator=gen).to(dtype)
    return q, k, v


def _tau(x=0.95):
    return float(np.float32(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", LENGTHS)
def test_token_select_matches_reference(cuda_ops, selection_checker, n, dtype):
    q, k, _ = _inputs(n, dtype)
    probes = zipvl.probe_positions(n).cuda()
    tau = _tau()
    kept_indices, kept_count, mass = cuda_ops.token_select(q, k, probes, tau)
    reference = zipvl.select_tokens(q, k, probes, tau)
    selection_checker(kept_indices.cpu(), kept_count.cpu(), mass.cpu(), reference, probes.cpu(), H, tau)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", LENGTHS)
def test_sparse_attention_matches_reference(cuda_ops, n, dtype):
    q, k, v = _inputs(n, dtype, seed=1)
    selection = zipvl.select_tokens(q, k, zipvl.probe_positions(n).cuda(), _tau(0.9))
    kept_indices = selection.indices().to(torch.int32)
    kept_count = selection.count.to(torch.int32)
    out, k_compact, v_compact = cuda_ops.sparse_attention(q, k, v, kept_indices, kept_count)
    expected = zipvl.sparse_attention(q, k, v, selection.kept)
    tol = ATTENTION_TOL[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)
    assert not out[~selection.kept[:, None, :, None].expand_as(out)].any()  # zero rows outside T
    (k_ref, v_ref), valid = zipvl.compact([k, v], selection.kept)
    p_max = k_ref.shape[2]
    mask = valid[:, None, :, None]
    assert torch.equal(k_compact[:, :, :p_max] * mask, k_ref * mask)
    assert torch.equal(v_compact[:, :, :p_max] * mask, v_ref * mask)
    for b, c in enumerate(kept_count.tolist()):
        assert not k_compact[b, :, c:].any() and not v_compact[b, :, c:].any()


def test_per_sequence_probes_and_batch_counts(cuda_ops, selection_checker):
    n = 777
    q, k, _ = _inputs(n, torch.float32, seed=2)
    gen = torch.Generator().manual_seed(3)
    probes = torch.stack([torch.cat([torch.randperm(n - 1, generator=gen)[:95].sort().values, torch.tensor([n - 1])])
                          for _ in range(B)]).cuda()
    tau = _tau(0.9)
    kept_indices, kept_count, mass = cuda_ops.token_select(q, k, probes, tau)
    reference = zipvl.select_tokens(q, k, probes, tau)
    selection_checker(kept_indices.cpu(), kept_count.cpu(), mass.cpu(), reference, probes.cpu(), H, tau)


def test_tau_one_is_dense(cuda_ops):
    q, k, v = _inputs(300, torch.float16, seed=4)
    kept_indices, kept_count, _ = cuda_ops.token_select(q, k, zipvl.probe_positions(300).cuda(), 1.0)
    assert (kept_count == 300).all() and torch.equal(kept_indices[0].cpu(), torch.arange(300, dtype=torch.int32))
    out, _, _ = cuda_ops.sparse_attention(q, k, v, kept_indices, kept_count)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, dense, atol=5e-3, rtol=5e-3)


def test_results_are_deterministic(cuda_ops):
    q, k, _ = _inputs(4096, torch.bfloat16, seed=5)
    probes = zipvl.probe_positions(4096).cuda()
    first = cuda_ops.token_select(q, k, probes, _tau())
    second = cuda_ops.token_select(q, k, probes, _tau())
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # no atomics in the mass


def test_matches_cpu_twin(cuda_ops, cpu_library):
    from zipvl.plugins import cpu_ops

    q, k, v = _inputs(200, torch.float32, seed=6)
    probes = zipvl.probe_positions(200)
    gpu = cuda_ops.token_select(q, k, probes.cuda(), _tau(0.9))
    cpu = cpu_ops.token_select(q.cpu(), k.cpu(), probes, _tau(0.9))
    np.testing.assert_allclose(gpu[2].cpu().numpy(), cpu[2], rtol=1e-5, atol=1e-6)
    kept_indices, kept_count = torch.from_numpy(cpu[0]).cuda(), torch.from_numpy(cpu[1]).cuda()
    out_gpu = cuda_ops.sparse_attention(q, k, v, kept_indices, kept_count)[0]
    out_cpu = cpu_ops.sparse_attention(q.cpu(), k.cpu(), v.cpu(), cpu[0], cpu[1])[0]
    np.testing.assert_allclose(out_gpu.cpu().numpy(), out_cpu, atol=1e-4, rtol=1e-4)


def test_rejects_bad_input(cuda_ops):
    q, k, _ = _inputs(64, torch.float32)
    with pytest.raises(zipvl.ZipVLInputError, match="tau"):
        cuda_ops.token_select(q, k, zipvl.probe_positions(64).cuda(), 1.5)
    with pytest.raises(zipvl.ZipVLInputError, match="CUDA tensors"):
        cuda_ops.token_select(q.cpu(), k.cpu(), zipvl.probe_positions(64), 0.9)
    with pytest.raises(zipvl.ZipVLInputError, match="head_dim|unsupported"):
        big = torch.zeros(1, 1, 4, 512, device="cuda")
        cuda_ops.token_select(big, big, torch.arange(4, device="cuda"), 0.9)
