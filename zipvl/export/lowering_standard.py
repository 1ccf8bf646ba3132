# SPDX-License-Identifier: Apache-2.0
"""``--ops standard``: ``zipvl::prefill_attention`` and ``zipvl::decode_attention`` for ONNX Runtime: standard ONNX
ops (opset 18) for the selection, ``com.microsoft.GroupQueryAttention`` (ORT's fused, O(n)-memory GQA kernel) for
every attention over keys - a dense layer's causal attention, the causal attention over the p gathered tokens and the
decode step over the cache buffer. The probe attention (m x n rows) is the only decomposed softmax.

Traced (not scripted) so the translation can branch on the Python attributes (tau = 1 is exactly dense: no probe,
no cumulative sum whose rounding could drop a token). Prefill is batch 1 (the runtime prefills each prompt on its
own). The kept count p stays a tensor: ``TopK``'s k is an input, so the p-token attention is data-dependent inside
the graph while every graph output keeps capacity n.

GroupQueryAttention contract used (ORT contrib op, since version 1): query (B, S, H*d), key/value (B, S, H_kv*d)
after rotary embedding (``do_rotary`` = 0), past_key/past_value (B, H_kv, C, d) or omitted, seqlens_k (B,) int32 =
total length - 1 per row, total_sequence_length int32 scalar; causal; outputs (B, S, H*d) and present K/V. With a
past buffer of length C shared with present (the runtime binds both to one OrtValue), row b's new entries are
written at slots [seqlens_k[b] + 1 - S, seqlens_k[b]] in place and the rest of the buffer is neither read nor copied.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema
from onnxscript import opset18 as op
from onnxscript import values

MS_DOMAIN = "com.microsoft"
MSFT = values.Opset(MS_DOMAIN, 1)
_NEG_INF = float("-inf")
_INT32, _INT64, _FLOAT = onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT

# The exporter needs an onnx OpSchema to record a node; ORT's contrib schemas are not in onnx.defs.
_GQA_SCHEMA = OpSchema(
    "GroupQueryAttention", MS_DOMAIN, 1, doc="ONNX Runtime's fused grouped-query attention (subset used by zipvl).",
    inputs=[OpSchema.FormalParameter("query", "T"), OpSchema.FormalParameter("key", "T"),
            OpSchema.FormalParameter("value", "T"),
            OpSchema.FormalParameter("past_key", "T", param_option=OpSchema.FormalParameterOption.Optional),
            OpSchema.FormalParameter("past_value", "T", param_option=OpSchema.FormalParameterOption.Optional),
            OpSchema.FormalParameter("seqlens_k", "tensor(int32)"),
            OpSchema.FormalParameter("total_sequence_length", "tensor(int32)")],
    outputs=[OpSchema.FormalParameter("output", "T"), OpSchema.FormalParameter("present_key", "T"),
             OpSchema.FormalParameter("present_value", "T")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "attention dtype")],
    attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "query heads"),
                OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, "key/value heads"),
                OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale")],
)


def register_schemas() -> None:
    """Register the GroupQueryAttention schema with onnx for the exporter (idempotent)."""
    if not onnx.defs.has(_GQA_SCHEMA.name, MS_DOMAIN):
        onnx.defs.register_schema(_GQA_SCHEMA)


def _i64(*values):
    return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.INT64, [len(values)], list(values)))


def _f32(value: float):
    return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.FLOAT, [], [float(value)]))


def _f64(value: float):
    return op.Constant(value=onnx.helper.make_tensor("c", onnx.TensorProto.DOUBLE, [], [float(value)]))


def _rows(x, width: int):
    """(1, heads, n, d) -> (n, heads * d): one row per token, GroupQueryAttention's layout."""
    return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), _i64(-1, width))


def _heads(rows, heads: int, d: int):
    """(n, heads * d) -> (1, heads, n, d)."""
    return op.Transpose(op.Reshape(rows, _i64(1, -1, heads, d)), perm=[0, 2, 1, 3])


def _causal_gqa(q_rows, k_rows, v_rows, length, h: int, h_kv: int, scaling: float):
    """Fused causal attention of ``length`` (1,) tokens in row layout (no past): (length, H*d)."""
    zero = _i64(0)
    seqlens = op.Cast(op.Sub(length, _i64(1)), to=_INT32)  # (1,): total length - 1
    total = op.Cast(op.Squeeze(length, zero), to=_INT32)  # scalar
    out, _present_k, _present_v = MSFT.GroupQueryAttention(
        op.Unsqueeze(q_rows, zero), op.Unsqueeze(k_rows, zero), op.Unsqueeze(v_rows, zero), None, None, seqlens,
        total, num_heads=h, kv_num_heads=h_kv, scale=float(scaling))
    return op.Squeeze(out, zero)


def standard_prefill_attention(query, key, value, probes, tau: float, sparse: bool, scaling: float, num_heads: int,
                               num_kv_heads: int, head_dim: int, pool_kernel: int = 1, protect_first: int = 0,
                               protect_last: int = 0, head_max: bool = False, floor_ratio: float = 0.0,
                               evict_tau: float = 0.0, image_mask=None, per_kv_head: bool = False):
    """Standard-op + GroupQueryAttention translation of :func:`zipvl.export.ops.prefill_attention` (B = 1).

    query (1, H, n, d), key/value (1, H_kv, n, d), probes (1, m) int32 -> the op's six outputs.
    ``pool_kernel`` > 1: MaxPool of mass and score before the tau rule; ``protect_first`` / ``protect_last`` and,
    with ``image_mask`` (1, n) bool, every text token: always-kept tokens, the tau rule on the rest
    (:func:`zipvl.reference.variants.keep_set`); ``head_max``: the mass is the max over query heads;
    ``floor_ratio`` > 0: at least ceil(floor_ratio * n) tokens kept; ``evict_tau`` > tau: a second, larger set from
    the same mass and score for the cache (the sparse attention keeps the tau set); ``per_kv_head``: one set per KV
    head from its own query group's probe rows (dense prefill only), outputs (1, H_kv, n) / (1, H_kv).
    """
    h, h_kv, d = num_heads, num_kv_heads, head_dim
    g = h // h_kv
    zero, one = _i64(0), _i64(1)
    n = op.Shape(key, start=2, end=3)  # (1,)
    n_s = op.Squeeze(n, zero)
    pos = op.Range(op.Constant(value_int=0), n_s, op.Constant(value_int=1))  # (n,)
    q_rows, k_rows, v_rows = _rows(query, h * d), _rows(key, h_kv * d), _rows(value, h_kv * d)
    if tau >= 1.0:  # a dense layer: one fused causal attention over all n tokens, every token kept
        out = _heads(_causal_gqa(q_rows, k_rows, v_rows, n, h, h_kv, scaling), h, d)
        kept = op.Unsqueeze(op.Cast(pos, to=_INT32), zero)
        count = op.Cast(n, to=_INT32)
        if per_kv_head:  # the per-KV-head layout: every head keeps every token
            kept = op.Expand(op.Unsqueeze(kept, zero), op.Concat(_i64(1, h_kv), n, axis=0))  # (1, H_kv, n)
            count = op.Expand(op.Unsqueeze(count, zero), _i64(1, h_kv))  # (1, H_kv)
        return out, kept, count, op.Identity(key), op.Identity(value), op.Identity(kept)

    q = op.Squeeze(query, zero)  # (H, n, d)
    k = op.Squeeze(key, zero)  # (H_kv, n, d)
    pr = op.Cast(op.Squeeze(probes, zero), to=_INT64)  # (m,)
    m = op.Shape(pr)  # (1,)

    # Steps 2-3: probe attention (H_kv, g, m, n) in fp32, GQA folded into the probe rows, summed to the mass.
    qp = op.Reshape(op.Cast(op.Gather(q, pr, axis=1), to=_FLOAT), _i64(h_kv, g, -1, d))
    kt = op.Unsqueeze(op.Transpose(op.Cast(k, to=_FLOAT), perm=[0, 2, 1]), one)  # (H_kv,1,d,n)
    scores = op.Mul(op.MatMul(qp, kt), _f32(scaling))
    visible = op.LessOrEqual(op.Unsqueeze(pos, zero), op.Unsqueeze(pr, one))  # (m, n): key j <= probe row r
    probs = op.Softmax(op.Where(visible, scores, _f32(_NEG_INF)), axis=-1)
    # Step 5's score: a_j / c_j, c_j = H * #(probe rows r >= j).
    seen = op.ReduceSum(op.Cast(op.GreaterOrEqual(op.Unsqueeze(pr, one), op.Unsqueeze(pos, zero)), to=_FLOAT),
                        zero, keepdims=0)  # (n,)
    if per_kv_head:
        floor = _floor_count(n, floor_ratio) if floor_ratio > 0 else None
        protected = _protected(pos, n, protect_first, protect_last, image_mask)
        return _per_kv_head_prefill(probs, seen, pos, n, m, (q_rows, k_rows, v_rows), tau, scaling, (h, h_kv, d),
                                    pool_kernel, protected, floor)
    if head_max:  # variant: each head's sum over its probe rows, the max over heads; normalised by c_j / H
        mass = op.ReduceMax(op.ReduceSum(probs, _i64(2), keepdims=0), _i64(0, 1), keepdims=0)  # (n,)
        score = op.Div(mass, seen)
        total = op.ReduceSum(op.Cast(mass, to=onnx.TensorProto.DOUBLE), keepdims=0)
    else:
        mass = op.ReduceSum(probs, _i64(0, 1, 2), keepdims=0)  # (n,)
        score = op.Div(mass, op.Mul(seen, _f32(h)))
        total = op.Mul(op.Cast(m, to=onnx.TensorProto.DOUBLE), _f64(h))  # every probe row of every head sums to 1
    if pool_kernel > 1:  # variant: count and ranking on max-pooled mass / score, the rule against the pooled total
        mass, score = _max_pool(mass, pool_kernel), _max_pool(score, pool_kernel)
        total = op.ReduceSum(op.Cast(mass, to=onnx.TensorProto.DOUBLE), keepdims=0)
    floor = _floor_count(n, floor_ratio) if floor_ratio > 0 else None
    protected = _protected(pos, n, protect_first, protect_last, image_mask)

    def keep(t: float):
        """Steps 4-5 at threshold t -> (ascending kept positions (p,), p (1,))."""
        if t >= 1.0:  # every token (the rule's fp64 sum could round one off)
            return pos, n
        if protected is not None:  # the per-KV-head rule with one row; its -1 padding sliced off
            rows, counts = _rowwise_keep(op.Unsqueeze(mass, zero), op.Unsqueeze(score, zero), None, pos, n, t,
                                         protected, floor)
            return op.Slice(op.Squeeze(rows, zero), _i64(0), counts), counts
        # Step 4: p = smallest count whose descending mass reaches t * total (fp64 cumulative sum, as the reference)
        count = _tau_count(mass, n, op.Mul(total, _f64(t)))  # (1,)
        if floor is not None:
            count = op.Max(count, floor)
        # Step 5: the p best scores, then ascending positions.
        _top_val, top = op.TopK(score, count, axis=-1, largest=1, sorted=1)  # ties -> lower index (ONNX spec)
        idx, _idx_pos = op.TopK(top, count, axis=-1, largest=0, sorted=1)  # (p,) ascending
        return idx, count

    idx, count = keep(tau)
    # tau_evict: the cache keeps the larger set of the same rule (a superset); the attention keeps the tau set
    cache_idx, cache_count = keep(evict_tau) if evict_tau > tau else (idx, count)

    # Step 6: fused causal attention over the p gathered tokens (original order), scattered back; zero elsewhere.
    # Dense prefill (sparse=False): every token attends over all n; the kept set only compacts the cache.
    if sparse:
        q_t, k_t, v_t = (op.Gather(x, idx, axis=0) for x in (q_rows, k_rows, v_rows))  # (p, heads*d)
        o = _causal_gqa(q_t, k_t, v_t, count, h, h_kv, scaling)  # (p, H*d)
        zeros = op.ConstantOfShape(op.Shape(q_rows), value=onnx.helper.make_tensor("z", _FLOAT, [1], [0.0]))
        out = _heads(op.ScatterND(zeros, op.Unsqueeze(idx, one), o), h, d)
    else:
        out = _heads(_causal_gqa(q_rows, k_rows, v_rows, n, h, h_kv, scaling), h, d)

    # Step 7 outputs at capacity n: the cache set's K/V first, zero after; indices padded with -1.
    kg, vg = op.Gather(k_rows, cache_idx, axis=0), op.Gather(v_rows, cache_idx, axis=0)  # (p, H_kv*d)
    rest = op.Sub(n, cache_count)
    kv_pads = op.Concat(_i64(0, 0, 0, 0, 0, 0), rest, _i64(0), axis=0)  # (1, H_kv, p, d) -> (1, H_kv, n, d)
    key_compact = op.Pad(_heads(kg, h_kv, d), kv_pads, op.Constant(value_float=0.0))
    value_compact = op.Pad(_heads(vg, h_kv, d), kv_pads, op.Constant(value_float=0.0))
    idx_pads = op.Concat(_i64(0, 0, 0), rest, axis=0)
    kept = op.Pad(op.Unsqueeze(op.Cast(cache_idx, to=_INT32), zero), idx_pads, _i32_scalar(-1))
    attended = kept if evict_tau <= tau else op.Pad(op.Unsqueeze(op.Cast(idx, to=_INT32), zero),
                                                    op.Concat(_i64(0, 0, 0), op.Sub(n, count), axis=0),
                                                    _i32_scalar(-1))
    return out, kept, op.Cast(cache_count, to=_INT32), key_compact, value_compact, op.Identity(attended)


def standard_decode_attention(query, key, value, past_key, past_value, past_length, scaling: float, num_heads: int,
                              num_kv_heads: int, head_dim: int, per_kv_head: bool = False):
    """GroupQueryAttention translation of :func:`zipvl.export.ops.decode_attention`: the new token attends over its
    row's ``past_length`` entries and itself; the op writes its K/V at slot past_length in the shared buffers.

    query (B, H, 1, d), key/value (B, H_kv, 1, d), past_key/value (B, H_kv, C, d), past_length (B,) int32.
    ``per_kv_head``: past (B * H_kv, 1, C, d) and past_length (B * H_kv,): one GQA batch row per (sequence, KV head)
    with its query group (num_heads g, kv_num_heads 1), so every KV head reads and writes at its own length.
    """
    h, h_kv, d = num_heads, num_kv_heads, head_dim
    heads, kv_heads = (h // h_kv, 1) if per_kv_head else (h, h_kv)  # per GQA batch row
    rows = [op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), _i64(-1, 1, w))
            for x, w in ((query, heads * d), (key, kv_heads * d), (value, kv_heads * d))]  # (rows, 1, width)
    total = op.Cast(op.Add(op.ReduceMax(past_length, keepdims=0), _i32_scalar(1)), to=_INT32)  # scalar
    out, present_key, present_value = MSFT.GroupQueryAttention(
        rows[0], rows[1], rows[2], past_key, past_value, past_length, total, num_heads=heads, kv_num_heads=kv_heads,
        scale=float(scaling))
    return op.Transpose(op.Reshape(out, _i64(-1, 1, h, d)), perm=[0, 2, 1, 3]), present_key, present_value


def _tau_count(mass, n, threshold):
    """Smallest count whose descending-sorted ``mass`` reaches ``threshold`` (fp64), per row of the last axis:
    mass (n,) and a scalar threshold -> (1,) int64; mass (R, n) and threshold (R, 1) -> (R, 1)."""
    desc, _desc_idx = op.TopK(mass, n, axis=-1, largest=1, sorted=1)
    cumulative = op.CumSum(op.Cast(desc, to=onnx.TensorProto.DOUBLE), op.Constant(value_int=-1))
    below = op.ReduceSum(op.Cast(op.Less(cumulative, threshold), to=_INT64), _i64(-1), keepdims=1)
    return op.Min(op.Add(below, _i64(1)), n)


def _max_pool(x, kernel: int):
    """(n,) or (R, n) -> same shape: max over ``kernel`` neighbours along the last axis, an edge over the ones that
    exist (MaxPool ignores padding)."""
    rows = op.Concat(_i64(-1, 1), op.Shape(x, start=-1), axis=0)  # (R, 1, n): MaxPool's (N, C, L)
    pooled, _indices = op.MaxPool(op.Reshape(x, rows), kernel_shape=[kernel], strides=[1],
                                  pads=[kernel // 2, kernel // 2])
    return op.Reshape(pooled, op.Shape(x))


def _floor_count(n, ratio: float):
    """kept_budget(n, ratio) = clamp(ceil(ratio * n - 1e-9), 1, n): (1,) int64, in fp64 as the reference."""
    want = op.Ceil(op.Sub(op.Mul(op.Cast(n, to=onnx.TensorProto.DOUBLE), _f64(ratio)), _f64(1e-9)))
    return op.Min(op.Max(op.Cast(want, to=_INT64), _i64(1)), n)


def _protected(pos, n, first: int, last: int, image_mask=None):
    """(n,) bool of the always-kept tokens: the first / last ones, every text token (outside ``image_mask``
    (1, n)); None when nothing is protected."""
    masks = []
    if first or last:
        masks.append(op.Or(op.Less(pos, _i64(first)), op.GreaterOrEqual(pos, op.Sub(n, _i64(last)))))
    if image_mask is not None:
        masks.append(op.Not(op.Reshape(op.Cast(image_mask, to=onnx.TensorProto.BOOL), _i64(-1))))
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else op.Or(masks[0], masks[1])


def _i32_scalar(value: int):
    return op.Constant(value=onnx.helper.make_tensor("c", _INT32, [], [int(value)]))


def _per_kv_head_prefill(probs, seen, pos, n, m, rows, tau: float, scaling: float, dims, pool_kernel: int,
                         protected, floor):
    """``head_reduce="kv"`` (dense prefill): one kept set per KV head, each from its query group's probe rows
    (:func:`zipvl.reference.policy.per_kv_head_rows`) -> the op's six outputs, sets (1, H_kv, n) / (1, H_kv)."""
    q_rows, k_rows, v_rows = rows
    h, h_kv, d = dims
    g = h // h_kv
    mass = op.ReduceSum(probs, _i64(1, 2), keepdims=0)  # (H_kv, n): the group's heads, its probe rows
    score = op.Div(mass, op.Mul(seen, _f32(g)))
    total = op.Expand(op.Mul(op.Cast(m, to=onnx.TensorProto.DOUBLE), _f64(g)), op.Constant(value_ints=[h_kv]))
    if pool_kernel > 1:
        mass, score = _max_pool(mass, pool_kernel), _max_pool(score, pool_kernel)
        total = op.ReduceSum(op.Cast(mass, to=onnx.TensorProto.DOUBLE), _i64(-1), keepdims=0)
    idx, count = _rowwise_keep(mass, score, total, pos, n, tau, protected, floor)  # (H_kv, n), (H_kv,)
    out = _heads(_causal_gqa(q_rows, k_rows, v_rows, n, h, h_kv, scaling), h, d)
    keys = op.Transpose(op.Reshape(k_rows, _i64(-1, h_kv, d)), perm=[1, 0, 2])  # (H_kv, n, d)
    values = op.Transpose(op.Reshape(v_rows, _i64(-1, h_kv, d)), perm=[1, 0, 2])
    at = op.Expand(op.Unsqueeze(op.Max(idx, _i64(0)), _i64(2)), op.Shape(keys))  # (H_kv, n, d)
    valid = op.Unsqueeze(op.GreaterOrEqual(idx, _i64(0)), _i64(2))
    zero = _i64(0)
    compact = [op.Unsqueeze(op.Where(valid, op.GatherElements(x, at, axis=1), _f32(0.0)), zero) for x in (keys, values)]
    kept = op.Unsqueeze(op.Cast(idx, to=_INT32), zero)
    counts = op.Unsqueeze(op.Cast(count, to=_INT32), zero)
    return out, kept, counts, compact[0], compact[1], op.Identity(kept)


def _rowwise_keep(mass, score, total, pos, n, tau: float, protected=None, floor=None):
    """Steps 4-5 (with protection and floor, as keep_set) on each row of mass / score (R, n), total (R,) fp64 (unused
    when ``protected`` is given: the rule then runs against the unprotected tokens' own mass) ->
    (ascending kept positions (R, n) padded with -1, counts (R,)). ``TopK``'s k is one scalar, so each row's count
    becomes a rank test (rank by score < count) instead of a per-row top-k."""
    if protected is not None:  # the rule on the unprotected tokens, against their own mass
        mass = op.Where(protected, _f32(0.0), mass)
        total = op.ReduceSum(op.Cast(mass, to=onnx.TensorProto.DOUBLE), _i64(-1), keepdims=0)
        score = op.Where(protected, _f32(_NEG_INF), score)
    threshold = op.Unsqueeze(op.Mul(total, _f64(tau)), _i64(1))  # (R, 1)
    count = op.Squeeze(_tau_count(mass, n, threshold), _i64(1))  # (R,)
    if protected is not None:
        guarded = op.ReduceSum(op.Cast(protected, to=_INT64), keepdims=1)  # (1,)
        count = op.Min(count, op.Sub(n, guarded))
        if floor is not None:
            count = op.Max(count, op.Max(op.Sub(floor, guarded), _i64(0)))
    elif floor is not None:
        count = op.Max(count, floor)
    _top_val, order = op.TopK(score, n, axis=-1, largest=1, sorted=1)  # (R, n), ties -> lower index
    grid = op.Expand(op.Unsqueeze(pos, _i64(0)), op.Shape(order))  # (R, n): 0..n-1 in every row
    rank = op.ScatterElements(grid, order, grid, axis=1)  # rank[r, order[r, i]] = i
    kept = op.Less(rank, op.Unsqueeze(count, _i64(1)))
    if protected is not None:
        kept = op.Or(kept, protected)
    ordered, _at = op.TopK(op.Where(kept, grid, op.Add(grid, n)), n, axis=-1, largest=0, sorted=1)
    idx = op.Where(op.Less(ordered, n), ordered, _i64(-1))  # kept positions first, ascending
    return idx, op.ReduceSum(op.Cast(kept, to=_INT64), _i64(1), keepdims=0)
