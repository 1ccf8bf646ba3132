# SPDX-License-Identifier: Apache-2.0
"""``--ops standard``: ``zipvl::prefill_attention`` decomposed into standard ONNX ops (opset 18), so any ONNX
runtime runs it with no extra library.

Traced (not scripted) so the translation can branch on the Python attributes (tau = 1 is exactly dense: no
cumulative sum whose rounding could drop a token). Batch is 1: the runtime prefills each prompt on its own. The kept
count p stays a tensor: ``TopK``'s k is an input, so the p x p attention block is data-dependent inside the graph
while every graph output keeps capacity n.
"""

from __future__ import annotations

import onnx
from onnxscript import opset18 as op

_NEG_INF = float("-inf")


def _i64(*values):
    return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.INT64, [len(values)], list(values)))


def _f32(value: float):
    return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.FLOAT, [], [float(value)]))


def _f64(value: float):
    return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.DOUBLE, [], [float(value)]))


def standard_prefill_attention(query, key, value, probes, tau: float, scaling: float, num_heads: int,
                               num_kv_heads: int, head_dim: int):
    """Standard-op translation of :func:`zipvl.export.ops.prefill_attention` (B = 1).

    query (1, H, n, d), key/value (1, H_kv, n, d), probes (1, m) int32 -> the op's five outputs.
    """
    h, h_kv, d = num_heads, num_kv_heads, head_dim
    g = h // h_kv
    zero, one = _i64(0), _i64(1)
    q = op.Squeeze(query, zero)  # (H, n, d)
    k = op.Squeeze(key, zero)  # (H_kv, n, d)
    v = op.Squeeze(value, zero)
    pr = op.Cast(op.Squeeze(probes, zero), to=onnx.TensorProto.INT64)  # (m,)
    n = op.Shape(k, start=1, end=2)  # (1,)
    m = op.Shape(pr)  # (1,)
    n_s = op.Squeeze(n, zero)
    pos = op.Range(op.Constant(value_int=0), n_s, op.Constant(value_int=1))  # (n,)

    # Steps 2-3: probe attention (H_kv, g, m, n) in fp32, GQA folded into the probe rows, summed to the mass.
    qp = op.Reshape(op.Cast(op.Gather(q, pr, axis=1), to=onnx.TensorProto.FLOAT), _i64(h_kv, g, -1, d))
    kt = op.Unsqueeze(op.Transpose(op.Cast(k, to=onnx.TensorProto.FLOAT), perm=[0, 2, 1]), one)  # (H_kv,1,d,n)
    scores = op.Mul(op.MatMul(qp, kt), _f32(scaling))
    visible = op.LessOrEqual(op.Unsqueeze(pos, zero), op.Unsqueeze(pr, one))  # (m, n): key j <= probe row r
    probs = op.Softmax(op.Where(visible, scores, _f32(_NEG_INF)), axis=-1)
    mass = op.ReduceSum(probs, _i64(0, 1, 2), keepdims=0)  # (n,)

    # Step 4: p = smallest count whose descending mass reaches tau * H * m (fp64 cumulative sum, as the reference).
    if tau >= 1.0:
        count = n
    else:
        desc, _desc_idx = op.TopK(mass, n, axis=-1, largest=1, sorted=1)
        cumulative = op.CumSum(op.Cast(desc, to=onnx.TensorProto.DOUBLE), op.Constant(value_int=0))
        total = op.Mul(op.Cast(m, to=onnx.TensorProto.DOUBLE), _f64(tau * h))
        below = op.ReduceSum(op.Cast(op.Less(cumulative, total), to=onnx.TensorProto.INT64), keepdims=1)
        count = op.Min(op.Add(below, one), n)  # (1,)

    # Step 5: normalised score a_j / c_j, c_j = H * #(probe rows r >= j); the p best, then ascending positions.
    seen = op.ReduceSum(op.Cast(op.GreaterOrEqual(op.Unsqueeze(pr, one), op.Unsqueeze(pos, zero)),
                                to=onnx.TensorProto.FLOAT), zero, keepdims=0)  # (n,)
    score = op.Div(mass, op.Mul(seen, _f32(h)))
    _top_val, top = op.TopK(score, count, axis=-1, largest=1, sorted=1)  # ties -> lower index (ONNX spec)
    idx, _idx_pos = op.TopK(top, count, axis=-1, largest=0, sorted=1)  # (p,) ascending

    # Step 6: causal attention over the gathered p tokens, GQA by broadcasting K over the group.
    qg = op.Reshape(op.Gather(q, idx, axis=1), _i64(h_kv, g, -1, d))  # (H_kv, g, p, d)
    kg = op.Gather(k, idx, axis=1)  # (H_kv, p, d)
    vg = op.Gather(v, idx, axis=1)
    att = op.Mul(op.MatMul(qg, op.Unsqueeze(op.Transpose(kg, perm=[0, 2, 1]), one)), _f32(scaling))
    p_s = op.Squeeze(count, zero)
    r = op.Range(op.Constant(value_int=0), p_s, op.Constant(value_int=1))
    causal = op.LessOrEqual(op.Unsqueeze(r, zero), op.Unsqueeze(r, one))  # (p, p): key <= query
    weights = op.Softmax(op.Where(causal, att, _f32(_NEG_INF)), axis=-1)
    o = op.Reshape(op.MatMul(weights, op.Unsqueeze(vg, one)), _i64(h, -1, d))  # (H, p, d)
    scatter_idx = op.Expand(op.Reshape(idx, _i64(1, -1, 1)), op.Shape(o))
    zeros = op.ConstantOfShape(op.Shape(q), value=onnx.helper.make_tensor("z", onnx.TensorProto.FLOAT, [1], [0.0]))
    out = op.ScatterElements(zeros, scatter_idx, o, axis=1)  # zero rows outside T

    # Step 7 outputs at capacity n: K[T]/V[T] first, zero after; indices padded with -1.
    rest = op.Sub(n, count)
    kv_pads = op.Concat(_i64(0, 0, 0, 0, 0, 0), rest, _i64(0), axis=0)  # (1, H_kv, p, d) -> (1, H_kv, n, d)
    key_compact = op.Pad(op.Unsqueeze(kg, zero), kv_pads, op.Constant(value_float=0.0))
    value_compact = op.Pad(op.Unsqueeze(vg, zero), kv_pads, op.Constant(value_float=0.0))
    idx_pads = op.Concat(_i64(0, 0, 0), rest, axis=0)
    kept = op.Pad(op.Unsqueeze(op.Cast(idx, to=onnx.TensorProto.INT32), zero), idx_pads, _i32_scalar(-1))
    kept_count = op.Cast(count, to=onnx.TensorProto.INT32)
    return op.Unsqueeze(out, zero), kept, kept_count, key_compact, value_compact


def _i32_scalar(value: int):
    return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.INT32, [], [int(value)]))
