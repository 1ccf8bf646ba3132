# SPDX-License-Identifier: Apache-2.0
"""ONNX Runtime runs a hand-built plugin-lowered graph (ZipVLTokenSelect -> ZipVLSparseAttention) through the CPU
twin, and matches the PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zipvl

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")


@pytest.fixture(scope="module")
def ort_ops(cpu_library):
    from zipvl.plugins import ort_ops

    return ort_ops


def _inputs(seed, b, h, h_kv, n, d):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen) * 2.0
    k = torch.randn(b, h_kv, n, d, generator=gen)
    v = torch.randn(b, h_kv, n, d, generator=gen)
    probes = zipvl.probe_positions(n).to(torch.int32).expand(b, -1).contiguous()
    return q, k, v, probes


@pytest.mark.parametrize("b, h, h_kv, n, d, tau", [
    (2, 4, 2, 50, 16, 0.9),    # GQA, n < 128 probes: every position probes
    (3, 6, 3, 300, 8, 0.95),   # 128 seeded probes
    (1, 2, 2, 1, 4, 0.5),      # a single token
    (2, 4, 1, 40, 16, 1.0),    # tau = 1: dense
])
def test_plugin_graph_matches_reference(ort_ops, selection_checker, b, h, h_kv, n, d, tau):
    from zipvl.plugins.onnx_graph import OUTPUTS, plugin_layer_model

    model = plugin_layer_model(h, h_kv, d, tau)
    onnx.checker.check_model(model)
    session = ort_ops.inference_session(model)
    q, k, v, probes = _inputs(n * 31 + b, b, h, h_kv, n, d)
    feeds = {"query": q.numpy(), "key": k.numpy(), "value": v.numpy(), "probes": probes.numpy()}
    got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds)))

    tau32 = float(np.float32(tau))  # the FLOAT attribute's value
    reference = zipvl.select_tokens(q, k, probes, tau32)
    selection_checker(got["kept_indices"], got["kept_count"], got["mass"], reference, probes, h, tau32)
    assert np.array_equal(got["kept_indices"], reference.indices().numpy())
    out = zipvl.sparse_attention(q, k, v, reference.kept)
    np.testing.assert_allclose(got["attn_out"], out.numpy(), atol=1e-5, rtol=1e-5)
    (k_ref, _), valid = zipvl.compact([k, v], reference.kept)
    mask = valid[:, None, :, None].numpy()
    np.testing.assert_array_equal(got["key_compact"][:, :, : k_ref.shape[2]] * mask, k_ref.numpy() * mask)


@pytest.mark.parametrize("h, h_kv, n, d, tau", [(4, 2, 50, 16, 0.9), (6, 3, 300, 8, 0.95), (2, 2, 1, 4, 0.5)])
def test_attention_layer_graph_matches_reference(ort_ops, h, h_kv, n, d, tau):
    """The --ops plugin prefill layer (ZipVLTokenSelect + ONNX Attention at capacity n) in ONNX Runtime."""
    from zipvl.plugins.onnx_graph import ATTENTION_OUTPUTS, attention_layer_model

    model = attention_layer_model(h, h_kv, d, tau, dtype="float32")
    onnx.checker.check_model(model)
    session = ort_ops.inference_session(model)
    q, k, v, probes = _inputs(n * 7 + h, 1, h, h_kv, n, d)
    feeds = {"query": q.numpy(), "key": k.numpy(), "value": v.numpy(), "probes": probes.numpy()}
    got = dict(zip(ATTENTION_OUTPUTS, session.run(list(ATTENTION_OUTPUTS), feeds)))
    reference = zipvl.select_tokens(q, k, probes, float(np.float32(tau)))
    assert np.array_equal(got["kept_indices"], reference.indices().numpy())
    np.testing.assert_allclose(got["attn_out"], zipvl.sparse_attention(q, k, v, reference.kept).numpy(),
                               atol=1e-5, rtol=1e-5)
    (k_ref, v_ref), _ = zipvl.compact([k, v], reference.kept)
    p = k_ref.shape[2]
    np.testing.assert_array_equal(got["key_compact"][:, :, :p], k_ref.numpy())
    np.testing.assert_array_equal(got["value_compact"][:, :, :p], v_ref.numpy())
    assert not got["key_compact"][:, :, p:].any()


def test_to_ort_domain_rewrites_only_zipvl_nodes(ort_ops):
    from onnx import helper

    from zipvl.plugins.onnx_graph import plugin_layer_model

    model = plugin_layer_model(4, 2, 8, 0.9)
    model.graph.node.append(helper.make_node("Identity", ["mass"], ["mass_copy"]))
    rewritten = ort_ops.to_ort_domain(model)
    domains = {node.op_type: node.domain for node in rewritten.graph.node}
    assert domains == {"ZipVLTokenSelect": "ai.onnx.contrib", "ZipVLSparseAttention": "ai.onnx.contrib",
                       "Identity": ""}
    imports = {op.domain for op in rewritten.opset_import}
    assert "ai.onnx.contrib" in imports and "zipvl" not in imports
    assert {node.domain for node in model.graph.node} == {"zipvl", ""}  # the input is untouched
    back = ort_ops.to_ort_domain(rewritten, src="ai.onnx.contrib", dst="zipvl")
    assert [n.domain for n in back.graph.node] == [n.domain for n in model.graph.node]
    assert [list(n.attribute) for n in back.graph.node] == [list(n.attribute) for n in model.graph.node]


def test_float_attributes_reach_the_op_exactly(ort_ops):
    """extensions prints FLOAT attributes with 6 decimals; the *_fp32_bits twins carry the exact fp32 value."""
    from zipvl.plugins.onnx_graph import plugin_layer_model

    scaling = 128**-0.5  # 0.08838834764... would arrive as 0.088388
    rewritten = ort_ops.to_ort_domain(plugin_layer_model(4, 2, 128, 0.975, scaling=scaling))
    attrs = {a.name: a.i for a in rewritten.graph.node[0].attribute if a.name.endswith("_fp32_bits")}
    assert ort_ops._from_bits(attrs["scaling_fp32_bits"]) == np.float32(scaling)
    assert ort_ops._from_bits(attrs["tau_fp32_bits"]) == np.float32(0.975)


def test_odd_scaling_matches_plugin_precision(ort_ops):
    """With a scaling of many digits the ORT path still equals the CPU twin called with the fp32 value."""
    from zipvl.plugins import cpu_ops
    from zipvl.plugins.onnx_graph import plugin_layer_model

    scaling = 0.0123456789
    session = ort_ops.inference_session(plugin_layer_model(4, 2, 16, 0.9, scaling=scaling))
    q, k, v, probes = _inputs(3, 1, 4, 2, 64, 16)
    feeds = {"query": q.numpy() * 40, "key": k.numpy(), "value": v.numpy(), "probes": probes.numpy()}
    _, _, mass = session.run(["kept_indices", "kept_count", "mass"], feeds)
    _, _, twin_mass = cpu_ops.token_select(feeds["query"], feeds["key"], feeds["probes"], 0.9, np.float32(scaling))
    np.testing.assert_array_equal(mass, twin_mass)


def test_zipvl_domain_is_not_runnable_without_rewrite(ort_ops):
    """Why to_ort_domain exists: onnxruntime-extensions' Python ops live in ai.onnx.contrib only."""
    from zipvl.plugins.onnx_graph import plugin_layer_model

    model = plugin_layer_model(4, 2, 8, 0.9)
    with pytest.raises(Exception, match="zipvl:ZipVLTokenSelect|not a registered"):
        ort.InferenceSession(model.SerializeToString(), ort_ops.session_options(),
                             providers=["CPUExecutionProvider"])


def test_attribute_mismatch_is_reported(ort_ops):
    from zipvl.plugins.onnx_graph import plugin_layer_model

    model = plugin_layer_model(4, 2, 8, 0.9)
    for value_info in (*model.graph.input, *model.graph.output):
        for dim in value_info.type.tensor_type.shape.dim:
            dim.dim_param = dim.dim_param or "any"  # no static dims: the op itself must notice
    session = ort_ops.inference_session(model)
    q, k, v, probes = _inputs(0, 1, 2, 2, 10, 8)  # H = 2 in the data, num_heads = 4 in the node
    feeds = {"query": q.numpy(), "key": k.numpy(), "value": v.numpy(), "probes": probes.numpy()}
    with pytest.raises(zipvl.ZipVLInputError, match="num_heads"):
        session.run(None, feeds)
    # The raw session survives the error (raising inside the op would abort the process) and poisons outputs.
    kept_indices, kept_count, mass = session.session.run(["kept_indices", "kept_count", "mass"], feeds)
    assert (kept_count == -1).all() and (kept_indices == -1).all() and np.isnan(mass).all()
