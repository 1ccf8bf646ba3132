# SPDX-License-Identifier: Apache-2.0
"""The plugins' CUDA kernels on torch CUDA tensors, through ``libzipvl_kernels.so`` (ctypes, no TensorRT).

Same contract as the TensorRT nodes. Calls are asynchronous on the tensors' current torch stream; outputs are
allocated by torch (the token-select workspace too, from torch's caching allocator).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from ..errors import ZipVLInputError
from .library import bind_library

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_P = ctypes.c_void_p
_I32 = ctypes.c_int32


@functools.cache
def _lib() -> ctypes.CDLL:
    return bind_library("kernels", "zipvl_cuda_abi_version", {
        "zipvl_cuda_status_string": (ctypes.c_char_p, [_I32]),
        "zipvl_cuda_last_error": (ctypes.c_char_p, None),
        "zipvl_cuda_token_select_workspace_size": (ctypes.c_size_t, [_I32] * 4),
        "zipvl_cuda_token_select": (
            _I32, [_P, _P, _P] + [_I32] * 7 + [ctypes.c_float] * 2 + [_P, _P, _P, _P, ctypes.c_size_t, _I32, _P]),
        "zipvl_cuda_sparse_attention": (_I32, [_P] * 5 + [_I32] * 6 + [ctypes.c_float] + [_P] * 3 + [_I32, _P]),
    })


def _check(status: int, op: str) -> None:
    if status != 0:
        lib = _lib()
        msg = lib.zipvl_cuda_status_string(status).decode()
        if status == 6:  # ZIPVL_STATUS_CUDA
            msg += ": " + lib.zipvl_cuda_last_error().decode()
        raise ZipVLInputError(f"{op}: {msg}")


def _operands(query: torch.Tensor, key: torch.Tensor, *more: torch.Tensor):
    if not (query.is_cuda and key.is_cuda and all(t.is_cuda for t in more)):
        raise ZipVLInputError("cuda_ops needs CUDA tensors (use zipvl.plugins.cpu_ops on the CPU)")
    if query.dtype not in _DTYPES or key.dtype != query.dtype or any(t.dtype != query.dtype for t in more):
        raise ZipVLInputError(f"query/key/value must share one of {list(_DTYPES)}, got {query.dtype}, {key.dtype}")
    if query.dim() != 4 or key.dim() != 4:
        raise ZipVLInputError(f"expected query (B,H,n,d) and key (B,H_kv,n,d), got {tuple(query.shape)}, "
                              f"{tuple(key.shape)}")
    b, h, n, d = query.shape
    if key.shape[0] != b or key.shape[2:] != (n, d) or any(t.shape != key.shape for t in more):
        raise ZipVLInputError(f"query {tuple(query.shape)} and key {tuple(key.shape)} disagree on B, n or d")
    return query.contiguous(), key.contiguous(), [t.contiguous() for t in more], (b, h, key.shape[1], n, d)


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def token_select(query: torch.Tensor, key: torch.Tensor, probes: torch.Tensor, tau: float,
                 scaling: float | None = None):
    """ZipVLTokenSelect on the GPU.

    query (B,H,n,d), key (B,H_kv,n,d) fp32/fp16/bf16 CUDA tensors; probes (m,) or (B,m) ascending, ending at n-1.
    Returns kept_indices (B,n) int32 (ascending, then -1), kept_count (B,) int32, mass (B,n) float32.
    """
    q, k, _, (b, h, h_kv, n, d) = _operands(query, key)
    p = probes.to(device=q.device, dtype=torch.int32)
    p = (p.expand(b, -1) if p.dim() == 1 else p).contiguous()
    if p.dim() != 2 or p.shape[0] != b:
        raise ZipVLInputError(f"probes must be (m,) or (B, m) with B={b}, got {tuple(probes.shape)}")
    m = p.shape[1]
    kept = torch.empty(b, n, dtype=torch.int32, device=q.device)
    count = torch.empty(b, dtype=torch.int32, device=q.device)
    mass = torch.empty(b, n, dtype=torch.float32, device=q.device)
    lib = _lib()
    ws_bytes = lib.zipvl_cuda_token_select_workspace_size(b, h, n, m)
    workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=q.device)
    scale = d**-0.5 if scaling is None else float(scaling)
    status = lib.zipvl_cuda_token_select(
        q.data_ptr(), k.data_ptr(), p.data_ptr(), _DTYPES[q.dtype], b, h, h_kv, n, d, m, float(tau), scale,
        kept.data_ptr(), count.data_ptr(), mass.data_ptr(), workspace.data_ptr(), ws_bytes, q.device.index,
        _stream(q.device))
    _check(status, "ZipVLTokenSelect")
    return kept, count, mass


def sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kept_indices: torch.Tensor,
                     kept_count: torch.Tensor, scaling: float | None = None):
    """ZipVLSparseAttention on the GPU.

    Returns attn_out (B,H,n,d) (zero rows outside the kept set), key_compact / value_compact (B,H_kv,n,d)
    (kept rows first, ascending, then zeros), all in query's dtype.
    """
    q, k, (v,), (b, h, h_kv, n, d) = _operands(query, key, value)
    idx = kept_indices.to(device=q.device, dtype=torch.int32).contiguous()
    cnt = kept_count.to(device=q.device, dtype=torch.int32).contiguous()
    if idx.shape != (b, n) or cnt.shape != (b,):
        raise ZipVLInputError(f"kept_indices must be {(b, n)} and kept_count {(b,)}, got {tuple(idx.shape)}, "
                              f"{tuple(cnt.shape)}")
    out = torch.empty_like(q)
    k_out = torch.empty_like(k)
    v_out = torch.empty_like(v)
    scale = d**-0.5 if scaling is None else float(scaling)
    status = _lib().zipvl_cuda_sparse_attention(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), idx.data_ptr(), cnt.data_ptr(), _DTYPES[q.dtype], b, h, h_kv, n,
        d, scale, out.data_ptr(), k_out.data_ptr(), v_out.data_ptr(), q.device.index, _stream(q.device))
    _check(status, "ZipVLSparseAttention")
    return out, k_out, v_out


def kept_mask(kept_indices: torch.Tensor, kept_count: torch.Tensor) -> torch.Tensor:
    """(B, n) bool kept mask from the plugin layout (ascending indices, first kept_count valid)."""
    b, n = kept_indices.shape
    valid = torch.arange(n, device=kept_indices.device)[None, :] < kept_count[:, None]
    mask = torch.zeros(b, n, dtype=torch.bool, device=kept_indices.device)
    rows = torch.arange(b, device=kept_indices.device)[:, None].expand(b, n)
    mask[rows[valid], kept_indices[valid].long()] = True
    return mask
