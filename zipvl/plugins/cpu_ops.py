# SPDX-License-Identifier: Apache-2.0
"""numpy wrappers of the CPU twin (``libzipvl_cpu.so``): the two plugin ops with the node contract, in fp32.

Both functions return exactly the plugin outputs, so they are what ONNX Runtime runs (:mod:`.ort_ops`) and the
oracle the CUDA kernels are checked against.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from ..errors import ZipVLInputError
from .library import bind_library

_F32P = ctypes.POINTER(ctypes.c_float)
_I32P = ctypes.POINTER(ctypes.c_int32)
_I32 = ctypes.c_int32


@functools.cache
def _lib() -> ctypes.CDLL:
    return bind_library("cpu", "zipvl_cpu_abi_version", {
        "zipvl_cpu_status_string": (ctypes.c_char_p, [_I32]),
        "zipvl_cpu_token_select_f32": (
            _I32, [_F32P, _F32P, _I32P] + [_I32] * 6 + [ctypes.c_float] * 2 + [_I32P, _I32P, _F32P]),
        "zipvl_cpu_sparse_attention_f32": (
            _I32, [_F32P, _F32P, _F32P, _I32P, _I32P] + [_I32] * 5 + [ctypes.c_float, _F32P, _F32P, _F32P]),
    })


def _ptr(a: np.ndarray, kind):
    return a.ctypes.data_as(kind)


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x), dtype=np.float32)


def _check(status: int, op: str) -> None:
    if status != 0:
        raise ZipVLInputError(f"{op}: {_lib().zipvl_cpu_status_string(status).decode()}")


def _heads(query: np.ndarray, key: np.ndarray) -> tuple[int, int, int, int, int]:
    if query.ndim != 4 or key.ndim != 4:
        raise ZipVLInputError(f"expected query (B,H,n,d) and key (B,H_kv,n,d), got {query.shape} and {key.shape}")
    b, h, n, d = query.shape
    if key.shape[0] != b or key.shape[2:] != (n, d):
        raise ZipVLInputError(f"query {query.shape} and key {key.shape} disagree on B, n or d")
    return b, h, key.shape[1], n, d


def token_select(query, key, probes, tau: float, scaling: float | None = None):
    """ZipVLTokenSelect on the CPU.

    Parameters
    ----------
    query : (B, H, n, d) array-like, cast to float32
    key : (B, H_kv, n, d) array-like
    probes : (m,) or (B, m) ascending integer positions ending at n - 1
    tau : retention threshold in (0, 1] (used as float32, like the node's FLOAT attribute)
    scaling : softmax scale, default 1 / sqrt(d)

    Returns
    -------
    kept_indices (B, n) int32, kept_count (B,) int32, mass (B, n) float32
    """
    q, k = _f32(query), _f32(key)
    b, h, h_kv, n, d = _heads(q, k)
    p = np.asarray(probes)
    p = np.ascontiguousarray(np.broadcast_to(p, (b, p.shape[-1])) if p.ndim == 1 else p, dtype=np.int32)
    if p.ndim != 2 or p.shape[0] != b:
        raise ZipVLInputError(f"probes must be (m,) or (B, m) with B={b}, got {np.asarray(probes).shape}")
    scale = float(d**-0.5 if scaling is None else scaling)
    kept = np.empty((b, n), np.int32)
    count = np.empty((b,), np.int32)
    mass = np.empty((b, n), np.float32)
    status = _lib().zipvl_cpu_token_select_f32(
        _ptr(q, _F32P), _ptr(k, _F32P), _ptr(p, _I32P), b, h, h_kv, n, d, p.shape[1], float(tau), scale,
        _ptr(kept, _I32P), _ptr(count, _I32P), _ptr(mass, _F32P))
    _check(status, "ZipVLTokenSelect")
    return kept, count, mass


def sparse_attention(query, key, value, kept_indices, kept_count, scaling: float | None = None):
    """ZipVLSparseAttention on the CPU.

    Parameters
    ----------
    query : (B, H, n, d); key, value : (B, H_kv, n, d) array-like, cast to float32
    kept_indices : (B, n) int, ascending kept positions (first kept_count[b] valid)
    kept_count : (B,) int

    Returns
    -------
    attn_out (B, H, n, d), key_compact (B, H_kv, n, d), value_compact (B, H_kv, n, d), all float32
    """
    q, k, v = _f32(query), _f32(key), _f32(value)
    b, h, h_kv, n, d = _heads(q, k)
    if v.shape != k.shape:
        raise ZipVLInputError(f"value {v.shape} must have key's shape {k.shape}")
    idx = np.ascontiguousarray(kept_indices, dtype=np.int32)
    cnt = np.ascontiguousarray(kept_count, dtype=np.int32)
    if idx.shape != (b, n) or cnt.shape != (b,):
        raise ZipVLInputError(f"kept_indices must be {(b, n)} and kept_count {(b,)}, got {idx.shape}, {cnt.shape}")
    scale = float(d**-0.5 if scaling is None else scaling)
    out = np.empty_like(q)
    k_out = np.empty_like(k)
    v_out = np.empty_like(v)
    status = _lib().zipvl_cpu_sparse_attention_f32(
        _ptr(q, _F32P), _ptr(k, _F32P), _ptr(v, _F32P), _ptr(idx, _I32P), _ptr(cnt, _I32P), b, h, h_kv, n, d,
        scale, _ptr(out, _F32P), _ptr(k_out, _F32P), _ptr(v_out, _F32P))
    _check(status, "ZipVLSparseAttention")
    return out, k_out, v_out
