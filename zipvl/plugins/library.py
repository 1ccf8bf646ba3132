# SPDX-License-Identifier: Apache-2.0
"""Find, build and load zipvl's native libraries.

Search order for ``lib<name>.so``: the folder in ``$ZIPVL_PLUGIN_DIR``, then ``<repo>/plugins/build`` (where
``scripts/build_plugins.sh`` puts them). :func:`build_libraries` runs that script (CMake + nvcc/g++) under a file
lock, so concurrent test sessions in one checkout do not race.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import ZipVLError

#: kind -> file name
LIBRARIES = {
    "cpu": "libzipvl_cpu.so",
    "kernels": "libzipvl_kernels.so",
    "plugins": "libzipvl_plugins.so",
}
#: kind -> CMake target
TARGETS = {"cpu": "zipvl_cpu", "kernels": "zipvl_kernels", "plugins": "zipvl_plugins"}

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_plugins.sh"
DEFAULT_BUILD_DIR = REPO_ROOT / "plugins" / "build"

_loaded: dict[Path, ctypes.CDLL] = {}


class PluginLibraryError(ZipVLError, RuntimeError):
    """A native zipvl library is missing, failed to build, or failed to load."""


def tensorrt_include_dir() -> Path | None:
    """Folder holding NvInferRuntime.h: ``$TENSORRT_INCLUDE_DIR``, else the kernel-lens wheel's copy. Found without
    importing kernel_lens: it is installed without its dependencies (triton, 1 GB) since only its headers are used."""
    env = os.environ.get("TENSORRT_INCLUDE_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("kernel_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "include" / "tensorrt"
    return folder if (folder / "NvInferRuntime.h").is_file() else None


def build_dir() -> Path:
    """Where libraries are looked for first: ``$ZIPVL_PLUGIN_DIR`` or ``<repo>/plugins/build``."""
    env = os.environ.get("ZIPVL_PLUGIN_DIR")
    return Path(env) if env else DEFAULT_BUILD_DIR


def _check_kind(kind: str) -> str:
    if kind not in LIBRARIES:
        raise PluginLibraryError(f"unknown zipvl library {kind!r}; expected one of {sorted(LIBRARIES)}")
    return LIBRARIES[kind]


def find_library(kind: str) -> Path | None:
    """Path of an already built library of this kind, or None."""
    name = _check_kind(kind)
    for folder in dict.fromkeys([build_dir(), DEFAULT_BUILD_DIR]):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def build_libraries(
    kinds: tuple[str, ...] = ("cpu",),
    out_dir: str | os.PathLike | None = None,
    cuda_archs: str | None = None,
    timeout: float = 900,
) -> dict[str, Path]:
    """Build the given libraries with ``scripts/build_plugins.sh`` (incremental; a no-op when up to date).

    Parameters
    ----------
    kinds : library kinds among ``"cpu"``, ``"kernels"``, ``"plugins"``
    out_dir : build folder, default :func:`build_dir`
    cuda_archs : CMake CUDA architectures, default ``"80;90"`` (or ``$ZIPVL_CUDA_ARCHS``)

    Returns
    -------
    dict kind -> library path. Raises :class:`PluginLibraryError` with the build log's tail on failure.
    """
    for kind in kinds:
        _check_kind(kind)
    if not BUILD_SCRIPT.is_file():
        raise PluginLibraryError(
            f"{BUILD_SCRIPT} not found: building needs a source checkout of zipvl (or set ZIPVL_PLUGIN_DIR to a "
            "folder of prebuilt libraries)"
        )
    if shutil.which("cmake") is None or not (shutil.which("c++") or shutil.which("g++")):
        raise PluginLibraryError("cannot build zipvl's native libraries: cmake and a C++ compiler must be on PATH")
    out = Path(out_dir) if out_dir is not None else build_dir()
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["bash", str(BUILD_SCRIPT), "--build-dir", str(out)]
    if cuda_archs:
        cmd += ["--cuda-archs", cuda_archs]
    if all(kind == "cpu" for kind in kinds) and shutil.which("nvcc") is None:
        cmd.append("--cpu-only")
    for kind in kinds:
        cmd += ["--target", TARGETS[kind]]
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per folder at a time
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        log = (proc.stdout + proc.stderr)[-4000:]
        raise PluginLibraryError(f"building {', '.join(kinds)} failed ({' '.join(cmd)}):\n{log}")
    paths = {kind: out / LIBRARIES[kind] for kind in kinds}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        raise PluginLibraryError(
            f"the build succeeded but did not produce {', '.join(absent)} (no nvcc, or no TensorRT headers: set "
            "TENSORRT_INCLUDE_DIR or pip install kernel-lens==2.0.1)"
        )
    return paths


def library_path(kind: str, build: bool = False) -> Path:
    """Path of a library; builds it first when ``build`` is true and it is missing."""
    path = find_library(kind)
    if path is None and build:
        path = build_libraries((kind,))[kind]
    if path is None:
        raise PluginLibraryError(
            f"{LIBRARIES[kind]} not found in {build_dir()}: build it with `scripts/build_plugins.sh` (or "
            f"zipvl.plugins.build_libraries(('{kind}',))), or point ZIPVL_PLUGIN_DIR at a folder holding it"
        )
    return path


def load_library(kind: str, build: bool = False) -> ctypes.CDLL:
    """ctypes handle of a library (loaded once per path)."""
    path = library_path(kind, build=build).resolve()
    if path not in _loaded:
        try:
            _loaded[path] = ctypes.CDLL(str(path))
        except OSError as exc:
            raise PluginLibraryError(f"cannot load {path}: {exc}") from exc
    return _loaded[path]


def bind_library(kind: str, abi_symbol: str, signatures: dict) -> ctypes.CDLL:
    """Load (building it if missing) a library with a C API, check its ABI version and declare its functions.

    Parameters
    ----------
    kind : ``"cpu"`` or ``"kernels"``
    abi_symbol : the entry point returning the library's C ABI version, which must be 1
    signatures : function name -> ``(restype, argtypes)``; ``argtypes`` None leaves them undeclared

    Returns
    -------
    The ctypes handle. Raises :class:`PluginLibraryError` when the ABI version is not 1 (a stale build).
    """
    lib = load_library(kind, build=True)
    abi_version = getattr(lib, abi_symbol)
    abi_version.restype = ctypes.c_int32
    if abi_version() != 1:
        raise PluginLibraryError(f"{LIBRARIES[kind]} has an unexpected ABI version: rebuild it")
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        if argtypes is not None:
            function.argtypes = argtypes
    return lib
