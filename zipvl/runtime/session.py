# SPDX-License-Identifier: Apache-2.0
"""ONNX Runtime sessions for an engine's graphs (CPU provider; plugin nodes through :mod:`.ort_plugins`).

An engine's graphs (embed, vision, prefill, decode) keep their weights in one external file. Left to itself every
ONNX Runtime session reads its own copy of the initializers it uses (the prefill and decode graphs share almost all of
them), so a loaded engine holds the weights twice. :class:`SharedWeights` maps the file once (read-only ``mmap``) and
hands every session the same buffers as user initializers: one copy in memory, shared by the page cache even across
processes (several server instances of one engine), and pages are only read when first used.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import ort_plugins


class SharedWeights:
    """Read-only memory maps of the external weight files in ``folder``; OrtValues over them, one per tensor."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._files: dict[str, np.ndarray] = {}
        self._values: dict[tuple, tuple[np.ndarray, ort.OrtValue]] = {}

    def _file(self, location: str) -> np.ndarray:
        if location not in self._files:
            with open(self.folder / location, "rb") as f:
                self._files[location] = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        return self._files[location]

    def add_to(self, so: ort.SessionOptions, model: onnx.ModelProto) -> int:
        """Register every external initializer of ``model`` on ``so`` as a view of the map; returns how many."""
        count = 0
        for init in model.graph.initializer:
            if init.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in init.external_data}
            location, offset, length = info["location"], int(info.get("offset", 0)), int(info["length"])
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            key = (location, offset, length, dtype.str, tuple(init.dims))
            if key not in self._values:
                # Sizes were checked against the manifest when the engine loaded.
                array = self._file(location)[offset: offset + length].view(dtype).reshape(tuple(init.dims))
                self._values[key] = (array, ort.OrtValue.ortvalue_from_numpy(array))
            so.add_initializer(init.name, self._values[key][1])
            count += 1
        return count


def create_session(path: Path, plugin: bool = False, threads: int | None = None,
                   weights: SharedWeights | None = None) -> ort.InferenceSession:
    """A CPU InferenceSession for ``path``; ``plugin``: the graph holds zipvl plugin nodes; ``weights``: take the
    initializers from this shared map instead of reading a private copy."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    model = None
    if plugin or weights is not None:
        model = onnx.load(str(path), load_external_data=False)
    if weights is not None and weights.add_to(so, model):
        # Pre-packing would copy every shared weight into a private packed buffer: the copy sharing avoids.
        so.add_session_config_entry("session.disable_prepacking", "1")
    if not plugin:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ort_plugins.register(so)
    model = ort_plugins.to_ort_domain(model)
    # The model goes in as bytes: tell ORT where its external weights live.
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    return ort_plugins.wrap(ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]))
