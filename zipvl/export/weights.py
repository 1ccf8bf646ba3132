# SPDX-License-Identifier: Apache-2.0
"""One weights file for all engine graphs.

The prefill and decode graphs hold the same decoder weights (and a tied LM head equals the embedding table): stored
per graph that would double or triple the engine. Every large initializer is written once into ``weights.bin``
(deduplicated by content) and each graph references it there through ONNX external data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import numpy_helper

WEIGHTS = "weights.bin"
_INLINE_BELOW = 1024  # bytes: small constants stay inside the graph
_ALIGN = 64


def share_weights(graphs: dict[str, Path], out_dir: Path, weights_name: str = WEIGHTS) -> dict[str, Path]:
    """Rewrite each graph (name -> exported .onnx path, external data next to it) into ``out_dir/<name>.onnx``
    referencing ``out_dir/weights_name``. Returns name -> written path."""
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    seen: dict[str, tuple[int, int]] = {}
    offset = 0
    with open(out_dir / weights_name, "wb") as blob:
        for name, src in graphs.items():
            model = onnx.load(str(src), load_external_data=True)
            for init in _initializers(model.graph):
                arr = numpy_helper.to_array(init)
                raw = arr.tobytes()
                if len(raw) < _INLINE_BELOW:
                    init.CopyFrom(numpy_helper.from_array(arr, init.name))
                    continue
                digest = hashlib.sha256(raw).hexdigest() + str(arr.dtype) + str(arr.shape)
                if digest not in seen:
                    pad = (-offset) % _ALIGN
                    blob.write(b"\0" * pad)
                    offset += pad
                    blob.write(raw)
                    seen[digest] = (offset, len(raw))
                    offset += len(raw)
                off, length = seen[digest]
                tname, dims, dtype = init.name, list(init.dims), init.data_type
                init.Clear()  # drop the data (raw or typed fields), keep name / shape / type
                init.name, init.data_type = tname, dtype
                init.dims.extend(dims)
                for k, v in (("location", weights_name), ("offset", str(off)), ("length", str(length))):
                    entry = init.external_data.add()
                    entry.key, entry.value = k, v
                init.data_location = onnx.TensorProto.EXTERNAL
            path = out_dir / f"{name}.onnx"
            onnx.save(model, str(path))
            written[name] = path
    return written


def _initializers(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _initializers(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _initializers(g)
