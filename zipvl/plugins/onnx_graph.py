# SPDX-License-Identifier: Apache-2.0
"""A one-layer plugin-lowered ONNX graph (the node contract, built with onnx.helper).

``ZipVLTokenSelect`` feeds ``ZipVLSparseAttention``, exactly as ``zipvl-build --ops plugin`` emits them per layer.
It is the smallest graph that exercises both plugins: the tests run it through ONNX Runtime (:mod:`.ort_ops`) and
TensorRT-RTX (:mod:`.tensorrt_build`), and ``python -m zipvl.plugins.tensorrt_build --demo`` builds it.
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
