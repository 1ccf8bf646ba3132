# SPDX-License-Identifier: Apache-2.0
"""zipvl's native ops: the TensorRT plugins, their CUDA kernels and a CPU twin, seen from Python.

- :mod:`.library` finds, builds (CMake) and loads ``libzipvl_cpu.so``, ``libzipvl_kernels.so`` and
  ``libzipvl_plugins.so``.
- :mod:`.cpu_ops` runs both ops on numpy arrays through the CPU twin (fp32).
- :mod:`.ort_ops` registers the ops with onnxruntime-extensions so ONNX Runtime runs plugin-lowered graphs.
- :mod:`.cuda_ops` runs the CUDA kernels on torch CUDA tensors, without TensorRT.
- :mod:`.tensorrt_build` builds a TensorRT (or TensorRT-RTX) engine from a plugin-lowered ONNX graph.
- :mod:`.onnx_graph` builds the one-layer plugin graph (the node contract, with onnx.helper).

Importing this package loads nothing; every library is loaded on first use.
"""

from .library import PluginLibraryError, build_libraries, library_path, load_library

OP_DOMAIN = "zipvl"
OP_VERSION = "1"
TOKEN_SELECT = "ZipVLTokenSelect"
SPARSE_ATTENTION = "ZipVLSparseAttention"

__all__ = [
    "OP_DOMAIN",
    "OP_VERSION",
    "SPARSE_ATTENTION",
    "TOKEN_SELECT",
    "PluginLibraryError",
    "build_libraries",
    "library_path",
    "load_library",
]
