# SPDX-License-Identifier: Apache-2.0
"""ONNX Runtime sessions for an engine's graphs (CPU provider; plugin nodes through :mod:`.ort_plugins`)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from . import ort_plugins


def create_session(path: Path, plugin: bool = False, threads: int | None = None) -> ort.InferenceSession:
    """A CPU InferenceSession for ``path``; ``plugin``: the graph holds zipvl plugin nodes."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not plugin:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ort_plugins.register(so)
    model = ort_plugins.to_ort_domain(onnx.load(str(path), load_external_data=False))
    # The model goes in as bytes: tell ORT where its external weights live.
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    return ort_plugins.wrap(ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]))
