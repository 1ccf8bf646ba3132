# SPDX-License-Identifier: Apache-2.0
"""The two lowerings of zipvl::prefill_attention against its eager body (the reference), on a toy module."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import zipvl
from zipvl.export.lowering_plugin import DOMAIN, plugin_prefill_attention, register_schemas
from zipvl.export.lowering_standard import standard_prefill_attention
from zipvl.export.ops import prefill_attention
from zipvl.runtime.session import create_session

H, HKV, D = 4, 2, 8
CFG = zipvl.ZipVLConfig(n_recent=8, n_random=8)


class Toy(torch.nn.Module):
    def __init__(self, tau):
        super().__init__()
        self.tau = tau

    def forward(self, q, k, v, probes):
        return torch.ops.zipvl.prefill_attention(q, k, v, probes, self.tau, D**-0.5, H, HKV, D)



def _inputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, D, generator=g) * 2 for h in (H, HKV, HKV))
    return q, k, v, zipvl.probe_positions(n, CFG).to(torch.int32)[None]


def _export(tmp_path, tau, fn, name):
    n = torch.export.Dim("n", min=2)
    m = torch.export.Dim("m", min=1, max=CFG.n_probes)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(Toy(tau).eval(), _inputs(40), str(path), dynamo=True, dynamic_shapes=({2: n}, {2: n}, {2: n}, {1: m}),
                      input_names=["query", "key", "value", "probes"],
                      output_names=["attn_out", "kept_indices", "kept_count", "key_compact", "value_compact"],
                      custom_translation_table={torch.ops.zipvl.prefill_attention.default: fn}, verbose=False)
    return path


@pytest.fixture(scope="module", params=[1.0, 0.9])
def standard(request, tmp_path_factory):
    return request.param, _export(tmp_path_factory.mktemp("std"), request.param, standard_prefill_attention, "std")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    register_schemas()
    return _export(tmp_path_factory.mktemp("plugin"), 0.9, plugin_prefill_attention, "plugin")


def _check(session, tau, n, seed):
    q, k, v, probes = _inputs(n, seed)
    ref = prefill_attention(q, k, v, probes, tau, D**-0.5, H, HKV, D)
    got = session.run(None, {"query": q.numpy(), "key": k.numpy(), "value": v.numpy(), "probes": probes.numpy()})
    assert np.array_equal(got[1], ref[1].numpy()) and np.array_equal(got[2], ref[2].numpy())  # same kept set
    for i in (0, 3, 4):
        np.testing.assert_allclose(got[i], ref[i].numpy(), atol=2e-5, rtol=1e-5)
    if tau == 1.0:
        assert int(got[2][0]) == n


@pytest.mark.parametrize("n,seed", [(5, 0), (16, 1), (57, 2), (300, 3)])
def test_standard_lowering_matches_reference(standard, n, seed):
    tau, path = standard
    _check(create_session(path), tau, n, seed)


def test_standard_lowering_uses_only_standard_ops(standard):
    tau, path = standard
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert {"TopK", "Softmax", "ScatterElements", "Pad"} <= ops
    assert ("CumSum" in ops) == (tau < 1.0)  # tau = 1 is exactly dense: no cumulative-sum threshold


def test_plugin_lowering_node_contract(plugin):
    model = onnx.load(str(plugin))
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in nodes] == ["ZipVLTokenSelect", "ZipVLSparseAttention"]
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["plugin_version"].type == onnx.AttributeProto.STRING and attrs["plugin_version"].s == b"1"
        assert attrs["plugin_namespace"].s == b"zipvl"
        assert attrs["scaling"].type == onnx.AttributeProto.FLOAT
        assert {a: attrs[a].i for a in ("num_heads", "num_kv_heads", "head_dim")} == {
            "num_heads": H, "num_kv_heads": HKV, "head_dim": D}
    assert {a.name: a for a in nodes[0].attribute}["tau"].f == pytest.approx(0.9)
    assert list(nodes[0].input) == [model.graph.input[i].name for i in (0, 1, 3)]
    assert nodes[1].input[3:] == nodes[0].output[:2]  # kept_indices, kept_count feed the attention
    assert DOMAIN in {o.domain for o in model.opset_import}


@pytest.mark.parametrize("n,seed", [(16, 1), (57, 2)])
def test_plugin_lowering_runs_in_onnxruntime(plugin, n, seed):
    _check(create_session(plugin, plugin=True), 0.9, n, seed)
