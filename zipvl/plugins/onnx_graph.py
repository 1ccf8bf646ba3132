# SPDX-License-Identifier: Apache-2.0
"""One-layer plugin-lowered ONNX graphs (the node contract, built with onnx.helper).

- :func:`attention_layer_model`: ``ZipVLTokenSelect`` + the ONNX ``Attention`` node (TensorRT's IAttention), exactly
  as ``zipvl-build --ops plugin`` emits a sparse prefill layer.
- :func:`plugin_layer_model`: ``ZipVLTokenSelect`` feeding ``ZipVLSparseAttention``, the fallback that does p x p
  attention work in the plugin (TensorRT cannot size the Attention node by the plugin's kept count, so the exporter's
  Attention runs at capacity n). The smallest graph that exercises both plugins: the tests run it through ONNX
  Runtime (:mod:`.ort_ops`) and TensorRT-RTX (:mod:`.tensorrt_build`), and ``python -m
  zipvl.plugins.tensorrt_build --demo`` builds it.
"""

from __future__ import annotations

PLUGIN_DOMAIN = "zipvl"
PLUGIN_VERSION = "1"

#: input name -> dims (symbolic B, n, m)
INPUTS = {
    "query": ("B", "H", "n", "d"),
    "key": ("B", "H_kv", "n", "d"),
    "value": ("B", "H_kv", "n", "d"),
    "probes": ("B", "m"),
}
OUTPUTS = ("kept_indices", "kept_count", "mass", "attn_out", "key_compact", "value_compact")


def plugin_nodes(prefix: str, num_heads: int, num_kv_heads: int, head_dim: int, tau: float, scaling: float,
                 query: str = "query", key: str = "key", value: str = "value", probes: str = "probes"):
    """The two plugin nodes of one layer, every attribute explicit (the contract has no defaults)."""
    from onnx import helper

    common = {"domain": PLUGIN_DOMAIN, "plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_DOMAIN,
              "scaling": float(scaling), "num_heads": int(num_heads), "num_kv_heads": int(num_kv_heads),
              "head_dim": int(head_dim)}
    select = helper.make_node(
        "ZipVLTokenSelect", [query, key, probes],
        [f"{prefix}kept_indices", f"{prefix}kept_count", f"{prefix}mass"],
        name=f"{prefix}ZipVLTokenSelect", tau=float(tau), **common)
    attend = helper.make_node(
        "ZipVLSparseAttention", [query, key, value, f"{prefix}kept_indices", f"{prefix}kept_count"],
        [f"{prefix}attn_out", f"{prefix}key_compact", f"{prefix}value_compact"],
        name=f"{prefix}ZipVLSparseAttention", **common)
    return [select, attend]


def plugin_layer_model(num_heads: int, num_kv_heads: int, head_dim: int, tau: float, scaling: float | None = None,
                       dtype: str = "float32", opset: int = 17):
    """ModelProto: inputs query/key/value/probes (dynamic B, n, m), outputs the six plugin outputs.

    ``dtype`` is ``"float32"``, ``"float16"`` or ``"bfloat16"`` for query/key/value/attn_out/K/V compact.
    """
    from onnx import TensorProto, helper

    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype]
    scaling = head_dim**-0.5 if scaling is None else scaling
    dims = {"H": num_heads, "H_kv": num_kv_heads, "d": head_dim}

    def shape(names):
        return [dims.get(x, x) for x in names]

    inputs = [helper.make_tensor_value_info(name, elem if name != "probes" else TensorProto.INT32, shape(d))
              for name, d in INPUTS.items()]
    out_types = {"kept_indices": (TensorProto.INT32, ("B", "n")), "kept_count": (TensorProto.INT32, ("B",)),
                 "mass": (TensorProto.FLOAT, ("B", "n")), "attn_out": (elem, INPUTS["query"]),
                 "key_compact": (elem, INPUTS["key"]), "value_compact": (elem, INPUTS["value"])}
    outputs = [helper.make_tensor_value_info(name, out_types[name][0], shape(out_types[name][1])) for name in OUTPUTS]
    nodes = plugin_nodes("", num_heads, num_kv_heads, head_dim, tau, scaling)
    graph = helper.make_graph(nodes, "zipvl_plugin_layer", inputs, outputs)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
        producer_name="zipvl")
    model.ir_version = min(model.ir_version, 10)  # readable by older parsers (TensorRT 10 / RTX 1.x)
    return model


#: outputs of :func:`attention_layer_model` (the plugin's mass is not needed by the attention)
ATTENTION_OUTPUTS = ("kept_indices", "kept_count", "attn_out", "key_compact", "value_compact")


def attention_layer_model(num_heads: int, num_kv_heads: int, head_dim: int, tau: float, scaling: float | None = None,
                          dtype: str = "bfloat16"):
    """ModelProto of one ``zipvl-build --ops plugin`` prefill layer (opset 23): ``ZipVLTokenSelect``, then the
    kept tokens gathered at capacity n and one ONNX ``Attention(is_causal=1)`` (TensorRT's IAttention), scattered
    back; compacted K/V. The same nodes as :func:`zipvl.export.lowering_plugin.plugin_prefill_attention`.

    TensorRT-RTX 1.7 has fused attention kernels for float16 / bfloat16 only: a float32 Attention fails the build
    ("Attention operation was not supported by a dedicated kernel").
    """
    from onnx import TensorProto, helper

    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype]
    scaling = head_dim**-0.5 if scaling is None else scaling
    h, h_kv, d = num_heads, num_kv_heads, head_dim
    dims = {"H": h, "H_kv": h_kv, "d": d}
    inputs = [helper.make_tensor_value_info(name, elem if name != "probes" else TensorProto.INT32,
                                            [dims.get(x, x) for x in (1, *dims_[1:])])
              for name, dims_ in INPUTS.items()]
    select = plugin_nodes("", h, h_kv, d, tau, scaling)[0]
    n = helper.make_node
    nodes = [
        select,
        n("Shape", ["key"], ["n"], start=2, end=3),
        n("Add", ["n", "one"], ["n_spare"]),
        n("Squeeze", ["kept_indices", "zero"], ["idx32"]),
        n("Cast", ["idx32"], ["idx"], to=TensorProto.INT64),
        n("GreaterOrEqual", ["idx", "zero"], ["valid"]),
        n("Max", ["idx", "zero"], ["gather_idx"]),
        n("Gather", ["query", "gather_idx"], ["q_kept"], axis=2),
        n("Gather", ["key", "gather_idx"], ["k_kept"], axis=2),
        n("Gather", ["value", "gather_idx"], ["v_kept"], axis=2),
        n("Attention", ["q_kept", "k_kept", "v_kept"], ["o_kept"], is_causal=1, scale=float(scaling)),
        n("Transpose", ["o_kept"], ["rows"], perm=[2, 0, 1, 3]),
        n("Concat", ["n_spare", "row_shape"], ["spare_shape"], axis=0),
        n("ConstantOfShape", ["spare_shape"], ["zeros"], value=helper.make_tensor("z", elem, [1], [0.0])),
        n("Where", ["valid", "idx", "n"], ["slot"]),
        n("Unsqueeze", ["slot", "one"], ["slot2"]),
        n("ScatterND", ["zeros", "slot2", "rows"], ["scattered"]),
        n("Slice", ["scattered", "zero", "n", "zero"], ["cut"]),
        n("Transpose", ["cut"], ["attn_out"], perm=[1, 2, 0, 3]),
        n("Unsqueeze", ["valid", "axes013"], ["keep"]),
        n("Where", ["keep", "k_kept", "zero_t"], ["key_compact"]),
        n("Where", ["keep", "v_kept", "zero_t"], ["value_compact"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("row_shape", TensorProto.INT64, [3], [1, h, d]),
             helper.make_tensor("axes013", TensorProto.INT64, [3], [0, 1, 3]), helper.make_tensor("zero_t", elem, [], [0.0])]
    shapes = {"kept_indices": (TensorProto.INT32, [1, "n"]), "kept_count": (TensorProto.INT32, [1]),
              "attn_out": (elem, [1, h, "n", d]), "key_compact": (elem, [1, h_kv, "n", d]),
              "value_compact": (elem, [1, h_kv, "n", d])}
    outputs = [helper.make_tensor_value_info(name, *shapes[name]) for name in ATTENTION_OUTPUTS]
    graph = helper.make_graph(nodes, "zipvl_attention_layer", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
                              producer_name="zipvl")
    model.ir_version = min(model.ir_version, 10)
    return model
