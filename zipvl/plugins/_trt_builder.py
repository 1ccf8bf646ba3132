# SPDX-License-Identifier: Apache-2.0
"""The engine-build core of :mod:`zipvl.plugins.tensorrt_build`, importable without zipvl (stdlib + TensorRT).

:func:`zipvl.plugins.tensorrt_build.build_engine_subprocess` runs this file as a script, so the child process
loads neither zipvl nor torch (seconds saved per build): ``python _trt_builder.py '<json request>'`` prints one
``ZIPVL_ENGINE_BUILD {...}`` line (or ``ZIPVL_ENGINE_ERROR <message>`` and exits 1).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

BACKENDS = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")
REPORT_TAG = "ZIPVL_ENGINE_BUILD "
ERROR_TAG = "ZIPVL_ENGINE_ERROR "


def import_tensorrt():
    """The first importable TensorRT flavour; ImportError listing every attempt otherwise."""
    errors = []
    for name in BACKENDS:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise ImportError("; ".join(errors))


def rtx_libs_dir() -> Path | None:
    """The tensorrt_rtx_libs wheel folder, or None."""
    try:
        import tensorrt_rtx_libs
    except ImportError:
        return None
    return Path(tensorrt_rtx_libs.__file__).parent


def rtx_parser_ready() -> bool:
    """True when this process can dlopen plain ``libtensorrt_rtx.so`` (the RTX ONNX parser aborts otherwise)."""
    libs = rtx_libs_dir()
    folders = ([libs] if libs else []) + [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    return any((f / "libtensorrt_rtx.so").exists() for f in folders)


def build(request: dict) -> dict:
    """Parse request["onnx"] with the plugin library registered and build a serialized engine.

    request keys: onnx, shapes ({name: [min, opt, max]}), plugin_lib, engine (optional), fp16, compute_capability
    (TensorRT-RTX target such as "SM80"), workspace_mb, has_gpu, parse_only (stop after parsing: nbytes 0). Returns the report fields of
    ``tensorrt_build.EngineBuild`` (except trtexec). Raises RuntimeError with the reason on failure.
    """
    trt = import_tensorrt()
    is_rtx = trt.__name__ != "tensorrt"
    if is_rtx and not rtx_parser_ready():
        raise RuntimeError(
            "TensorRT-RTX's ONNX parser would abort this process (libtensorrt_rtx.so is not loadable): build in a "
            "subprocess (tensorrt_build.build_engine_subprocess) or put a libtensorrt_rtx.so symlink on "
            "LD_LIBRARY_PATH before Python starts (tensorrt_build.rtx_symlink_dir())"
        )
    plugin_lib = str(request["plugin_lib"])
    logger = trt.Logger(trt.Logger.WARNING)
    if trt.get_plugin_registry().load_library(plugin_lib) is None:
        raise RuntimeError(f"TensorRT could not load {plugin_lib} (does it export getCreators and setLoggerFinder?)")
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(request["onnx"])):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise RuntimeError(f"ONNX parse of {request['onnx']} failed: {errors}")
    plugin_layers = [network.get_layer(i).name for i in range(network.num_layers)
                     if network.get_layer(i).type == trt.LayerType.PLUGIN_V3]
    # The parser maps ONNX Attention to the fused IAttention, which shows as an ATTENTION_INPUT/OUTPUT layer pair.
    fused = getattr(trt.LayerType, "ATTENTION_OUTPUT", None)
    attention_layers = [network.get_layer(i).name for i in range(network.num_layers)
                        if fused is not None and network.get_layer(i).type == fused]
    report = {"nbytes": 0, "backend": trt.__name__, "backend_version": str(trt.__version__),
              "plugin_layers": plugin_layers, "attention_layers": attention_layers, "engine_path": None}
    if request.get("parse_only"):
        return report

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in request["shapes"].items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    config.plugins_to_serialize = [plugin_lib]  # the plan carries the library (--setPluginsToSerialize)
    if request.get("workspace_mb"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(request["workspace_mb"]) << 20)
    if request.get("fp16") and not is_rtx:
        config.set_flag(trt.BuilderFlag.FP16)
    target = request.get("compute_capability")
    if is_rtx and (target or not request.get("has_gpu")):
        # Without a GPU the RTX builder must be told which architecture to target.
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, target or "SM80"), 0)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"building the engine for {request['onnx']} failed (see the TensorRT log above)")
    engine = request.get("engine")
    if engine:
        Path(engine).write_bytes(bytes(plan))
    return {**report, "nbytes": int(plan.nbytes), "engine_path": str(engine) if engine else None}


if __name__ == "__main__":
    try:
        print(REPORT_TAG + json.dumps(build(json.loads(sys.argv[1]))), flush=True)
    except Exception as exc:  # noqa: BLE001 - reported to the parent process
        print(ERROR_TAG + " ".join(str(exc).split("\n")), flush=True)
        sys.exit(1)
