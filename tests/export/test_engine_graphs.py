# SPDX-License-Identifier: Apache-2.0
"""The exported engine graphs run every attention over keys as one fused node and hold no n x n tensor.

Tiny LLaVA engines, both lowerings, tau 0.975 and 1: the prefill has one GroupQueryAttention (standard) or ONNX
Attention (plugin) per layer and no Softmax but the probe attention's (m x n); the decode step has one fused node
per layer and no Softmax. Every intermediate tensor is made a graph output and the graph is run at a sequence
length (and cache capacity) that no model dimension shares: no tensor has that length on two axes.
"""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import onnx
import pytest

from zipvl.reference.selection import probe_positions
from zipvl.runtime.session import create_session
from zipvl.validate.tiny import tiny_config, tiny_engine

FUSED = {"standard": "GroupQueryAttention", "plugin": "Attention"}
N = 61  # prompt length: prime, shared by no dimension of the tiny models (> the 16 probes)
C = 37  # decode cache capacity, same idea


@pytest.fixture(scope="module", params=[("standard", 0.975), ("standard", 1.0), ("plugin", 0.975), ("plugin", 1.0)],
                ids=lambda p: f"{p[0]}-{p[1]}")
def engine(request):
    ops, tau = request.param
    return ops, tau, tiny_engine("llava", ops, tau)


def _run_all(engine_dir, name, feeds, tmp_path, plugin):
    """Run graph ``name`` with every node output exposed: {tensor name: shape}, and the model."""
    model = onnx.load(str(engine_dir / f"{name}.onnx"), load_external_data=False)
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=out))
                known.add(out)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    shutil.copy(engine_dir / "weights.bin", tmp_path / "weights.bin")  # a tiny model: a few MB
    session = create_session(path, plugin=plugin, threads=1)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, (np.shape(v) for v in session.run(None, feeds)))), model


def test_prefill_fuses_every_layer_and_holds_no_n_by_n_tensor(engine, tmp_path):
    ops, tau, path = engine
    hidden = onnx.load(str(path / "prefill.onnx"), load_external_data=False).graph.input[0]
    width = hidden.type.tensor_type.shape.dim[2].dim_value
    rng = np.random.default_rng(0)
    feeds = {"inputs_embeds": (rng.standard_normal((1, N, width)) * 0.02).astype(np.float32),
             "position_ids": np.arange(N, dtype=np.int64)[None],
             "probes": probe_positions(N, tiny_config(tau)).numpy().astype(np.int32)[None]}
    m = feeds["probes"].shape[1]
    shapes, model = _run_all(path, "prefill", feeds, tmp_path, plugin=ops == "plugin" and tau < 1.0)
    layers = sum(1 for o in model.graph.output if o.name.startswith("kept_count."))
    count = Counter(node.op_type for node in model.graph.node)
    assert count[FUSED[ops]] == layers
    assert sum(list(s).count(N) == 1 for s in shapes.values()) > 10 * layers  # the check sees the n-long tensors
    assert [name for name, s in shapes.items() if list(s).count(N) >= 2] == []
    softmax = [node for node in model.graph.node if node.op_type == "Softmax"]
    # The probe attention is the only decomposed softmax (standard lowering, sparse layers; the plugin selects inside
    # ZipVLTokenSelect): (H_kv, g, m, n), m probe rows over n keys.
    assert len(softmax) == (layers if ops == "standard" and tau < 1.0 else 0)
    for node in softmax:
        assert shapes[node.input[0]][-2:] == (m, N), shapes[node.input[0]]
    if ops == "plugin":
        assert count["ZipVLTokenSelect"] == (layers if tau < 1.0 else 0) and count["ZipVLSparseAttention"] == 0


def test_decode_fuses_every_layer_and_holds_no_cache_square(engine, tmp_path):
    ops, _tau, path = engine
    model = onnx.load(str(path / "decode.onnx"), load_external_data=False)
    layers = [i.name.split(".")[1] for i in model.graph.input if i.name.endswith(".length")]
    assert model.graph.input[0].name == "input_ids"  # the step embeds the generated token itself
    kv = next(i for i in model.graph.input if i.name == "past.0.key").type.tensor_type.shape.dim
    h_kv, d = kv[1].dim_value, kv[3].dim_value
    rng = np.random.default_rng(1)
    feeds = {"input_ids": np.array([[7]], dtype=np.int64), "position_ids": np.array([[40]], dtype=np.int64)}
    for i in layers:
        feeds[f"past.{i}.key"] = rng.standard_normal((1, h_kv, C, d)).astype(np.float32)
        feeds[f"past.{i}.value"] = rng.standard_normal((1, h_kv, C, d)).astype(np.float32)
        feeds[f"past.{i}.length"] = np.array([C - 5], dtype=np.int32)
    shapes, model = _run_all(path, "decode", feeds, tmp_path, plugin=False)
    count = Counter(node.op_type for node in model.graph.node)
    assert count[FUSED[ops]] == len(layers) and count["Softmax"] == 0
    assert sum(list(s).count(C) == 1 for s in shapes.values()) >= 2 * len(layers)
    assert [name for name, s in shapes.items() if list(s).count(C) >= 2] == []
    outputs = {o.name for o in model.graph.output}
    assert "probs.0" not in outputs and {"present.0.key", "present.0.value", "query.0"} <= outputs
