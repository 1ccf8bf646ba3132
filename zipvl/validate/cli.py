# SPDX-License-Identifier: Apache-2.0
"""``zipvl-validate ENGINE_DIR [--model MODEL]``: run the engine and the PyTorch reference on the same prompts and
report kept-set agreement, logit error and greedy-token agreement as JSON; exit 1 when a tolerance is missed."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..console import add_debug_flag, entry_point


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zipvl-validate", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("engine", help="engine directory (from zipvl-build)")
    p.add_argument("--model", default=None, help="HF checkpoint directory (default: the one recorded in the engine, "
                                                 "else the embedded default)")
    p.add_argument("--prompts", type=int, default=4, help="number of prompts (N)")
    p.add_argument("--batch", type=int, default=2, help="prompts per batch (of different lengths)")
    p.add_argument("--max-new-tokens", type=int, default=34)
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode-interval", type=int, default=None,
                   help="override the engine's decode-time re-selection interval (runtime-side, e.g. 16 so a short "
                        "generation crosses re-selections)")
    p.add_argument("--json", default=None, help="write the report here (default: stdout)")
    add_debug_flag(p)
    return p


@entry_point("zipvl-validate")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from ..export.build import load_model
    from ..runtime.engine import Engine
    from .compare import Tolerance, validate
    from .prompts import make_prompts

    engine = Engine(args.engine, decode_interval=args.decode_interval)
    source = args.model or engine.manifest["model"].get("source")
    model, _ = load_model(source)
    prompts = make_prompts(engine, args.prompts, args.seed)
    report = validate(engine, model, prompts, args.max_new_tokens, args.batch, Tolerance(args.atol, args.rtol))
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    s = report["summary"]
    print(f"zipvl-validate: {'PASS' if report['passed'] else 'FAIL'}: kept sets identical {s['kept_sets_identical']}, "
          f"max |dlogit| {s['max_abs_logit_error']:.2e}, token agreement {s['token_agreement']:.3f}, "
          f"{s['reselections']} re-selections", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
