# SPDX-License-Identifier: Apache-2.0
"""ONNX Runtime implementation of the two plugin nodes, for engines built with ``--ops plugin``.

Preferred: ``zipvl.plugins.ort_ops`` (the plugins package's CPU twin). When it is not importable, a fallback here
registers onnxruntime-extensions Python ops whose bodies are the PyTorch reference. Either way extensions' Python
ops live in the "ai.onnx.contrib" domain, so the graph's "zipvl" nodes are renamed in memory before the session
is created (the engine files are never modified).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import torch

log = logging.getLogger(__name__)

ORT_DOMAIN = "ai.onnx.contrib"
_FALLBACK_REGISTERED = False


def _theirs():
    try:
        from ..plugins import ort_ops
    except ImportError:
        return None
    return ort_ops if all(hasattr(ort_ops, n) for n in ("register", "to_ort_domain", "CheckedSession")) else None


def implementation() -> str:
    """Which implementation runs the plugin nodes in this process."""
    return "zipvl.plugins.ort_ops" if _theirs() is not None else "zipvl.runtime.ort_plugins (reference fallback)"


def register(session_options) -> str:
    """Register the plugin ops' implementation on ``session_options``; returns which implementation is used."""
    from onnxruntime_extensions import get_library_path

    ort_ops = _theirs()
    if ort_ops is not None:
        ort_ops.register()
    else:
        _register_fallback()
    session_options.register_custom_ops_library(get_library_path())
    return implementation()


def to_ort_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its "zipvl" nodes moved to extensions' domain (the engine file is never modified)."""
    ort_ops = _theirs()
    if ort_ops is not None:
        return ort_ops.to_ort_domain(model)
    for node in model.graph.node:
        if node.domain == "zipvl":
            node.domain = ORT_DOMAIN
    for entry in model.opset_import:
        if entry.domain == "zipvl":
            entry.domain = ORT_DOMAIN
    return model


def wrap(session):
    """The plugins package's CheckedSession turns errors its ops record into ZipVLInputError (an exception
    raised inside an extensions op would abort the process)."""
    ort_ops = _theirs()
    return ort_ops.CheckedSession(session) if ort_ops is not None else session


def _scaling(attrs: dict) -> float:
    # Extensions hand float attributes over with ~6 significant digits; snap to the exact 1/sqrt(d) it encodes.
    s, d = float(attrs["scaling"]), int(attrs["head_dim"])
    return d**-0.5 if abs(s - d**-0.5) < 1e-5 else s


def _register_fallback() -> None:
    global _FALLBACK_REGISTERED
    if _FALLBACK_REGISTERED:
        return
    from onnxruntime_extensions import PyCustomOpDef as T
    from onnxruntime_extensions import onnx_op

    from ..reference.selection import select_tokens
    from ..reference.sparse import sparse_attention

    ints = {"num_heads": T.dt_int64, "num_kv_heads": T.dt_int64, "head_dim": T.dt_int64}

    @onnx_op(op_type="ZipVLTokenSelect", domain=ORT_DOMAIN, inputs=[T.dt_float, T.dt_float, T.dt_int32],
             outputs=[T.dt_int32, T.dt_int32, T.dt_float], attrs={"tau": T.dt_float, "scaling": T.dt_float, **ints})
    def token_select(query, key, probes, **attrs):
        tau = float(attrs["tau"])
        tau = 1.0 if tau > 1.0 - 1e-6 else tau
        sel = select_tokens(torch.from_numpy(query), torch.from_numpy(key), torch.from_numpy(probes).long(), tau,
                            _scaling(attrs))
        return sel.indices().to(torch.int32).numpy(), sel.count.to(torch.int32).numpy(), sel.mass.numpy()

    @onnx_op(op_type="ZipVLSparseAttention", domain=ORT_DOMAIN,
             inputs=[T.dt_float, T.dt_float, T.dt_float, T.dt_int32, T.dt_int32],
             outputs=[T.dt_float, T.dt_float, T.dt_float], attrs={"scaling": T.dt_float, **ints})
    def sparse(query, key, value, kept_indices, kept_count, **attrs):
        q, k, v = (torch.from_numpy(x) for x in (query, key, value))
        b, n = kept_indices.shape
        kept = torch.zeros(b, n, dtype=torch.bool)
        kc, vc = np.zeros_like(key), np.zeros_like(value)
        for r in range(b):
            idx = kept_indices[r, : int(kept_count[r])].astype(np.int64)
            kept[r, torch.from_numpy(idx)] = True
            kc[r, :, : len(idx)] = key[r][:, idx]
            vc[r, :, : len(idx)] = value[r][:, idx]
        out = sparse_attention(q, k, v, kept, _scaling(attrs))
        return out.numpy(), kc, vc

    _FALLBACK_REGISTERED = True
    log.info("zipvl.plugins.ort_ops not available: plugin nodes run on the PyTorch reference fallback")
