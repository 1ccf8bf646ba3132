# SPDX-License-Identifier: Apache-2.0
"""zipvl.export: build an engine directory (ONNX graphs + manifest) from a Hugging Face VLM.

``build_engine(model, out_dir, ops="standard"|"plugin", config=ZipVLConfig(...))``; the CLI is ``zipvl-build``.
"""

from .build import OPS, build_engine, load_model

__all__ = ["OPS", "build_engine", "load_model"]
