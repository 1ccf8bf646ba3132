# SPDX-License-Identifier: Apache-2.0
"""Plugin-lowered ONNX -> TensorRT(-RTX) engine with our plugins resolved by the ONNX parser and the ONNX Attention
node mapped to TensorRT's fused attention layer (IAttention).

TensorRT-RTX (``pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings``) parses and builds on a
machine without a GPU; running the engine needs one (``gpu`` test at the end). Builds run in a subprocess (see
zipvl.plugins.tensorrt_build: the RTX parser aborts the process without a libtensorrt_rtx.so symlink).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zipvl
from zipvl.plugins import tensorrt_build
from zipvl.plugins.tensorrt_build import TensorRTUnavailableError

onnx = pytest.importorskip("onnx")


def _tensorrt_available() -> bool:
    try:
        tensorrt_build.import_tensorrt()
    except TensorRTUnavailableError:
        return False
    return True


needs_trt = pytest.mark.skipif(not _tensorrt_available(), reason="neither tensorrt nor tensorrt_rtx is importable")


def _shapes(h, h_kv, d, n_max=512, b_max=2):
    return {
        "query": ((1, h, 1, d), (1, h, 128, d), (b_max, h, n_max, d)),
        "key": ((1, h_kv, 1, d), (1, h_kv, 128, d), (b_max, h_kv, n_max, d)),
        "value": ((1, h_kv, 1, d), (1, h_kv, 128, d), (b_max, h_kv, n_max, d)),
        "probes": ((1, 1), (1, 128), (b_max, 128)),
    }


def test_missing_tensorrt_names_the_dockerfile(monkeypatch):
    def no_module(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(tensorrt_build._trt_builder.importlib, "import_module", no_module)
    with pytest.raises(TensorRTUnavailableError, match="Dockerfile") as err:
        tensorrt_build.build_engine("m.onnx", _shapes(4, 2, 16))
    assert "tensorrt-rtx-cu13-libs" in str(err.value)


def test_trtexec_command_mirrors_the_build(tmp_path):
    cmd = tensorrt_build.trtexec_command(tmp_path / "m.onnx", tmp_path / "libzipvl_plugins.so", _shapes(4, 2, 16),
                                         tmp_path / "m.plan")
    lib = tmp_path / "libzipvl_plugins.so"
    assert cmd.startswith("trtexec --onnx=")
    assert f"--dynamicPlugins={lib}" in cmd and f"--setPluginsToSerialize={lib}" in cmd
    assert "--minShapes=query:1x4x1x16,key:1x2x1x16,value:1x2x1x16,probes:1x1" in cmd
    assert "--maxShapes=query:2x4x512x16,key:2x2x512x16,value:2x2x512x16,probes:2x128" in cmd


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_builds_with_plugins(cuda_libraries, tmp_path, dtype):
    from zipvl.plugins.onnx_graph import plugin_layer_model

    path = tmp_path / "layer.onnx"
    onnx.save(plugin_layer_model(num_heads=8, num_kv_heads=2, head_dim=64, tau=0.95, dtype=dtype), str(path))
    plan = tmp_path / "layer.plan"
    report = tensorrt_build.build_engine_subprocess(path, _shapes(8, 2, 64), cuda_libraries["plugins"], plan)
    assert report.plugin_layers == ["ZipVLTokenSelect", "ZipVLSparseAttention"]
    # The plan embeds the plugin library (--setPluginsToSerialize): it is larger than the library itself.
    assert plan.stat().st_size == report.nbytes > cuda_libraries["plugins"].stat().st_size
    assert "--setPluginsToSerialize=" in report.trtexec


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_engine_builds_with_native_attention(cuda_libraries, tmp_path, dtype):
    """The --ops plugin prefill layer: ZipVLTokenSelect is the only plugin, the attention is a native IAttention."""
    from zipvl.plugins.onnx_graph import attention_layer_model

    path = tmp_path / "layer.onnx"
    model = attention_layer_model(num_heads=8, num_kv_heads=2, head_dim=64, tau=0.95, dtype=dtype)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    shapes = {k: tuple((1, *s[1:]) for s in v) for k, v in _shapes(8, 2, 64).items()}  # prefill batch is 1
    report = tensorrt_build.build_engine_subprocess(path, shapes, cuda_libraries["plugins"], tmp_path / "layer.plan")
    assert report.plugin_layers == ["ZipVLTokenSelect"]
    assert len(report.attention_layers) == 1
    assert (tmp_path / "layer.plan").stat().st_size == report.nbytes > 0


@pytest.mark.trt
@needs_trt
def test_float32_attention_has_no_rtx_kernel(cuda_libraries, tmp_path):
    """TensorRT-RTX 1.7 parses a float32 Attention but has no fused kernel for it: the build fails with that
    reason (engines for TensorRT are built in bf16 / fp16; docs/engine.md)."""
    from zipvl.plugins.onnx_graph import attention_layer_model

    if tensorrt_build.import_tensorrt().__name__ == "tensorrt":
        pytest.skip("TensorRT-RTX behaviour")
    path = tmp_path / "layer.onnx"
    onnx.save(attention_layer_model(8, 2, 64, 0.95, dtype="float32"), str(path))
    shapes = {k: tuple((1, *s[1:]) for s in v) for k, v in _shapes(8, 2, 64).items()}
    with pytest.raises(zipvl.ZipVLError, match="not supported by a dedicated kernel"):
        tensorrt_build.build_engine_subprocess(path, shapes, cuda_libraries["plugins"])


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("tau", [0.975, 1.0])
def test_exported_plugin_engine_parses_to_native_attention(cuda_libraries, tau):
    """zipvl-build --ops plugin (tiny LLaVA): TensorRT parses the whole prefill and decode graphs; every layer's
    attention is an IAttention, the selection the ZipVLTokenSelect plugin (none in a dense engine)."""
    from zipvl.validate.tiny import tiny_engine

    engine = tiny_engine("llava", "plugin", tau)
    layers = json.loads((engine / "manifest.json").read_text())["model"]["num_layers"]
    for graph, selects in (("prefill", layers if tau < 1.0 else 0), ("decode", 0)):
        report = tensorrt_build.build_engine_subprocess(engine / f"{graph}.onnx", {}, cuda_libraries["plugins"],
                                                        parse_only=True)
        assert len(report.attention_layers) == layers, graph
        assert len(report.plugin_layers) == selects  # the only custom nodes: ZipVLTokenSelect (test_engine_graphs)


@pytest.mark.trt
@needs_trt
def test_missing_attribute_is_reported(cuda_libraries, tmp_path):
    from zipvl.plugins.onnx_graph import plugin_layer_model

    model = plugin_layer_model(num_heads=8, num_kv_heads=2, head_dim=64, tau=0.95)
    select = model.graph.node[0]
    del select.attribute[[a.name for a in select.attribute].index("tau")]
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(zipvl.ZipVLError, match="missing required attribute .tau."):
        tensorrt_build.build_engine_subprocess(path, _shapes(8, 2, 64), cuda_libraries["plugins"])


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_engine_runs_and_matches_reference(cuda_libraries, selection_checker, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from zipvl.plugins.onnx_graph import OUTPUTS, plugin_layer_model

    trt = tensorrt_build.import_tensorrt()
    b, h, h_kv, n, d, tau = 2, 8, 2, 300, 64, float(np.float32(0.95))
    path = tmp_path / "layer.onnx"
    onnx.save(plugin_layer_model(h, h_kv, d, tau), str(path))
    report = tensorrt_build.build_engine_subprocess(path, _shapes(h, h_kv, d), cuda_libraries["plugins"],
                                                    tmp_path / "layer.plan")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if hasattr(runtime, "engine_host_code_allowed"):
        runtime.engine_host_code_allowed = True  # the plan carries libzipvl_plugins.so
    engine = runtime.deserialize_cuda_engine((tmp_path / "layer.plan").read_bytes())
    assert engine is not None, report
    context = engine.create_execution_context()

    gen = torch.Generator().manual_seed(0)
    feeds = {"query": torch.randn(b, h, n, d, generator=gen) * 2, "key": torch.randn(b, h_kv, n, d, generator=gen),
             "value": torch.randn(b, h_kv, n, d, generator=gen)}
    feeds["probes"] = zipvl.probe_positions(n).to(torch.int32).expand(b, -1).contiguous()
    feeds = {k: v.cuda() for k, v in feeds.items()}
    outs = {"kept_indices": torch.empty(b, n, dtype=torch.int32), "kept_count": torch.empty(b, dtype=torch.int32),
            "mass": torch.empty(b, n), "attn_out": torch.empty(b, h, n, d), "key_compact": torch.empty(b, h_kv, n, d),
            "value_compact": torch.empty(b, h_kv, n, d)}
    outs = {k: v.cuda() for k, v in outs.items()}
    for name, tensor in feeds.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    for name in OUTPUTS:
        context.set_tensor_address(name, outs[name].data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()

    q, k, v, probes = (feeds[x].cpu() for x in ("query", "key", "value", "probes"))
    reference = zipvl.select_tokens(q, k, probes, tau)
    selection_checker(outs["kept_indices"].cpu(), outs["kept_count"].cpu(), outs["mass"].cpu(), reference, probes,
                      h, tau, mass_rtol=1e-4)
    kept = reference.kept
    expected = zipvl.sparse_attention(q, k, v, kept)
    torch.testing.assert_close(outs["attn_out"].cpu(), expected, atol=1e-4, rtol=1e-4)
