# SPDX-License-Identifier: Apache-2.0
"""ONNX Runtime kernels for the zipvl plugin nodes, through onnxruntime-extensions' Python custom ops.

Three quirks of onnxruntime-extensions 0.15.2 (with ORT 1.24-1.32) shape this module:

- **Domain.** Every Python op lives in one domain, ``ai.onnx.contrib``: ``@onnx_op`` ignores a ``domain``
  argument (``Opdef.create`` never reads it; ``default_opset_domain()`` is fixed in the compiled library), and ORT
  rejects ``zipvl::ZipVLTokenSelect`` with "is not a registered function/op". The ORT-runnable copy of a
  plugin-lowered graph therefore uses ``ai.onnx.contrib``; :func:`to_ort_domain` rewrites it. The TensorRT graph
  keeps ``zipvl``, which TensorRT's ONNX parser reads as the plugin namespace.
- **Float attributes.** FLOAT attributes reach Python through ``std::to_string`` (6 decimals: 1/sqrt(128)
  arrives as 0.088388). :func:`to_ort_domain` therefore also writes each FLOAT attribute's exact fp32 bit
  pattern as an INT attribute (``tau_fp32_bits``, ``scaling_fp32_bits``; INTs pass exactly) and the ops read
  those, so ORT computes with the very values the TensorRT plugin gets. Attributes an op does not declare
  (``tau``, ``scaling``, ``plugin_version``, ``plugin_namespace``) are ignored by ORT; declared ones are required,
  so always go through :func:`to_ort_domain` (or :func:`inference_session`).
- **Exceptions.** An exception raised inside a Python op aborts the process (``terminate called after throwing
  an instance of 'pybind11::error_already_set'``). The ops never raise: on bad input they log, record the error
  and return poisoned outputs (count -1, indices -1, NaN floats); the session :func:`inference_session` returns
  turns a recorded error into :class:`~zipvl.errors.ZipVLInputError`.

Only float32 tensors are accepted here (the CPU twin is fp32).
"""

from __future__ import annotations

import copy
import logging
import threading

import numpy as np

from ..errors import ZipVLInputError
from . import cpu_ops

PLUGIN_DOMAIN = "zipvl"
ORT_DOMAIN = "ai.onnx.contrib"
OP_TYPES = ("ZipVLTokenSelect", "ZipVLSparseAttention")
#: op type -> its FLOAT attributes (each mirrored as <name>_fp32_bits for ORT)
FLOAT_ATTRIBUTES = {"ZipVLTokenSelect": ("tau", "scaling"), "ZipVLSparseAttention": ("scaling",)}
BITS_SUFFIX = "_fp32_bits"

_registered = False
_errors: list[str] = []
_errors_lock = threading.Lock()
log = logging.getLogger(__name__)


def _record(op: str, exc: Exception) -> None:
    message = f"{op}: {exc}"
    log.error(message)
    with _errors_lock:
        _errors.append(message)


def _poisoned_select(query):
    shape = np.shape(query)  # whatever the (bad) input looks like, this must not raise
    b, n = (shape[0] if len(shape) > 0 else 1), (shape[2] if len(shape) > 2 else 1)
    return np.full((b, n), -1, np.int32), np.full((b,), -1, np.int32), np.full((b, n), np.nan, np.float32)


def _poisoned_attention(*tensors):
    return tuple(np.full(np.shape(t), np.nan, np.float32) for t in tensors)


def _from_bits(bits: int) -> np.float32:
    return np.array([bits], dtype=np.int64).astype(np.uint32).view(np.float32)[0]


def _to_bits(value: float) -> int:
    return int(np.array([value], dtype=np.float32).view(np.uint32)[0])


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

    f32, i32, i64 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int64
    ints = {name: i64 for name in ("num_heads", "num_kv_heads", "head_dim", "scaling" + BITS_SUFFIX)}

    @onnx_op(op_type="ZipVLTokenSelect", inputs=[f32, f32, i32], outputs=[i32, i32, f32],
             attrs={"tau" + BITS_SUFFIX: i64, **ints})
    def zipvl_token_select(query, key, probes, tau_fp32_bits, scaling_fp32_bits, num_heads, num_kv_heads,
                           head_dim):
        try:
            _check_heads("ZipVLTokenSelect", query, key, num_heads, num_kv_heads, head_dim)
            return cpu_ops.token_select(query, key, probes, _from_bits(tau_fp32_bits), _from_bits(scaling_fp32_bits))
        except Exception as exc:  # noqa: BLE001 - raising here would abort the process (module doc)
            _record("ZipVLTokenSelect", exc)
            return _poisoned_select(query)

    @onnx_op(op_type="ZipVLSparseAttention", inputs=[f32, f32, f32, i32, i32], outputs=[f32, f32, f32],
             attrs=ints)
    def zipvl_sparse_attention(query, key, value, kept_indices, kept_count, scaling_fp32_bits, num_heads,
                               num_kv_heads, head_dim):
        try:
            _check_heads("ZipVLSparseAttention", query, key, num_heads, num_kv_heads, head_dim)
            return cpu_ops.sparse_attention(query, key, value, kept_indices, kept_count,
                                            _from_bits(scaling_fp32_bits))
        except Exception as exc:  # noqa: BLE001 - raising here would abort the process (module doc)
            _record("ZipVLSparseAttention", exc)
            return _poisoned_attention(query, key, value)

    _registered = True


def _set_exact_floats(node, to_ort: bool) -> None:
    """Adds (for ORT) or removes the <name>_fp32_bits INT twins of the node's FLOAT attributes."""
    from onnx import AttributeProto, helper

    names = FLOAT_ATTRIBUTES[node.op_type]
    kept = [a for a in node.attribute if not a.name.endswith(BITS_SUFFIX)]
    if to_ort:
        values = {a.name: a.f for a in kept if a.name in names and a.type == AttributeProto.FLOAT}
        missing = [name for name in names if name not in values]
        if missing:
            raise ZipVLInputError(f"{node.op_type} node '{node.name}' lacks FLOAT attribute(s) {missing}")
        kept += [helper.make_attribute(name + BITS_SUFFIX, _to_bits(values[name])) for name in names]
    del node.attribute[:]
    node.attribute.extend(kept)


def _rewrite_graph(graph, domains: tuple[str, ...], dst: str) -> None:
    for node in graph.node:
        if node.domain in domains and node.op_type in OP_TYPES:
            node.domain = dst
            _set_exact_floats(node, to_ort=dst == ORT_DOMAIN)
        for attr in node.attribute:  # subgraphs of If / Loop / Scan
            if attr.HasField("g"):
                _rewrite_graph(attr.g, domains, dst)
            for sub in attr.graphs:
                _rewrite_graph(sub, domains, dst)


def _uses_domain(graph, domain: str) -> bool:
    for node in graph.node:
        if node.domain == domain:
            return True
        for attr in node.attribute:
            if (attr.HasField("g") and _uses_domain(attr.g, domain)) or any(
                    _uses_domain(g, domain) for g in attr.graphs):
                return True
    return False


def to_ort_domain(model, src: str = PLUGIN_DOMAIN, dst: str = ORT_DOMAIN):
    """Copy of ``model`` (onnx.ModelProto) with its zipvl plugin nodes in ``dst`` (ONNX Runtime's contrib domain).

    Nodes already in ``dst`` are normalised too (exact-float attributes refreshed). The ``src`` opset import is
    replaced by ``dst`` (version 1) when no node still uses it. ``to_ort_domain(m, src=ORT_DOMAIN,
    dst=PLUGIN_DOMAIN)`` restores the TensorRT form (and drops the ``*_fp32_bits`` attributes).
    """
    out = copy.deepcopy(model)
    _rewrite_graph(out.graph, (src, dst), dst)
    imports = {op.domain: op.version for op in out.opset_import}
    if src in imports and not _uses_domain(out.graph, src):
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


class CheckedSession:
    """An ``onnxruntime.InferenceSession`` whose ``run`` raises the zipvl ops' recorded errors."""

    def __init__(self, session):
        self.session = session

    def run(self, output_names, input_feed, run_options=None):
        """Same as ``InferenceSession.run``; raises :class:`ZipVLInputError` when a zipvl op rejected its input."""
        with _errors_lock:
            _errors.clear()
        outputs = self.session.run(output_names, input_feed, run_options)
        with _errors_lock:
            errors, _errors[:] = list(_errors), []
        if errors:
            raise ZipVLInputError("; ".join(errors))
        return outputs

    def __getattr__(self, name):
        return getattr(self.session, name)


def inference_session(model, **kwargs) -> CheckedSession:
    """ONNX Runtime session (CPU) for a plugin-lowered model (ModelProto, bytes or path); zipvl nodes rewritten."""
    import onnx
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    model = to_ort_domain(model)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return CheckedSession(ort.InferenceSession(model.SerializeToString(), session_options(), **kwargs))
