# SPDX-License-Identifier: Apache-2.0
"""`zipvl-eval`: accuracy and fidelity of ZipVL vs dense and the peer methods (fixed ratio, FastV, SnapKV, random)
at a matched kept ratio, on offline data. Writes results.json, report.md and PNG plots into --out."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ZipVLConfig
from ..console import add_debug_flag, entry_point
from ..errors import ZipVLError
from .tasks import TASKS, TaskOptions


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zipvl-eval", description=__doc__)
    p.add_argument("--model", default="default",
                   help="'default' (embedded SmolLM2-135M in a LLaVA shell) or a local checkpoint directory "
                        "(LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Llama, Qwen2); nothing is downloaded")
    p.add_argument("--tasks", type=_names, default=("needle", "visual_needle"),
                   help=f"comma list from {', '.join(TASKS)} (default: needle,visual_needle)")
    p.add_argument("--contexts", type=_ints, default=(1000,),
                   help="needle context lengths in tokens (e.g. 1000,2000; default 1000: a ~10-15 min CPU run)")
    p.add_argument("--depths", type=_floats, default=(0.1, 0.5, 0.9), help="needle depths in [0, 1]")
    p.add_argument("--needles", type=int, default=2, help="different needles per (context, depth) cell (max 4)")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per task (quick runs)")
    p.add_argument("--essays", type=int, default=1,
                   help="needle haystacks from this many different places in the essays (needle k uses place k mod N)")
    p.add_argument("--n-images", type=int, default=4, help="images per visual-needle prompt")
    p.add_argument("--jsonl", default=None, help="user VQA file for the jsonl task")
    p.add_argument("--taus", type=_floats, default=(0.96, 0.975, 0.99), help="ZipVL thresholds (the tau sweep)")
    p.add_argument("--variants", type=_names, default=(),
                   help="ZipVLConfig presets run beside the paper's ZipVL at every tau (the selection study; 'all' = "
                        "every preset but 'paper'): " + ", ".join(ZipVLConfig.presets()))
    p.add_argument("--baselines", type=_names, default=("fixed", "fastv", "snapkv", "random"),
                   help="matched-ratio baselines; 'none' for none")
    p.add_argument("--match-taus", type=_floats, default=None,
                   help="taus whose measured ratio fastv/snapkv/random are matched to (fixed: every tau); default "
                        "0.975 if among --taus, else the middle tau")
    p.add_argument("--match", choices=("task", "item"), default="task",
                   help="matched ratio per task (one ratio, the mean of ZipVL's) or per item")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seeds ZipVL's random probes, sampling and the random baseline")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="zipvl-eval-out", help="output directory")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p


def load_model(name: str):
    """(model, processor, display name)."""
    import torch

    if name == "default":
        from ..models import load_default_model

        model, processor = load_default_model()
        return model, processor, "embedded default: SmolLM2-135M-Instruct + trained vision tower (LLaVA)"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(name, local_files_only=True)
    if hasattr(config, "vision_config"):
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=torch.float32, local_files_only=True)
        processor = AutoProcessor.from_pretrained(name, local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, local_files_only=True)
        processor = AutoTokenizer.from_pretrained(name, local_files_only=True)
    return model.eval(), processor, name


@entry_point("zipvl-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    import torch

    from .api import run
    from .evaluate import EvalSettings
    from .report import write_reports

    if args.threads:
        torch.set_num_threads(args.threads)
    baselines = () if args.baselines == ("none",) else args.baselines
    variants = tuple(v for v in ZipVLConfig.presets() if v != "paper") if args.variants == ("all",) else args.variants
    if args.match_taus is None:
        args.match_taus = (0.975,) if 0.975 in args.taus else (sorted(args.taus)[len(args.taus) // 2],)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        raise ZipVLError(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    options = TaskOptions(contexts=args.contexts, depths=args.depths, needles=args.needles, essays=args.essays, limit=args.limit,
                          seed=args.seed, n_images=args.n_images, jsonl=args.jsonl)
    settings = EvalSettings(taus=args.taus, baselines=baselines, match_taus=args.match_taus, match=args.match,
                            max_new_tokens=args.max_new_tokens, seed=args.seed,
                            zipvl=ZipVLConfig(seed=args.seed), variants=variants)
    model, processor, name = load_model(args.model)
    report = run(model, processor, args.tasks, options, settings, model_name=name,
                 progress=not args.quiet,
                 on_task=lambda partial: write_reports(partial, args.out, plots=False))
    paths = write_reports(report, args.out, plots=not args.no_plots)
    print(f"zipvl-eval: wrote {', '.join(str(p) for p in paths)} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
