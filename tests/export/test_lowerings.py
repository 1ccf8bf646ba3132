# SPDX-License-Identifier: Apache-2.0
"""The two lowerings of zipvl::prefill_attention and zipvl::decode_attention against their eager bodies (the
reference), on toy modules: same kept sets, outputs within fp32 rounding, fused attention nodes only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import zipvl
from zipvl.export import lowering_plugin, lowering_standard
from zipvl.export.lowering_plugin import DOMAIN, plugin_decode_attention, plugin_prefill_attention
from zipvl.export.lowering_standard import MS_DOMAIN, standard_decode_attention, standard_prefill_attention
from zipvl.export.ops import decode_attention, prefill_attention
from zipvl.runtime.session import create_session

H, HKV, D = 4, 2, 8
CFG = zipvl.ZipVLConfig(n_recent=8, n_random=8)


class Toy(torch.nn.Module):
    """The op with ``selection`` = (pool kernel, protect first, protect last, head max, floor ratio, evict tau) as
    attributes; an ``image`` mask input protects the text tokens (protect_text)."""

    def __init__(self, tau, sparse=True, selection=(1, 0, 0)):
        super().__init__()
        self.tau, self.sparse, self.selection = tau, sparse, selection

    def forward(self, q, k, v, probes, image=None):
        return torch.ops.zipvl.prefill_attention(q, k, v, probes, self.tau, self.sparse, D**-0.5, H, HKV, D,
                                                 *self.selection[:6], image_mask=image,
                                                 per_kv_head=bool(self.selection[6:7] and self.selection[6]))


def _inputs(n, seed=0, masked=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, D, generator=g) * 2 for h in (H, HKV, HKV))
    inputs = (q, k, v, zipvl.probe_positions(n, CFG).to(torch.int32)[None])
    if masked:  # a prompt's layout: text, the image's tokens, the question
        image = torch.zeros(1, n, dtype=torch.bool)
        image[:, n // 5: 3 * n // 4] = True
        inputs += (image,)
    return inputs


NAMES = ["query", "key", "value", "probes", "image_mask"]


def _export(tmp_path, tau, fn, name, opset=18, sparse=True, selection=(1, 0, 0), masked=False):
    n = torch.export.Dim("n", min=2)
    m = torch.export.Dim("m", min=1, max=CFG.n_probes)
    path = tmp_path / f"{name}.onnx"
    dyn = ({2: n}, {2: n}, {2: n}, {1: m}) + (({1: n},) if masked else ())
    torch.onnx.export(Toy(tau, sparse, selection).eval(), _inputs(40, masked=masked), str(path), dynamo=True,
                      dynamic_shapes=dyn, input_names=NAMES[: len(dyn)],
                      output_names=["attn_out", "kept_indices", "kept_count", "key_compact", "value_compact",
                                    "attended_indices"],
                      custom_translation_table={torch.ops.zipvl.prefill_attention.default: fn}, opset_version=opset,
                      verbose=False)
    return path


# (tau, sparse): a dense layer, the paper's sparse prefill, and dense prefill + eviction (preset "evict_only")
VARIANTS = [(1.0, True), (0.9, True), (0.9, False)]
# (tau, sparse, (max-pool kernel, protect_first, protect_last, head max, floor ratio)): the selection variants the
# standard lowering adds - pooled, protected, both under dense prefill (preset "evict_question"), max over heads, a
# kept-ratio floor that binds (tau 0.5 keeps fewer), and everything at once
SELECTION_VARIANTS = [(0.9, True, (5, 0, 0, False, 0.0)), (0.9, True, (1, 3, 6, False, 0.0)),
                      (0.9, False, (5, 2, 4, False, 0.0)), (0.9, True, (1, 0, 0, True, 0.0)),
                      (0.5, True, (1, 0, 0, False, 0.6)), (0.5, False, (5, 2, 4, True, 0.7))]
# (tau, sparse, selection + (evict tau,), image mask): a stricter cache set beside the attention's (preset
# "safe_evict", also with protection and under dense prefill), the text tokens protected (preset "visual_only"), both
EVICT_AND_TEXT_VARIANTS = [(0.9, True, (1, 0, 0, False, 0.0, 0.99), False),
                           (0.8, True, (5, 2, 4, False, 0.0, 0.95), False),
                           (0.7, False, (1, 0, 0, False, 0.0, 1.0), False),
                           (0.9, True, (1, 0, 0, False, 0.0, 0.0), True),
                           (0.8, True, (5, 0, 4, False, 0.0, 0.95), True)]
# one kept set per KV head (dense prefill; preset "evict_question_kv"): alone, pooled + protected, with a floor
PER_KV_HEAD_VARIANTS = [(0.9, False, (1, 0, 0, False, 0.0, 0.0, True), False),
                        (0.9, False, (5, 2, 4, False, 0.0, 0.0, True), False),
                        (0.5, False, (1, 0, 0, False, 0.6, 0.0, True), True)]


@pytest.fixture(scope="module", params=[(*v, (1, 0, 0), False) for v in VARIANTS]
                + [(*v, False) for v in SELECTION_VARIANTS] + EVICT_AND_TEXT_VARIANTS + PER_KV_HEAD_VARIANTS)
def standard(request, tmp_path_factory):
    lowering_standard.register_schemas()
    tau, sparse, selection, masked = request.param
    path = _export(tmp_path_factory.mktemp("std"), tau, standard_prefill_attention, "std", sparse=sparse,
                   selection=selection, masked=masked)
    return tau, sparse, selection, masked, path


@pytest.fixture(scope="module", params=VARIANTS)
def plugin(request, tmp_path_factory):
    lowering_plugin.register_schemas()
    tau, sparse = request.param
    return tau, sparse, _export(tmp_path_factory.mktemp("plugin"), tau, plugin_prefill_attention, "plugin",
                                opset=lowering_plugin.OPSET, sparse=sparse)


def _check(session, tau, sparse, n, seed, selection=(1, 0, 0), masked=False):
    inputs = _inputs(n, seed, masked)
    ref = prefill_attention(*inputs[:4], tau, sparse, D**-0.5, H, HKV, D, *selection[:6],
                            image_mask=inputs[4] if masked else None,
                            per_kv_head=bool(selection[6:7] and selection[6]))
    got = session.run(None, {name: t.numpy() for name, t in zip(NAMES, inputs)})
    assert np.array_equal(got[1], ref[1].numpy()) and np.array_equal(got[2], ref[2].numpy())  # same kept set
    assert np.array_equal(got[5], ref[5].numpy())  # same attention set
    for i in (0, 3, 4):
        np.testing.assert_allclose(got[i], ref[i].numpy(), atol=2e-5, rtol=1e-5)
    if tau == 1.0:
        assert int(got[2][0]) == n
    return got


@pytest.mark.parametrize("n,seed", [(5, 0), (16, 1), (57, 2), (300, 3)])
def test_standard_lowering_matches_reference(standard, n, seed):
    tau, sparse, selection, masked, path = standard
    got = _check(create_session(path), tau, sparse, n, seed, selection, masked)
    if len(selection) > 6:  # per KV head: each head's own set, its own entries compacted
        _check_per_kv_head(got, _inputs(n, seed, masked), selection, n)
        return
    count, attended = int(got[2][0]), int((got[5][0] >= 0).sum())
    if len(selection) >= 5 and selection[4] > 0:  # the floor is what the engine keeps at least
        assert count >= np.ceil(selection[4] * n - 1e-9)
    evict_tau = selection[5] if len(selection) > 5 else 0.0
    if evict_tau > tau:  # the cache keeps a superset of what the attention used; tau_evict 1 keeps everything
        assert count >= attended and (count == n if evict_tau >= 1.0 else True)
        assert set(got[5][0, :attended].tolist()) <= set(got[1][0, :count].tolist())
        if sparse:  # the attention's output rows are its own (smaller) set: the other cached rows are zero
            assert int((np.abs(got[0][0]).sum(axis=(0, 2)) > 0).sum()) == attended
    else:
        assert np.array_equal(got[5], got[1])
    if masked:  # every text token (outside the image) is kept
        text = np.flatnonzero(~_inputs(n, seed, True)[4][0].numpy())
        assert set(text) <= set(got[1][0, :count].tolist())


def _check_per_kv_head(got, inputs, selection, n):
    _q, k, v, _probes = inputs[:4]
    counts = got[2][0]
    assert got[1].shape == (1, HKV, n) and counts.shape == (HKV,) and np.array_equal(got[5], got[1])
    for j in range(HKV):
        idx = got[1][0, j, : counts[j]]
        assert (np.diff(idx) > 0).all() and (got[1][0, j, counts[j]:] == -1).all()
        np.testing.assert_array_equal(got[3][0, j, : counts[j]], k[0, j, idx].numpy())
        np.testing.assert_array_equal(got[4][0, j, counts[j]:], 0)
        if selection[1] or selection[2]:
            assert {*range(min(n, selection[1])), *range(max(0, n - selection[2]), n)} <= set(idx.tolist())
        if selection[4] > 0:
            assert counts[j] >= np.ceil(selection[4] * n - 1e-9)
    if len(inputs) > 4:
        text = np.flatnonzero(~inputs[4][0].numpy())
        assert all(set(text) <= set(got[1][0, j, : counts[j]].tolist()) for j in range(HKV))


def test_standard_lowering_fuses_every_attention(standard):
    tau, sparse, selection, _masked, path = standard
    model = onnx.load(str(path))
    ops = [node.op_type for node in model.graph.node]
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx", MS_DOMAIN}
    assert ops.count("GroupQueryAttention") == 1  # the causal attention over the p (tau = 1: n) tokens
    if tau < 1.0:
        compaction = "GatherElements" if len(selection) > 6 else "Pad"  # per KV head: each head's own rows
        assert {"TopK", "CumSum", compaction} <= set(ops) and ("ScatterND" in ops) == sparse
        assert ops.count("Softmax") == 1  # the probe attention (m x n), nothing else
        assert ("MaxPool" in ops) == (selection[0] > 1)
    else:  # exactly dense: no probe, no threshold
        assert not {"Softmax", "TopK", "CumSum", "MatMul"} & set(ops)


def test_plugin_lowering_node_contract(plugin):
    tau, _sparse, path = plugin
    model = onnx.load(str(path))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Attention") == 1 and "Softmax" not in ops and "MatMul" not in ops
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [lowering_plugin.OPSET]
    attention = next(node for node in model.graph.node if node.op_type == "Attention")
    attrs = {a.name: a for a in attention.attribute}
    assert attrs["is_causal"].i == 1 and attrs["scale"].f == pytest.approx(D**-0.5)
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    if tau == 1.0:
        assert nodes == []  # a dense layer: no selection
        return
    assert [n.op_type for n in nodes] == ["ZipVLTokenSelect"]
    attrs = {a.name: a for a in nodes[0].attribute}
    assert attrs["plugin_version"].type == onnx.AttributeProto.STRING and attrs["plugin_version"].s == b"1"
    assert attrs["plugin_namespace"].s == b"zipvl"
    assert attrs["scaling"].type == onnx.AttributeProto.FLOAT
    assert {a: attrs[a].i for a in ("num_heads", "num_kv_heads", "head_dim")} == {
        "num_heads": H, "num_kv_heads": HKV, "head_dim": D}
    assert attrs["tau"].f == pytest.approx(0.9)
    assert list(nodes[0].input) == [model.graph.input[i].name for i in (0, 1, 3)]
    assert DOMAIN in {o.domain for o in model.opset_import}


def test_plugin_lowering_matches_the_onnx_graph_contract(plugin):
    """The exporter's sparse layer and zipvl.plugins.onnx_graph.attention_layer_model (what the TensorRT test
    builds) use the same node types."""
    from zipvl.plugins.onnx_graph import attention_layer_model

    tau, sparse, path = plugin
    exported = {n.op_type for n in onnx.load(str(path)).graph.node} - {"Constant", "Identity"}
    contract = {n.op_type for n in attention_layer_model(H, HKV, D, 0.9).graph.node}
    if tau == 1.0:  # a dense layer: the Attention node without the selection around it
        assert "Attention" in exported and "ZipVLTokenSelect" not in exported
    elif sparse:
        assert exported == contract, exported ^ contract
    else:  # dense prefill: the same selection and compaction, the attention over all n (no scatter)
        assert {"ZipVLTokenSelect", "Attention"} <= exported < contract, exported - contract


@pytest.mark.parametrize("n,seed", [(16, 1), (57, 2), (300, 3)])
def test_plugin_lowering_runs_in_onnxruntime(plugin, n, seed):
    tau, sparse, path = plugin
    _check(create_session(path, plugin=tau < 1.0), tau, sparse, n, seed)


# ---------------------------------------------------------------- decode


class DecodeToy(torch.nn.Module):
    def __init__(self, per_kv_head=False):
        super().__init__()
        self.per_kv_head = per_kv_head

    def forward(self, q, k, v, past_k, past_v, length):
        return torch.ops.zipvl.decode_attention(q, k, v, past_k, past_v, length, D**-0.5, H, HKV, D,
                                                per_kv_head=self.per_kv_head)


def _decode_inputs(b, c, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, H, 1, D, generator=g) * 2
    k, v = (torch.randn(b, HKV, 1, D, generator=g) for _ in range(2))
    past_k, past_v = (torch.randn(b, HKV, c, D, generator=g) for _ in range(2))
    return q, k, v, past_k, past_v, torch.tensor(lengths, dtype=torch.int32)


@pytest.fixture(scope="module", params=["standard", "plugin"])
def decode(request, tmp_path_factory):
    plugin = request.param == "plugin"
    (lowering_plugin if plugin else lowering_standard).register_schemas()
    batch, cap = torch.export.Dim("batch", min=1), torch.export.Dim("cap", min=2)
    path = tmp_path_factory.mktemp("decode") / f"{request.param}.onnx"
    dyn = ({0: batch}, {0: batch}, {0: batch}, {0: batch, 2: cap}, {0: batch, 2: cap}, {0: batch})
    fn = plugin_decode_attention if plugin else standard_decode_attention
    torch.onnx.export(DecodeToy().eval(), _decode_inputs(2, 7, [6, 3], 0), str(path), dynamo=True,
                      dynamic_shapes=dyn, input_names=["query", "key", "value", "past_key", "past_value", "length"],
                      output_names=["attn_out", "present_key", "present_value"],
                      custom_translation_table={torch.ops.zipvl.decode_attention.default: fn},
                      opset_version=lowering_plugin.OPSET if plugin else 18, verbose=False)
    return request.param, path


@pytest.mark.parametrize("c,lengths,seed", [(5, [4, 1], 0), (9, [3, 8, 0], 1), (40, [39], 2)])
def test_decode_lowering_matches_reference(decode, c, lengths, seed):
    """Rows of different lengths in one buffer: each attends to its own valid entries and itself; the token lands
    at slot length (in place, the runtime's binding, nothing else changes: tests/runtime)."""
    name, path = decode
    inputs = _decode_inputs(len(lengths), c, lengths, seed)
    ref = decode_attention(*inputs, D**-0.5, H, HKV, D)
    names = ["query", "key", "value", "past_key", "past_value", "length"]
    got = create_session(path).run(None, {k: t.numpy() for k, t in zip(names, inputs)})
    np.testing.assert_allclose(got[0], ref[0].numpy(), atol=2e-6, rtol=1e-5)
    for g, r in zip(got[1:], ref[1:]):  # slots [0, length]: the valid entries then the token; later ones unspecified
        for row, n in enumerate(lengths):
            np.testing.assert_array_equal(g[row, :, : n + 1], r[row, :, : n + 1].numpy())
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Attention" if name == "plugin" else "GroupQueryAttention") == 1
    assert "Softmax" not in ops and "MatMul" not in ops


def test_decode_reference_is_plain_attention():
    """The eager op (what the lowerings are checked against) is softmax attention over slots [0, length] after the
    write, computed independently here in fp64."""
    q, k, v, pk, pv, length = _decode_inputs(2, 6, [5, 2], 4)
    out, present_k, _present_v = decode_attention(q, k, v, pk, pv, length, D**-0.5, H, HKV, D)
    for r, n in enumerate(length.tolist()):
        keys = torch.cat([pk[r, :, :n], k[r]], dim=1).double()  # (H_kv, n + 1, d)
        vals = torch.cat([pv[r, :, :n], v[r]], dim=1).double()
        qr = q[r, :, 0].double().view(HKV, H // HKV, D)
        w = torch.softmax(qr @ keys.transpose(-1, -2) * D**-0.5, dim=-1)
        torch.testing.assert_close(out[r, :, 0].double(), (w @ vals).reshape(H, D), atol=1e-6, rtol=1e-6)
        assert torch.equal(present_k[r, :, n], k[r, :, 0]) and torch.equal(present_k[r, :, :n], pk[r, :, :n])
        assert torch.equal(present_k[r, :, n + 1:], pk[r, :, n + 1:])


@pytest.fixture(scope="module")
def decode_per_kv_head(tmp_path_factory):
    """The standard decode lowering with one length per KV head: buffers (B * H_kv, 1, C, d)."""
    lowering_standard.register_schemas()
    batch, cap = torch.export.Dim("batch", min=1), torch.export.Dim("cap", min=2)
    rows = HKV * batch
    path = tmp_path_factory.mktemp("decode") / "per_kv_head.onnx"
    dyn = ({0: batch}, {0: batch}, {0: batch}, {0: rows, 2: cap}, {0: rows, 2: cap}, {0: rows})
    torch.onnx.export(DecodeToy(per_kv_head=True).eval(), _per_head_inputs(2, 7, [6, 3, 2, 5], 0), str(path),
                      dynamo=True, dynamic_shapes=dyn,
                      input_names=["query", "key", "value", "past_key", "past_value", "length"],
                      output_names=["attn_out", "present_key", "present_value"],
                      custom_translation_table={torch.ops.zipvl.decode_attention.default: standard_decode_attention},
                      opset_version=18, verbose=False)
    return path


def _per_head_inputs(b, c, lengths, seed):
    q, k, v, past_k, past_v, _ = _decode_inputs(b, c, [0] * b, seed)
    return (q, k, v, past_k.reshape(b * HKV, 1, c, D), past_v.reshape(b * HKV, 1, c, D),
            torch.tensor(lengths, dtype=torch.int32))


@pytest.mark.parametrize("c,lengths,seed", [(7, [6, 3, 2, 5], 0), (12, [11, 0, 4, 9, 1, 1], 1)])
def test_decode_lowering_per_kv_head_lengths(decode_per_kv_head, c, lengths, seed):
    """Each KV head reads its own valid entries and writes the token at its own length (fp64 check per head)."""
    b = len(lengths) // HKV
    inputs = _per_head_inputs(b, c, lengths, seed)
    names = ["query", "key", "value", "past_key", "past_value", "length"]
    got = create_session(decode_per_kv_head).run(None, {n: t.numpy() for n, t in zip(names, inputs)})
    ref = decode_attention(*inputs, D**-0.5, H, HKV, D, per_kv_head=True)
    np.testing.assert_allclose(got[0], ref[0].numpy(), atol=2e-6, rtol=1e-5)
    q, k, v, pk, pv, length = inputs
    g = H // HKV
    for r in range(b):
        for j in range(HKV):
            n = int(length[r * HKV + j])
            keys = torch.cat([pk[r * HKV + j, 0, :n], k[r, j]], dim=0).double()  # (n + 1, d)
            vals = torch.cat([pv[r * HKV + j, 0, :n], v[r, j]], dim=0).double()
            w = torch.softmax(q[r, j * g:(j + 1) * g, 0].double() @ keys.T * D**-0.5, dim=-1)
            np.testing.assert_allclose(got[0][r, j * g:(j + 1) * g, 0], (w @ vals).numpy(), atol=1e-5, rtol=1e-5)
            np.testing.assert_array_equal(got[1][r * HKV + j, 0, : n + 1], keys.float().numpy())
