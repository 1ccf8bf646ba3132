# SPDX-License-Identifier: Apache-2.0
"""Build a TensorRT (or TensorRT-RTX) engine from a plugin-lowered ONNX graph with ``libzipvl_plugins.so``.

The ONNX parser maps each ``zipvl::ZipVLTokenSelect`` / ``zipvl::ZipVLSparseAttention`` node to our IPluginV3
creators (op_type = plugin name, node domain = plugin namespace, ``plugin_version`` = "1") and each ONNX
``Attention`` node (opset 23, what ``zipvl-build --ops plugin`` emits) to TensorRT's fused IAttention layer; the
report lists both. The library is loaded into the plugin registry and serialised into the plan
(``--setPluginsToSerialize``), so the engine runs without loading it again.

Backends, first importable wins: ``tensorrt`` (TensorRT 10.x, the Dockerfile image), ``tensorrt_rtx`` /
``tensorrt_rtx_bindings`` (``pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings``, which
builds engines even on a machine without a GPU). TensorRT-RTX's ONNX parser ``dlopen``s ``libtensorrt_rtx.so``
but the wheel ships only ``libtensorrt_rtx.so.1``; an exception then escapes a cleanup path and the process
aborts. :func:`build_engine_subprocess` (and the CLI) therefore build in a child process whose
``LD_LIBRARY_PATH`` holds a folder with the missing symlink.

CLI::

    python -m zipvl.plugins.tensorrt_build --onnx layer.onnx --engine layer.plan \\
        --minShapes query:1x4x1x16,key:1x2x1x16,value:1x2x1x16,probes:1x1 \\
        --optShapes ... --maxShapes ...
    python -m zipvl.plugins.tensorrt_build --demo      # builds onnx_graph.attention_layer_model (bf16)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ZipVLError
from . import _trt_builder
from .library import library_path

#: input name -> (min, opt, max) dims
Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


class TensorRTUnavailableError(ZipVLError, ImportError):
    """Neither TensorRT nor TensorRT-RTX can be imported."""


@dataclass
class EngineBuild:
    """What a build produced."""

    nbytes: int                                   #: size of the serialized plan
    backend: str                                  #: python module used (tensorrt / tensorrt_rtx_bindings)
    backend_version: str
    plugin_layers: list[str] = field(default_factory=list)  #: names of the PLUGIN_V3 layers in the network
    attention_layers: list[str] = field(default_factory=list)  #: fused IAttention layers (ONNX Attention nodes)
    engine_path: str | None = None
    trtexec: str = ""                             #: the equivalent trtexec command line


def import_tensorrt():
    """The first importable TensorRT flavour, or a :class:`TensorRTUnavailableError` saying what to do."""
    try:
        return _trt_builder.import_tensorrt()
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"TensorRT is not available in this environment ({exc}). Build engines inside the image of the "
            "repository's Dockerfile (`docker build -t zipvl-trt .`, then run this command in it), or install "
            "TensorRT-RTX: `pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings`."
        ) from exc


def _dims(d) -> str:
    return "x".join(str(int(x)) for x in d)


def _shape_flags(shapes: Shapes) -> list[str]:
    return [f"--{flag}=" + ",".join(f"{name}:{_dims(s[i])}" for name, s in shapes.items())
            for i, flag in enumerate(("minShapes", "optShapes", "maxShapes"))]


def trtexec_command(onnx_path, plugin_lib, shapes: Shapes, engine_path=None, fp16: bool = False) -> str:
    """The ``trtexec`` line equivalent to :func:`build_engine` (TensorRT-RTX's ``tensorrt_rtx`` tool takes the same
    flags except ``--fp16``: RTX networks are strongly typed)."""
    lib = Path(plugin_lib).resolve()
    parts = ["trtexec", f"--onnx={Path(onnx_path).resolve()}"]
    if engine_path:
        parts.append(f"--saveEngine={Path(engine_path).resolve()}")
    parts += [f"--dynamicPlugins={lib}", f"--setPluginsToSerialize={lib}"]
    if shapes:
        parts += _shape_flags(shapes)
    if fp16:
        parts.append("--fp16")
    return " ".join(parts)


def rtx_symlink_dir() -> Path | None:
    """A folder holding ``libtensorrt_rtx.so -> <wheel>/libtensorrt_rtx.so.1`` (None when RTX is not installed or
    the wheel folder already has the plain name)."""
    libs = _trt_builder.rtx_libs_dir()
    if libs is None or (libs / "libtensorrt_rtx.so").exists() or not (libs / "libtensorrt_rtx.so.1").exists():
        return None
    target = libs / "libtensorrt_rtx.so.1"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zipvl" / "tensorrt_rtx"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.mkdtemp(prefix="zipvl_rtx_"))
    link = cache / "libtensorrt_rtx.so"
    if not (link.is_symlink() and link.resolve() == target.resolve()):
        tmp = cache / f".libtensorrt_rtx.so.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)  # atomic: concurrent builds never see a half-made link
    return cache


def _has_cuda_device() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _request(onnx_path, shapes, plugin_lib, engine_path, fp16, compute_capability, workspace_mb,
             parse_only=False) -> dict:
    return {"onnx": str(onnx_path), "shapes": {k: [list(s) for s in v] for k, v in shapes.items()},
            "plugin_lib": str(plugin_lib), "engine": str(engine_path) if engine_path else None, "fp16": bool(fp16),
            "compute_capability": compute_capability, "workspace_mb": workspace_mb, "has_gpu": _has_cuda_device(),
            "parse_only": bool(parse_only)}


def build_engine(onnx_path, shapes: Shapes, plugin_lib=None, engine_path=None, fp16: bool = False,
                 compute_capability: str | None = None, workspace_mb: int | None = None,
                 echo: bool = True) -> EngineBuild:
    """Parse ``onnx_path`` with the zipvl plugins registered and build a serialized engine, in this process.

    Parameters
    ----------
    onnx_path : plugin-lowered ONNX file (zipvl nodes in domain ``zipvl``)
    shapes : input name -> (min, opt, max) dims for the optimization profile
    plugin_lib : ``libzipvl_plugins.so`` (default: the built one, see :mod:`.library`)
    engine_path : where to write the plan (optional)
    fp16 : TensorRT only: allow fp16 kernels (RTX is strongly typed: types come from the graph)
    compute_capability : TensorRT-RTX target, e.g. ``"SM80"``; default the current GPU, or SM80 without one
    workspace_mb : workspace pool limit
    echo : print the equivalent trtexec command to stderr

    Raises :class:`TensorRTUnavailableError` without TensorRT, :class:`ZipVLError` when parsing or building fails
    (with TensorRT-RTX, unless this process can load ``libtensorrt_rtx.so``: use :func:`build_engine_subprocess`).
    """
    import_tensorrt()
    plugin_lib = Path(plugin_lib) if plugin_lib else library_path("plugins")
    command = trtexec_command(onnx_path, plugin_lib, shapes, engine_path, fp16)
    if echo:
        print(f"[zipvl] equivalent: {command}", file=sys.stderr)
    try:
        report = _trt_builder.build(
            _request(onnx_path, shapes, plugin_lib, engine_path, fp16, compute_capability, workspace_mb))
    except RuntimeError as exc:
        raise ZipVLError(str(exc)) from exc
    return EngineBuild(**report, trtexec=command)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    link_dir = rtx_symlink_dir()
    if link_dir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(link_dir), env.get("LD_LIBRARY_PATH")) if p)
    return env


def build_engine_subprocess(onnx_path, shapes: Shapes, plugin_lib=None, engine_path=None, fp16: bool = False,
                            compute_capability: str | None = None, workspace_mb: int | None = None,
                            echo: bool = True, timeout: float = 600, parse_only: bool = False) -> EngineBuild:
    """:func:`build_engine` in a child Python with the environment TensorRT-RTX needs (see the module doc).
    ``parse_only``: stop after the ONNX parse (the report lists the network's plugin and attention layers)."""
    import_tensorrt()  # fail here, with the clear message, rather than in the child
    plugin_lib = Path(plugin_lib) if plugin_lib else library_path("plugins")
    command = trtexec_command(onnx_path, plugin_lib, shapes, engine_path, fp16)
    if echo:
        print(f"[zipvl] equivalent: {command}", file=sys.stderr)
    request = _request(onnx_path, shapes, plugin_lib, engine_path, fp16, compute_capability, workspace_mb,
                       parse_only)
    proc = subprocess.run([sys.executable, _trt_builder.__file__, json.dumps(request)], capture_output=True,
                          text=True, timeout=timeout, env=_child_env(), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(_trt_builder.REPORT_TAG):
            return EngineBuild(**json.loads(line[len(_trt_builder.REPORT_TAG):]), trtexec=command)
    output = proc.stdout + proc.stderr
    # The child's own error line, our plugins' messages ([zipvl] ...) and TensorRT's errors say why.
    reasons = [line.removeprefix(_trt_builder.ERROR_TAG) for line in output.splitlines()
               if line.startswith(_trt_builder.ERROR_TAG) or "[zipvl]" in line or "[E]" in line]
    raise ZipVLError(f"engine build failed (exit {proc.returncode}):\n" + "\n".join(reasons or [output[-2000:]]))


def _demo_model(folder: Path) -> tuple[Path, Shapes]:
    import onnx

    from .onnx_graph import attention_layer_model

    path = folder / "zipvl_attention_layer.onnx"
    onnx.save(attention_layer_model(num_heads=4, num_kv_heads=2, head_dim=16, tau=0.9), str(path))  # bf16
    shapes: Shapes = {
        "query": ((1, 4, 1, 16), (1, 4, 256, 16), (1, 4, 1024, 16)),
        "key": ((1, 2, 1, 16), (1, 2, 256, 16), (1, 2, 1024, 16)),
        "value": ((1, 2, 1, 16), (1, 2, 256, 16), (1, 2, 1024, 16)),
        "probes": ((1, 1), (1, 128), (1, 128)),
    }
    return path, shapes


def _shape_arg(text: str | None) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in (text or "").split(","):
        if item:
            name, _, dims = item.rpartition(":")
            out[name] = tuple(int(x) for x in dims.split("x"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zipvl.plugins.tensorrt_build",
                                     description="Build a TensorRT engine from a plugin-lowered ONNX graph.")
    parser.add_argument("--onnx", help="plugin-lowered ONNX model")
    parser.add_argument("--plugins", help="libzipvl_plugins.so (default: the built one)")
    parser.add_argument("--engine", help="output plan file")
    parser.add_argument("--minShapes", help="name:AxBxC,... (trtexec syntax)")
    parser.add_argument("--optShapes")
    parser.add_argument("--maxShapes")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--compute-capability", help="TensorRT-RTX target, e.g. SM80 (default: current GPU or SM80)")
    parser.add_argument("--demo", action="store_true", help="build the one-layer demo graph")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            onnx_path, shapes = _demo_model(Path(tmp))
        else:
            if not args.onnx:
                parser.error("--onnx is required (or --demo)")
            mins, opts, maxs = (_shape_arg(a) for a in (args.minShapes, args.optShapes, args.maxShapes))
            try:
                shapes = {n: (mins.get(n) or opts[n], opts.get(n) or mins[n], maxs.get(n) or opts[n])
                          for n in dict.fromkeys([*mins, *opts, *maxs])}
            except KeyError as exc:
                parser.error(f"input {exc} needs at least its opt shape")
            onnx_path = Path(args.onnx)
        report = build_engine_subprocess(onnx_path, shapes, args.plugins, args.engine, args.fp16,
                                         args.compute_capability)
    print(f"built {report.nbytes} bytes with {report.backend} {report.backend_version}; plugin layers: "
          f"{', '.join(report.plugin_layers)}; fused attention layers: {len(report.attention_layers)}"
          + (f"; saved to {report.engine_path}" if report.engine_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
