# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the plugin tests: native libraries built once per session, and the selection comparison."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from zipvl.reference.selection import adaptive_count, top_by_score, visible_probe_counts


@pytest.fixture(scope="session")
def cpu_library():
    """libzipvl_cpu.so, built with CMake + g++ into plugins/build (or $ZIPVL_PLUGIN_DIR)."""
    if shutil.which("cmake") is None or not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler / cmake to build the CPU twin")
    from zipvl.plugins.library import build_libraries

    return build_libraries(("cpu",))["cpu"]


def _tensorrt_headers_available() -> bool:
    from zipvl.plugins.library import tensorrt_include_dir

    folder = tensorrt_include_dir()
    return folder is not None and (folder / "NvInferRuntime.h").is_file()


@pytest.fixture(scope="session")
def cuda_libraries():
    """libzipvl_kernels.so and libzipvl_plugins.so, built with nvcc against the TensorRT headers (no GPU needed)."""
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        pytest.skip("nvcc / cmake not available")
    if not _tensorrt_headers_available():
        pytest.skip("no TensorRT headers: pip install kernel-lens==2.0.1 (zipvl[plugins]) or set TENSORRT_INCLUDE_DIR")
    from zipvl.plugins.library import build_libraries

    return build_libraries(("kernels", "plugins"))


def _kept_from_indices(kept_indices, kept_count, n) -> torch.Tensor:
    kept_indices = torch.as_tensor(np.asarray(kept_indices)).long().cpu()
    kept_count = torch.as_tensor(np.asarray(kept_count)).long().cpu()
    mask = torch.zeros(kept_indices.shape[0], n, dtype=torch.bool)
    for b in range(kept_indices.shape[0]):
        mask[b, kept_indices[b, : kept_count[b]]] = True
    return mask


def check_layout(kept_indices, kept_count) -> None:
    """kept_indices: first count[b] entries strictly ascending in [0, n), the rest -1."""
    idx = np.asarray(kept_indices)
    cnt = np.asarray(kept_count)
    n = idx.shape[1]
    for b in range(idx.shape[0]):
        c = int(cnt[b])
        assert 1 <= c <= n, f"row {b}: count {c} outside [1, {n}]"
        head = idx[b, :c]
        assert (head >= 0).all() and (head < n).all() and (np.diff(head) > 0).all(), f"row {b}: {head}"
        assert (idx[b, c:] == -1).all(), f"row {b}: padding is not -1"


def check_selection(kept_indices, kept_count, mass, reference, probes, num_heads: int, tau: float,
                    mass_rtol: float = 1e-5, tie_rtol: float = 1e-5) -> None:
    """Compares an op's (kept_indices, kept_count, mass) with ``zipvl.select_tokens``'s Selection.

    1. mass matches to ``mass_rtol`` (of the total H*m);
    2. count and kept set equal the reference formulas applied to the op's own mass, exactly (fp64 count,
       ties to the lower position) - this isolates the sort/count/tie logic from fp32 rounding of the mass;
    3. count and kept set equal the reference's, unless the reference itself sits on a near-tie within
       ``tie_rtol`` (the threshold within rounding of a cumulative sum, or equal boundary scores), where fp32
       summation order may legitimately decide either way.
    """
    mass = torch.as_tensor(np.asarray(mass)).float().cpu()
    count = torch.as_tensor(np.asarray(kept_count)).long().cpu()
    b, n = mass.shape
    probes = torch.as_tensor(np.asarray(probes)).long().cpu()
    probes = probes.expand(b, -1) if probes.dim() == 1 else probes
    total = float(num_heads * probes.shape[-1])
    check_layout(kept_indices, kept_count)
    kept = _kept_from_indices(kept_indices, kept_count, n)

    ref_mass = reference.mass.float().cpu()
    # Relative per key, with an absolute floor at the rtol of the average mass (keys with ~no mass).
    assert torch.allclose(mass, ref_mass, rtol=mass_rtol, atol=mass_rtol * total / n), (
        f"mass differs by {(mass - ref_mass).abs().max().item():.3g} (total {total})")

    own_count = adaptive_count(mass, tau, total)
    own_score = mass / visible_probe_counts(probes, n, num_heads).to(mass.dtype)
    assert torch.equal(count, own_count), f"count {count.tolist()} != formula on own mass {own_count.tolist()}"
    assert torch.equal(kept, top_by_score(own_score, own_count)), "kept set != top scores of own mass"

    ref_count = reference.count.long().cpu()
    ref_kept = reference.kept.cpu()
    for row in range(b):
        if int(count[row]) != int(ref_count[row]):
            cumulative = torch.sort(ref_mass[row].double(), descending=True).values.cumsum(0)
            gap = (cumulative - tau * total).abs().min().item()
            assert gap <= tie_rtol * total, (
                f"row {row}: count {int(count[row])} != reference {int(ref_count[row])} without a near-tie "
                f"(closest cumulative sum {gap:.3g} from the threshold)")
        elif not torch.equal(kept[row], ref_kept[row]):
            score = reference.score[row].float().cpu()
            p = int(ref_count[row])
            ordered = torch.sort(score, descending=True).values
            boundary = (ordered[p - 1] - ordered[p]).abs().item() if p < n else 0.0
            differing = (kept[row] ^ ref_kept[row]).nonzero().squeeze(-1)
            spread = (score[differing] - ordered[p - 1]).abs().max().item()
            scale = ordered[0].abs().item()
            assert boundary <= tie_rtol * scale and spread <= tie_rtol * scale, (
                f"row {row}: kept sets differ at {differing.tolist()} without a near-tie")


@pytest.fixture(scope="session")
def selection_checker():
    """The :func:`check_selection` function."""
    return check_selection


@pytest.fixture(scope="session")
def layout_checker():
    """The :func:`check_layout` function."""
    return check_layout
