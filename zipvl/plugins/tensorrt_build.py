# SPDX-License-Identifier: Apache-2.0
"""Build a TensorRT (or TensorRT-RTX) engine from a plugin-lowered ONNX graph with ``libzipvl_plugins.so``.

The ONNX parser maps each ``zipvl::ZipVLTokenSelect`` / ``zipvl::ZipVLSparseAttention`` node to our IPluginV3
creators (op_type = plugin name, node domain = plugin namespace, ``plugin_version`` = "1"). The library is loaded
into the plugin registry and serialised into the plan (``--setPluginsToSerialize``), so the engine runs without
loading it again.

Backends, first importable wins: ``tensorrt`` (TensorRT 10.x, the Dockerfile image), ``tensorrt_rtx`` /
``tensorrt_rtx_bindings`` (``pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings``, which
builds engines even on a machine without a GPU). TensorRT-RTX's ONNX parser ``dlopen``s ``libtensorrt_rtx.so``
but the wheel ships only ``libtensorrt_rtx.so.1``; an exception then escapes a cleanup path and the process
aborts. :func:`build_engine_subprocess` (and the CLI) therefore run the build in a child process whose
``LD_LIBRARY_PATH`` holds a folder with the missing symlink.

CLI::

    python -m zipvl.plugins.tensorrt_build --onnx layer.onnx --engine layer.plan \\
        --minShapes query:1x4x1x16,key:1x2x1x16,value:1x2x1x16,probes:1x1 \\
        --optShapes ... --maxShapes ...
    python -m zipvl.plugins.tensorrt_build --demo      # builds the one-layer graph of onnx_graph.py
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ZipVLError
from .library import library_path

#: input name -> (min, opt, max) dims
Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

_BACKENDS = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")
_REPORT_TAG = "ZIPVL_ENGINE_BUILD "


class TensorRTUnavailableError(ZipVLError, ImportError):
    """Neither TensorRT nor TensorRT-RTX can be imported."""


@dataclass
class EngineBuild:
    """What a build produced."""

    nbytes: int                                   #: size of the serialized plan
    backend: str                                  #: python module used (tensorrt / tensorrt_rtx_bindings)
    backend_version: str
    plugin_layers: list[str] = field(default_factory=list)  #: names of the PLUGIN_V3 layers in the network
    engine_path: str | None = None
    trtexec: str = ""                             #: the equivalent trtexec command line


def import_tensorrt():
    """The first importable TensorRT flavour, or a :class:`TensorRTUnavailableError` saying what to do."""
    errors = []
    for name in _BACKENDS:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise TensorRTUnavailableError(
        "TensorRT is not available in this environment (" + "; ".join(errors) + "). Build engines inside the "
        "image of the repository's Dockerfile (`docker build -t zipvl-trt .`, then run this command in it), or "
        "install TensorRT-RTX: `pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings`."
    )


def _dims(d) -> str:
    return "x".join(str(int(x)) for x in d)


def trtexec_command(onnx_path, plugin_lib, shapes: Shapes, engine_path=None, fp16: bool = False) -> str:
    """The ``trtexec`` line equivalent to :func:`build_engine` (TensorRT-RTX's ``tensorrt_rtx`` tool takes the
    same flags except ``--fp16``: RTX networks are strongly typed)."""
    lib = Path(plugin_lib).resolve()
    parts = ["trtexec", f"--onnx={Path(onnx_path).resolve()}"]
    if engine_path:
        parts.append(f"--saveEngine={Path(engine_path).resolve()}")
    parts += [f"--dynamicPlugins={lib}", f"--setPluginsToSerialize={lib}"]
    for i, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
        if shapes:
            parts.append(flag + "=" + ",".join(f"{name}:{_dims(s[i])}" for name, s in shapes.items()))
    if fp16:
        parts.append("--fp16")
    return " ".join(parts)


def _rtx_libs_dir() -> Path | None:
    try:
        import tensorrt_rtx_libs
    except ImportError:
        return None
    return Path(tensorrt_rtx_libs.__file__).parent


def rtx_symlink_dir() -> Path | None:
    """A folder holding ``libtensorrt_rtx.so -> <wheel>/libtensorrt_rtx.so.1`` (None when RTX is not installed or
    the wheel folder already has the plain name)."""
    libs = _rtx_libs_dir()
    if libs is None or (libs / "libtensorrt_rtx.so").exists():
        return None
    target = libs / "libtensorrt_rtx.so.1"
    if not target.exists():
        return None
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


def _rtx_parser_ready() -> bool:
    """True when this process can dlopen plain ``libtensorrt_rtx.so`` (so the RTX parser will not abort)."""
    libs = _rtx_libs_dir()
    folders = ([libs] if libs else []) + [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    return any((f / "libtensorrt_rtx.so").exists() for f in folders)


def _has_cuda_device() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def build_engine(
    onnx_path,
    shapes: Shapes,
    plugin_lib=None,
    engine_path=None,
    fp16: bool = False,
    compute_capability: str | None = None,
    workspace_mb: int | None = None,
    echo: bool = True,
) -> EngineBuild:
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

    Raises :class:`TensorRTUnavailableError` without TensorRT, :class:`ZipVLError` when parsing or building fails.
    """
    trt = import_tensorrt()
    is_rtx = trt.__name__ != "tensorrt"
    if is_rtx and not _rtx_parser_ready():
        raise ZipVLError(
            "TensorRT-RTX's ONNX parser would abort this process (libtensorrt_rtx.so is not loadable): use "
            "build_engine_subprocess(), or set LD_LIBRARY_PATH to zipvl.plugins.tensorrt_build.rtx_symlink_dir() "
            "before starting Python"
        )
    plugin_lib = Path(plugin_lib) if plugin_lib else library_path("plugins")
    command = trtexec_command(onnx_path, plugin_lib, shapes, engine_path, fp16)
    if echo:
        print(f"[zipvl] equivalent: {command}", file=sys.stderr)

    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    if registry.load_library(str(plugin_lib)) is None:
        raise ZipVLError(f"TensorRT could not load {plugin_lib} (does it export getCreators and setLoggerFinder?)")
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ZipVLError(f"ONNX parse of {onnx_path} failed: {errors}")
    plugin_layers = [network.get_layer(i).name for i in range(network.num_layers)
                     if network.get_layer(i).type == trt.LayerType.PLUGIN_V3]

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    config.plugins_to_serialize = [str(plugin_lib)]
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16 and not is_rtx:
        config.set_flag(trt.BuilderFlag.FP16)
    if is_rtx and (compute_capability or not _has_cuda_device()):
        # Without a GPU the RTX builder must be told which architecture to target.
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, compute_capability or "SM80"), 0)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ZipVLError(f"building the engine for {onnx_path} failed (see the TensorRT log above)")
    if engine_path:
        Path(engine_path).write_bytes(bytes(plan))
    return EngineBuild(nbytes=int(plan.nbytes), backend=trt.__name__, backend_version=str(trt.__version__),
                       plugin_layers=plugin_layers, engine_path=str(engine_path) if engine_path else None,
                       trtexec=command)


def _shape_arg(text: str | None) -> dict[str, tuple[int, ...]]:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, _, dims = item.rpartition(":")
        out[name] = tuple(int(x) for x in dims.split("x"))
    return out


def _shape_flags(shapes: Shapes) -> list[str]:
    return [f"--{flag}=" + ",".join(f"{n}:{_dims(s[i])}" for n, s in shapes.items())
            for i, flag in enumerate(("minShapes", "optShapes", "maxShapes"))]


def build_engine_subprocess(onnx_path, shapes: Shapes, plugin_lib=None, engine_path=None, fp16: bool = False,
                            compute_capability: str | None = None, timeout: float = 600) -> EngineBuild:
    """:func:`build_engine` in a child Python with the environment TensorRT-RTX needs (see the module doc)."""
    import_tensorrt()  # fail here, with the clear message, rather than in the child
    plugin_lib = Path(plugin_lib) if plugin_lib else library_path("plugins")
    cmd = [sys.executable, "-m", "zipvl.plugins.tensorrt_build", "--onnx", str(onnx_path), "--plugins",
           str(plugin_lib), "--json", *_shape_flags(shapes)]
    if engine_path:
        cmd += ["--engine", str(engine_path)]
    if fp16:
        cmd.append("--fp16")
    if compute_capability:
        cmd += ["--compute-capability", compute_capability]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env())
    for line in proc.stdout.splitlines():
        if line.startswith(_REPORT_TAG):
            return EngineBuild(**json.loads(line[len(_REPORT_TAG):]))
    output = proc.stdout + proc.stderr
    # Our plugins' own messages ([zipvl] ...) and TensorRT's errors say why; the tail shows where.
    reasons = "\n".join(line for line in output.splitlines() if "[zipvl]" in line or "[E]" in line)
    raise ZipVLError(f"engine build subprocess failed (exit {proc.returncode}):\n{reasons}\n...\n{output[-2000:]}")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])  # this zipvl, not another install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    link_dir = rtx_symlink_dir()
    if link_dir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(link_dir), env.get("LD_LIBRARY_PATH")) if p)
    return env


def _demo_model(folder: Path) -> tuple[Path, Shapes]:
    import onnx

    from .onnx_graph import plugin_layer_model

    path = folder / "zipvl_plugin_layer.onnx"
    onnx.save(plugin_layer_model(num_heads=4, num_kv_heads=2, head_dim=16, tau=0.9), str(path))
    shapes: Shapes = {
        "query": ((1, 4, 1, 16), (2, 4, 256, 16), (4, 4, 1024, 16)),
        "key": ((1, 2, 1, 16), (2, 2, 256, 16), (4, 2, 1024, 16)),
        "value": ((1, 2, 1, 16), (2, 2, 256, 16), (4, 2, 1024, 16)),
        "probes": ((1, 1), (2, 128), (4, 128)),
    }
    return path, shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zipvl.plugins.tensorrt_build", description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", help="plugin-lowered ONNX model")
    parser.add_argument("--plugins", help="libzipvl_plugins.so (default: the built one)")
    parser.add_argument("--engine", help="output plan file")
    parser.add_argument("--minShapes", help="name:AxBxC,... (trtexec syntax)")
    parser.add_argument("--optShapes")
    parser.add_argument("--maxShapes")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--compute-capability", help="TensorRT-RTX target, e.g. SM80 (default: current GPU or SM80)")
    parser.add_argument("--demo", action="store_true", help="build the one-layer demo graph")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args(argv)

    trt = import_tensorrt()
    if trt.__name__ != "tensorrt" and not _rtx_parser_ready() and not os.environ.get("ZIPVL_TRT_REEXEC"):
        env = _child_env()
        env["ZIPVL_TRT_REEXEC"] = "1"
        argv = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, "-m", "zipvl.plugins.tensorrt_build", *argv], env)

    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            onnx_path, shapes = _demo_model(Path(tmp))
        else:
            if not args.onnx:
                parser.error("--onnx is required (or --demo)")
            mins, opts, maxs = (_shape_arg(a) for a in (args.minShapes, args.optShapes, args.maxShapes))
            names = list(dict.fromkeys([*mins, *opts, *maxs]))
            try:
                shapes = {n: (mins.get(n) or opts[n], opts.get(n) or mins[n], maxs.get(n) or opts[n]) for n in names}
            except KeyError as exc:
                parser.error(f"input {exc} needs at least its opt shape")
            onnx_path = Path(args.onnx)
        report = build_engine(onnx_path, shapes, args.plugins, args.engine, args.fp16, args.compute_capability)
    if args.json:
        print(_REPORT_TAG + json.dumps(asdict(report)), flush=True)
    else:
        print(f"built {report.nbytes} bytes with {report.backend} {report.backend_version}; plugin layers: "
              f"{', '.join(report.plugin_layers)}" + (f"; saved to {report.engine_path}" if report.engine_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
