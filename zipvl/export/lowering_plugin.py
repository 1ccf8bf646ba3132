# SPDX-License-Identifier: Apache-2.0
"""``--ops plugin``: ``zipvl::prefill_attention`` as two custom-domain nodes, the TensorRT plugins' contract.

``zipvl::ZipVLTokenSelect(query, key, probes) -> (kept_indices, kept_count, mass)`` and
``zipvl::ZipVLSparseAttention(query, key, value, kept_indices, kept_count) -> (attn_out, key_compact,
value_compact)``, each with ``plugin_version="1"`` and ``plugin_namespace="zipvl"`` (what TensorRT's ONNX parser
matches). Every output has a fixed capacity (n) plus an explicit count: no data-dependent output shape.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema
from onnxscript import values

DOMAIN = "zipvl"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "zipvl"
ZIPVL = values.Opset(DOMAIN, 1)

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_A = OpSchema.AttrType


def _schema(name: str, doc: str, inputs, outputs, attrs) -> OpSchema:
    return OpSchema(
        name, DOMAIN, 1, doc=doc,
        inputs=[OpSchema.FormalParameter(n, t) for n, t in inputs],
        outputs=[OpSchema.FormalParameter(n, t) for n, t in outputs],
        type_constraints=[("T", _FLOATS, "attention dtype")],
        attributes=[OpSchema.Attribute(a, t, a) for a, t in attrs],
    )


_COMMON = [("scaling", _A.FLOAT), ("num_heads", _A.INT), ("num_kv_heads", _A.INT), ("head_dim", _A.INT),
           ("plugin_version", _A.STRING), ("plugin_namespace", _A.STRING)]

SCHEMAS = [
    _schema("ZipVLTokenSelect", "ZipVL token selection (method steps 1-5), fixed capacity n.",
            [("query", "T"), ("key", "T"), ("probes", "tensor(int32)")],
            [("kept_indices", "tensor(int32)"), ("kept_count", "tensor(int32)"), ("mass", "tensor(float)")],
            [("tau", _A.FLOAT)] + _COMMON),
    _schema("ZipVLSparseAttention", "Causal attention over the kept tokens; compacted K/V (method steps 6-7).",
            [("query", "T"), ("key", "T"), ("value", "T"), ("kept_indices", "tensor(int32)"),
             ("kept_count", "tensor(int32)")],
            [("attn_out", "T"), ("key_compact", "T"), ("value_compact", "T")],
            _COMMON),
]


def register_schemas() -> None:
    """Register the two node schemas with onnx (idempotent; the plugins package may have done it already)."""
    for schema in SCHEMAS:
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)


def plugin_prefill_attention(query, key, value, probes, tau: float, scaling: float, num_heads: int,
                             num_kv_heads: int, head_dim: int):
    """Plugin-node translation of :func:`zipvl.export.ops.prefill_attention` (any batch)."""
    common = {"scaling": float(scaling), "num_heads": int(num_heads), "num_kv_heads": int(num_kv_heads),
              "head_dim": int(head_dim), "plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}
    kept, count, _mass = ZIPVL.ZipVLTokenSelect(query, key, probes, tau=float(tau), **common)
    out, key_compact, value_compact = ZIPVL.ZipVLSparseAttention(query, key, value, kept, count, **common)
    return out, kept, count, key_compact, value_compact
