# SPDX-License-Identifier: Apache-2.0
"""ONNX Runtime kernels for the zipvl plugin nodes, through onnxruntime-extensions' Python custom ops.

onnxruntime-extensions 0.15 registers every Python op in one domain, ``ai.onnx.contrib`` (its ``@onnx_op``
ignores a ``domain`` argument: ``Opdef.create`` never reads it, and ``default_opset_domain()`` is fixed in the
compiled library). ONNX Runtime then rejects ``zipvl::ZipVLTokenSelect`` with "is not a registered
function/op". So the ORT-runnable copy of a plugin-lowered graph must use domain ``ai.onnx.contrib``:
:func:`to_ort_domain` rewrites the ``zipvl`` nodes (and the opset import); the TensorRT graph keeps ``zipvl``,
which TensorRT's ONNX parser reads as the plugin namespace. Attributes the op does not declare
(``plugin_version``, ``plugin_namespace``) are ignored by ONNX Runtime.

Only float32 tensors are accepted here (the CPU twin is fp32).
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import ZipVLInputError
from . import cpu_ops

PLUGIN_DOMAIN = "zipvl"
ORT_DOMAIN = "ai.onnx.contrib"
OP_TYPES = ("ZipVLTokenSelect", "ZipVLSparseAttention")

_registered = False


def _check_heads(op: str, query: np.ndarray, key: np.ndarray, num_heads: int, num_kv_heads: int, head_dim: int):
    if query.ndim != 4 or key.ndim != 4:
        raise ZipVLInputError(f"{op}: query and key must be 4-D, got {query.shape} and {key.shape}")
    if (query.shape[1], key.shape[1], query.shape[3]) != (num_heads, num_kv_heads, head_dim):
        raise ZipVLInputError(
            f"{op}: attributes num_heads={num_heads}, num_kv_heads={num_kv_heads}, head_dim={head_dim} disagree "
            f"with query {query.shape} / key {key.shape}"
        )


def register() -> None:
    """Register both ops with onnxruntime-extensions (once per process)."""
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    f32, i32 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32
    ints = {name: PyCustomOpDef.dt_int64 for name in ("num_heads", "num_kv_heads", "head_dim")}

    @onnx_op(op_type="ZipVLTokenSelect", inputs=[f32, f32, i32], outputs=[i32, i32, f32],
             attrs={"tau": f32, "scaling": f32, **ints})
    def zipvl_token_select(query, key, probes, tau, scaling, num_heads, num_kv_heads, head_dim):
        _check_heads("ZipVLTokenSelect", query, key, num_heads, num_kv_heads, head_dim)
        return cpu_ops.token_select(query, key, probes, np.float32(tau), np.float32(scaling))

    @onnx_op(op_type="ZipVLSparseAttention", inputs=[f32, f32, f32, i32, i32], outputs=[f32, f32, f32],
             attrs={"scaling": f32, **ints})
    def zipvl_sparse_attention(query, key, value, kept_indices, kept_count, scaling, num_heads, num_kv_heads,
                               head_dim):
        _check_heads("ZipVLSparseAttention", query, key, num_heads, num_kv_heads, head_dim)
        return cpu_ops.sparse_attention(query, key, value, kept_indices, kept_count, np.float32(scaling))

    _registered = True


def _rewrite_graph(graph, src: str, dst: str) -> int:
    changed = 0
    for node in graph.node:
        if node.domain == src and node.op_type in OP_TYPES:
            node.domain = dst
            changed += 1
        for attr in node.attribute:  # subgraphs of If / Loop / Scan
            if attr.HasField("g"):
                changed += _rewrite_graph(attr.g, src, dst)
            for sub in attr.graphs:
                changed += _rewrite_graph(sub, src, dst)
    return changed


def to_ort_domain(model, src: str = PLUGIN_DOMAIN, dst: str = ORT_DOMAIN):
    """Copy of ``model`` (onnx.ModelProto) whose zipvl plugin nodes are in ``dst`` (ONNX Runtime's contrib domain).

    The ``src`` opset import is replaced by ``dst`` (version 1) when no other node still uses it.
    :func:`to_ort_domain` with ``src``/``dst`` swapped restores the TensorRT form.
    """
    out = copy.deepcopy(model)
    _rewrite_graph(out.graph, src, dst)

    def used(graph) -> bool:
        for node in graph.node:
            if node.domain == src:
                return True
            for attr in node.attribute:
                if (attr.HasField("g") and used(attr.g)) or any(used(g) for g in attr.graphs):
                    return True
        return False

    imports = {op.domain: op.version for op in out.opset_import}
    if not used(out.graph) and src in imports:
        del imports[src]
    imports.setdefault(dst, 1)
    del out.opset_import[:]
    for domain, version in imports.items():
        entry = out.opset_import.add()
        entry.domain, entry.version = domain, version
    return out


def session_options():
    """``onnxruntime.SessionOptions`` with the extensions library (and these ops) registered."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    register()
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options


def inference_session(model, **kwargs):
    """ONNX Runtime session (CPU) for a plugin-lowered model (ModelProto, bytes or path); zipvl nodes rewritten."""
    import onnx
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    model = to_ort_domain(model)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(model.SerializeToString(), session_options(), **kwargs)
