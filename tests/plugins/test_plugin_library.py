# SPDX-License-Identifier: Apache-2.0
"""libzipvl_plugins.so / libzipvl_kernels.so compile with nvcc against the TensorRT headers, export only their
entry points, and behave like TensorRT expects - checked without a GPU and without libnvinfer."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from zipvl.plugins.library import tensorrt_include_dir

HARNESS = Path(__file__).parent / "harness" / "plugin_harness.cpp"


def _exported(path: Path) -> set[str]:
    if shutil.which("nm") is None:
        pytest.skip("nm not available")
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if line.split()[-2:-1] == ["T"]}


def test_plugin_library_exports_only_entry_points(cuda_libraries):
    assert _exported(cuda_libraries["plugins"]) == {"getCreators", "setLoggerFinder", "zipvl_plugin_info"}


def test_kernel_library_exports_only_c_api(cuda_libraries):
    assert _exported(cuda_libraries["kernels"]) == {
        "zipvl_cuda_abi_version", "zipvl_cuda_status_string", "zipvl_cuda_last_error",
        "zipvl_cuda_token_select_workspace_size", "zipvl_cuda_token_select", "zipvl_cuda_sparse_attention"}


def test_plugin_library_needs_no_tensorrt_library(cuda_libraries):
    if shutil.which("ldd") is None:
        pytest.skip("ldd not available")
    deps = subprocess.run(["ldd", str(cuda_libraries["plugins"])], capture_output=True, text=True, check=True).stdout
    assert "nvinfer" not in deps and "tensorrt" not in deps and "libcudart" not in deps  # cudart is static


def test_creator_identity_through_ctypes(cuda_libraries):
    lib = ctypes.CDLL(str(cuda_libraries["plugins"]))
    assert lib.getCreators and lib.setLoggerFinder
    lib.zipvl_plugin_info.restype = ctypes.c_char_p
    info = {c["name"]: c for c in json.loads(lib.zipvl_plugin_info())}
    assert set(info) == {"ZipVLTokenSelect", "ZipVLSparseAttention"}
    for creator in info.values():
        assert creator["version"] == "1" and creator["namespace"] == "zipvl"
        assert creator["interface"] == "PLUGIN CREATOR_V3ONE" and creator["interface_version"] == 1
    ints = [["num_heads", "INT32"], ["num_kv_heads", "INT32"], ["head_dim", "INT32"]]
    assert info["ZipVLTokenSelect"]["fields"] == [["tau", "FLOAT32"], ["scaling", "FLOAT32"], *ints]
    assert info["ZipVLSparseAttention"]["fields"] == [["scaling", "FLOAT32"], *ints]


def _cuda_include() -> Path | None:
    nvcc = shutil.which("nvcc")
    candidates = [Path("/usr/local/cuda/include")]
    if nvcc:
        candidates.insert(0, Path(nvcc).resolve().parent.parent / "include")
        # nvcc may be a wrapper script: ask it where the toolkit is.
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", "/dev/null"], capture_output=True, text=True,
                             check=False)
        for line in (out.stdout + out.stderr).splitlines():
            if "TOP=" in line:
                candidates.insert(0, Path(line.split("TOP=", 1)[1].strip().strip('"')) / "include")
    return next((c for c in candidates if (c / "cuda_runtime_api.h").is_file()), None)


def test_creators_and_plugins_behave_like_tensorrt_expects(cuda_libraries, tmp_path):
    """A small C++ harness drives getCreators / createPlugin / build and runtime capabilities like TensorRT."""
    cxx = shutil.which("g++") or shutil.which("c++")
    cuda_inc, trt_inc = _cuda_include(), tensorrt_include_dir()
    if cxx is None or cuda_inc is None or trt_inc is None or not (trt_inc / "NvInferRuntime.h").is_file():
        pytest.skip("needs g++, the CUDA headers and the TensorRT headers")
    exe = tmp_path / "plugin_harness"
    subprocess.run([cxx, "-std=c++17", "-O0", "-Wno-deprecated-declarations", "-isystem", str(trt_inc),
                    "-isystem", str(cuda_inc), str(HARNESS), "-ldl", "-o", str(exe)], check=True)
    run = subprocess.run([str(exe), str(cuda_libraries["plugins"])], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "failures=0" in run.stdout
    # The rejected attribute sets are explained by the plugins' own messages (no TensorRT logger: stderr).
    assert "missing required attribute 'tau'" in run.stderr


def test_kernel_entry_points_fail_cleanly_without_a_gpu(cuda_libraries):
    """Workspace sizing needs no device; a launch returns a status code (never crashes) - on a GPU box it checks
    arguments before touching the device."""
    lib = ctypes.CDLL(str(cuda_libraries["kernels"]))
    lib.zipvl_cuda_token_select_workspace_size.restype = ctypes.c_size_t
    lib.zipvl_cuda_token_select_workspace_size.argtypes = [ctypes.c_int32] * 4
    small = lib.zipvl_cuda_token_select_workspace_size(1, 8, 1024, 128)
    large = lib.zipvl_cuda_token_select_workspace_size(4, 32, 131072, 128)
    assert 0 < small < large
    lib.zipvl_cuda_status_string.restype = ctypes.c_char_p
    lib.zipvl_cuda_token_select.restype = ctypes.c_int32
    lib.zipvl_cuda_token_select.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int32] * 7 + [ctypes.c_float] * 2 + [
        ctypes.c_void_p] * 4 + [ctypes.c_size_t, ctypes.c_int32, ctypes.c_void_p]
    fake = ctypes.c_void_p(0x1000)  # never dereferenced: validation or the driver fails first

    def select(tau, heads=8, workspace=small):
        return lib.zipvl_cuda_token_select(fake, fake, fake, 0, 1, heads, 2, 1024, 64, 128, tau, 0.125, fake, fake,
                                           fake, fake, workspace, -1, None)

    assert select(1.5) == 4  # ZIPVL_STATUS_BAD_ARGUMENT: tau outside (0, 1]
    assert select(0.9, heads=7) == 1  # ZIPVL_STATUS_BAD_SHAPE: H % H_kv != 0
    assert select(0.9, workspace=small - 1) == 5  # ZIPVL_STATUS_WORKSPACE
    if not _has_gpu():  # with a GPU the fake pointers would reach a kernel
        status = select(0.9)
        assert status == 6  # ZIPVL_STATUS_CUDA (no driver / device)
        assert b"CUDA" in lib.zipvl_cuda_status_string(status)


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
