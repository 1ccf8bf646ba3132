# SPDX-License-Identifier: Apache-2.0
"""``--ops plugin``: the TensorRT lowering (opset 23). The selection is the ``zipvl::ZipVLTokenSelect`` plugin node,
every attention over keys is the ONNX ``Attention`` node, which TensorRT's ONNX parser maps to its fused
``IAttention`` layer (TensorRT 10.14 / TensorRT-RTX 1.7; ONNX Runtime runs it too).

``zipvl::ZipVLTokenSelect(query, key, probes) -> (kept_indices, kept_count, mass)`` with ``plugin_version="1"`` and
``plugin_namespace="zipvl"`` (what the parser matches). Its outputs have a fixed capacity (n) plus an explicit count,
and TensorRT cannot take a tensor shape from a plugin's count (a Slice to p fails the build: "convertExplicitDDS
PluginToImplicit" assertion), so the sparse attention runs at capacity n: Q/K/V gathered in kept order (padding
after), ``Attention(is_causal=1)`` - exact for the first p rows, which see only kept tokens - and the p rows
scattered back. The cost is n^2 FLOPs, fused (no n x n tensor). ``ZipVLSparseAttention`` (plugins/, p^2 work) stays
the documented fallback for that cost; its schema is registered here for graphs that use it.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema
from onnxscript import opset23 as op
from onnxscript import values

OPSET = 23  # ONNX Attention
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


def _i64(*values):
    return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.INT64, [len(values)], list(values)))


def plugin_prefill_attention(query, key, value, probes, tau: float, sparse: bool, scaling: float, num_heads: int,
                             num_kv_heads: int, head_dim: int, pool_kernel: int = 1, protect_first: int = 0,
                             protect_last: int = 0, head_max: bool = False, floor_ratio: float = 0.0,
                             evict_tau: float = 0.0, image_mask=None, per_kv_head: bool = False):
    """TensorRT translation of :func:`zipvl.export.ops.prefill_attention` (B = 1): ZipVLTokenSelect + Attention.
    The plugin implements the paper's rule: the variants are refused up front by zipvl-build."""
    if pool_kernel > 1 or protect_first or protect_last or head_max or floor_ratio or evict_tau > tau or (
            image_mask is not None) or per_kv_head:
        raise ValueError("ZipVLTokenSelect has no pooling / protected tokens / head max / floor / tau_evict "
                         "(zipvl-build checks this first)")
    zero, one = _i64(0), _i64(1)
    n = op.Shape(key, start=2, end=3)  # (1,)
    if tau >= 1.0:  # a dense layer: one fused causal attention, every token kept
        out, _pk, _pv, _qk = op.Attention(query, key, value, is_causal=1, scale=float(scaling))
        pos = op.Range(op.Constant(value_int=0), op.Squeeze(n, zero), op.Constant(value_int=1))
        kept = op.Unsqueeze(op.Cast(pos, to=onnx.TensorProto.INT32), zero)
        count = op.Cast(n, to=onnx.TensorProto.INT32)
        return out, kept, count, op.Identity(key), op.Identity(value), op.Identity(kept)
    common = {"scaling": float(scaling), "num_heads": int(num_heads), "num_kv_heads": int(num_kv_heads),
              "head_dim": int(head_dim), "plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}
    kept, count, _mass = ZIPVL.ZipVLTokenSelect(query, key, probes, tau=float(tau), **common)
    idx = op.Cast(op.Squeeze(kept, zero), to=onnx.TensorProto.INT64)  # (n,): p ascending positions, then -1
    valid = op.GreaterOrEqual(idx, zero)
    gathered = [op.Gather(x, op.Max(idx, zero), axis=2) for x in (query, key, value)]  # kept order, at capacity n
    keep = op.Unsqueeze(valid, _i64(0, 1, 3))  # (1, 1, n, 1)
    zero_f = op.Constant(value_float=0.0)
    if not sparse:  # dense prefill: every token over all n; the kept set only compacts the cache
        out, _pk, _pv, _qk = op.Attention(query, key, value, is_causal=1, scale=float(scaling))
        return (out, kept, count, op.Where(keep, gathered[1], zero_f), op.Where(keep, gathered[2], zero_f),
                op.Identity(kept))
    o, _pk, _pv, _qk = op.Attention(*gathered, is_causal=1, scale=float(scaling))  # rows < p: exact; rows >= p: discarded
    # Row r of o goes to position idx[r]; padding rows to a spare slot n, cut off afterwards.
    rows = op.Transpose(o, perm=[2, 0, 1, 3])  # (n, 1, H, d)
    spare = op.Concat(op.Add(n, one), _i64(1, int(num_heads), int(head_dim)), axis=0)
    zeros = op.ConstantOfShape(spare, value=onnx.helper.make_tensor("z", onnx.TensorProto.FLOAT, [1], [0.0]))
    scattered = op.ScatterND(zeros, op.Unsqueeze(op.Where(valid, idx, n), one), rows)
    out = op.Transpose(op.Slice(scattered, zero, n, zero), perm=[1, 2, 0, 3])  # (1, H, n, d)
    return (out, kept, count, op.Where(keep, gathered[1], zero_f), op.Where(keep, gathered[2], zero_f),
            op.Identity(kept))


def plugin_decode_attention(query, key, value, past_key, past_value, past_length, scaling: float, num_heads: int,
                            num_kv_heads: int, head_dim: int, per_kv_head: bool = False):
    """ONNX Attention translation of :func:`zipvl.export.ops.decode_attention`: the token's K/V written at slot
    past_length (``Where``, element-wise, so the runtime can bind present to the past buffer), then one Attention
    over the buffer with a (B, 1, 1, C) validity mask (slots <= past_length)."""
    if per_kv_head:
        raise ValueError("the plugin engine keeps one KV set per layer (zipvl-build checks this first)")
    zero = _i64(0)
    slots = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(past_key, start=2, end=3), zero),
                     op.Constant(value_int=1))  # (C,)
    length = op.Unsqueeze(op.Cast(past_length, to=onnx.TensorProto.INT64), _i64(1))  # (B, 1)
    at_new = op.Unsqueeze(op.Equal(op.Unsqueeze(slots, zero), length), _i64(1, 3))  # (B, 1, C, 1)
    present_key = op.Where(at_new, key, past_key)
    present_value = op.Where(at_new, value, past_value)
    visible = op.Unsqueeze(op.LessOrEqual(op.Unsqueeze(slots, zero), length), _i64(1, 2))  # (B, 1, 1, C)
    out, _pk, _pv, _qk = op.Attention(query, present_key, present_value, visible, scale=float(scaling))
    return out, present_key, present_value
