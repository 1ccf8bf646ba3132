# SPDX-License-Identifier: Apache-2.0
"""``zipvl-build MODEL -o ENGINE_DIR``: export a Hugging Face VLM into a zipvl engine directory."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..config import ZipVLConfig
from ..console import add_debug_flag, entry_point
from ..errors import ZipVLInputError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zipvl-build", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("model", nargs="?", default=None,
                   help="local HF checkpoint directory (default: the embedded SmolLM2-in-LLaVA model)")
    p.add_argument("-o", "--output", required=True, help="engine directory to write")
    p.add_argument("--ops", choices=("standard", "plugin"), default="standard",
                   help="ZipVL attention lowering: standard ONNX ops (any runtime) or the zipvl plugin nodes")
    p.add_argument("--preset", default=None, choices=tuple(ZipVLConfig.presets()),
                   help="a named ZipVLConfig (ZipVLConfig.presets()); --tau etc. override its fields when given")
    p.add_argument("--tau", type=float, default=None, help=f"default {ZipVLConfig.tau} (or the preset's)")
    p.add_argument("--n-recent", type=int, default=ZipVLConfig.n_recent)
    p.add_argument("--n-random", type=int, default=ZipVLConfig.n_random)
    p.add_argument("--decode-interval", type=int, default=ZipVLConfig.decode_interval)
    p.add_argument("--dense-layers", type=int, nargs="*", default=[])
    p.add_argument("--seed", type=int, default=ZipVLConfig.seed)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-sequence", type=int, default=None, help="prompt + generated tokens per sequence")
    p.add_argument("--reuse", default=None, help="engine dir of the same model: reuse its embed/vision/decode graphs")
    p.add_argument("--jobs", type=int, default=1,
                   help="graphs exported by N worker processes (1: in this process); pays off only with idle cores")
    p.add_argument("--quiet", action="store_true")
    add_debug_flag(p)
    return p


@entry_point("zipvl-build")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.jobs < 1:
        raise ZipVLInputError(f"--jobs must be >= 1, got {args.jobs}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from .build import build_engine, load_model

    fields = {"tau": args.tau, "n_recent": args.n_recent, "n_random": args.n_random,
              "decode_interval": args.decode_interval, "dense_layers": tuple(args.dense_layers), "seed": args.seed}
    if args.preset:  # the preset's fields, then every option the user gave on top
        defaults = ZipVLConfig()
        given = {k: v for k, v in fields.items() if v is not None and v != getattr(defaults, k)}
        config = ZipVLConfig.preset(args.preset, **given)
    else:
        config = ZipVLConfig(**{k: v for k, v in fields.items() if v is not None})
    if not args.quiet:
        print(f"zipvl-build: loading {args.model or 'the embedded default model'}", file=sys.stderr)
    model, source = load_model(args.model)
    manifest = build_engine(model, args.output, ops=args.ops, config=config, max_batch=args.max_batch,
                            max_sequence=args.max_sequence, source_dir=source, reuse=args.reuse,
                            progress=not args.quiet, jobs=args.jobs)
    b = manifest["build"]
    print(json.dumps({"engine": args.output, "ops": manifest["ops"], "model": manifest["model"]["type"],
                      "seconds": b["seconds"], "engine_bytes": b["engine_bytes"], "graphs": b["graph_seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
