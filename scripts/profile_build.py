# SPDX-License-Identifier: Apache-2.0
"""Where zipvl-build's seconds go, by wall clock (cProfile inflates the exporter's call-heavy Python several-fold).

``python scripts/profile_build.py [MODEL] [--ops standard] [--layers N]`` builds into a temporary directory the way
``zipvl.export.build.build_engine`` does and prints one JSON line: model load, then per graph torch.export + ONNX
translation (``torch.onnx.export(optimize=False)``), the onnxscript optimizer, writing the graph with its external
data, and at the end the shared weights file. Run it under the CPU lock: it is a full build.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnxscript.optimizer
import onnxscript.rewriter.onnx_fusions
import torch

from zipvl.config import ZipVLConfig
from zipvl.export import graphs
from zipvl.export.build import load_model
from zipvl.export.weights import share_weights
from zipvl.export.wrappers import describe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--ops", default="standard", choices=("standard", "plugin"))
    p.add_argument("--layers", type=int, help="keep the first N decoder layers (quick look)")
    args = p.parse_args()
    out: dict = {}
    t = time.perf_counter()
    model, _ = load_model(args.model)
    if args.layers:
        from zipvl.bench.models import _text_layers_module

        _text_layers_module(model).layers = _text_layers_module(model).layers[: args.layers]
        model.config.get_text_config(decoder=True).num_hidden_layers = args.layers
    out["load_model_s"] = time.perf_counter() - t
    desc, config = describe(model), ZipVLConfig()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in graphs.graph_names(desc):
            fn = {"embed": graphs._embed, "vision": graphs._vision, "prefill": graphs._prefill,
                  "decode": graphs._decode}[name]
            module, ex, dynamic, inputs, outputs, table = fn(model, desc, config, args.ops)
            opset = graphs._lowering(args.ops)[1] if name in graphs.OPS_GRAPHS else 18
            row = {}
            t = time.perf_counter()
            with torch.no_grad(), graphs._attention(model, name):
                prog = torch.onnx.export(module.eval(), ex, None, dynamo=True, dynamic_shapes=dynamic,
                                         input_names=inputs, output_names=outputs, custom_translation_table=table,
                                         optimize=False, opset_version=opset, verbose=False)
            row["export_s"] = time.perf_counter() - t
            t = time.perf_counter()
            onnxscript.optimizer.optimize_ir(prog.model)
            onnxscript.rewriter.onnx_fusions.fuse(prog.model)
            row["optimize_s"] = time.perf_counter() - t
            t = time.perf_counter()
            paths[name] = Path(tmp) / f"{name}.onnx"
            prog.save(str(paths[name]), external_data=True)
            row["save_s"] = time.perf_counter() - t
            row["nodes"] = len(prog.model.graph)
            out[name] = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        t = time.perf_counter()
        (Path(tmp) / "engine").mkdir()
        share_weights(paths, Path(tmp) / "engine")
        out["share_weights_s"] = time.perf_counter() - t
    out["load_model_s"] = round(out["load_model_s"], 2)
    out["share_weights_s"] = round(out["share_weights_s"], 2)
    out["total_s"] = round(out["load_model_s"] + out["share_weights_s"] + sum(
        sum(v for k, v in r.items() if k.endswith("_s")) for r in out.values() if isinstance(r, dict)), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
