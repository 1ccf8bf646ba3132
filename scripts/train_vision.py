#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Train the embedded default's vision tower + projector against the frozen SmolLM2, offline and seeded.

    python scripts/train_vision.py                       # the shipped weights (defaults of TrainConfig, seed 0)
    python scripts/train_vision.py --steps 20 --tower-steps 20 --heldout 0 --out /tmp/v  # a smoke run

Writes <out>/vision-VERSION.safetensors (fp16 tower + projector), vision-VERSION.json (command, seed, data, config,
stage-1 tile accuracy, held-out accuracy per zipvl-eval task with the majority answer beside it, loss logs) and
vision-VERSION-loss.png. Default <out> is zipvl/models/weights (what the default model builder loads).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from zipvl.models.default import build_default_model
from zipvl.models.vision import TOWER, VERSION, WEIGHTS_DIR, feature_select, save_card, save_vision
from zipvl.models.vision_training import KINDS, NEW_TILE_PROMPT_STEPS, TrainConfig, fast_bf16, train
from zipvl.models.word_tiles import save_tile_prompt

# task -> seeded items (zipvl-eval's own tasks): the sample sizes for the bar (easy-vqa >= 500 questions).
# 100 canvases, not 50: at 50 one item is 2 points and the standard error ~6.5 (stage 10 read 0.58 against v7's 0.72
# on 50 items, 0.62 against 0.64 on 100)
HELDOUT = {"easyvqa": 500, "scenes_long": 100, "scenes_count": 60, "multi_image": 50}
HELDOUT_SEED = 0  # the held-out sample is zipvl-eval's default one, whatever seed a training stage uses for its data


@torch.no_grad()
def heldout_tasks(scale: float) -> dict[str, int]:
    """:data:`HELDOUT`'s sample sizes times ``scale``, at least one item each."""
    return {t: max(1, round(n * scale)) for t, n in HELDOUT.items()}


def heldout_accuracy(model, processor, seed: int, tasks: dict[str, int]) -> dict:
    """Dense greedy accuracy on zipvl-eval's tasks (easy-vqa *test* split, fresh scenes), exactly as the eval scores
    them, with the majority answer's accuracy beside each, and the accuracy per question phrasing (a seeded sample's
    answers can be skewed: the canvas's 18 count questions have "two" for 14, so the count row shows what a total
    hides)."""
    from collections import Counter

    from zipvl.eval import EvalSettings, TaskOptions
    from zipvl.eval.evaluate import evaluate_items
    from zipvl.eval.tasks import accuracy_by_type, make_items, question_type

    out = {}
    settings = EvalSettings(taus=(), baselines=(), max_new_tokens=4, seed=seed)
    for task, n in tasks.items():
        items = make_items(task, processor.tokenizer, TaskOptions(limit=n, seed=seed))
        result = evaluate_items(model, processor, items, settings, task=task, progress=False)
        answers = Counter(item.answers[0] for item in items)
        majority, count = answers.most_common(1)[0]
        out[task] = {"items": n, "sample_seed": seed, "accuracy": result["methods"]["dense"]["summary"]["accuracy"],
                     "majority_answer": majority, "majority_accuracy": count / n}
        out[task]["by_type"] = accuracy_by_type((question_type(item.question, item.answers[0]), record["score"])
                                                for item, record in zip(items, result["methods"]["dense"]["items"]))
        print(f"held-out {task}: {json.dumps(out[task])}", flush=True)
    return out


def _smooth(values: list[float], k: int) -> list[float]:
    return [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]


def plot_loss(history: list[dict], stage1: dict | None, path: Path, batch: int,
              teacher: list[float] | None = None, words: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matched = any("match" in h for h in history)
    title = "stage 2: answer + distill x hidden-state match" if matched else \
        "stage 2: answer loss through the frozen SmolLM2-135M"
    panels = [(title, f"step (batch {batch} single images, fewer for long prompts)", [h["loss"] for h in history])]
    if teacher:
        panels.insert(0, ("the text teacher's soft prompt (answer loss)", "step", teacher))
    if words:
        panels[:0] = [("word tiles 1: the tile prompt through the frozen LM", "step", words["tile_prompt"]),
                      ("word tiles 2: tower + projector onto the targets (weighted relative error)",
                       "step (batch of tiles)", [h["loss"] for h in words["align"]])]
    panels = [x for x in panels if x[2]]  # a stage that did not run (a loaded tile prompt, no answer steps)
    if stage1:
        panels.insert(0, ("stage 1: tower alone (present + shape + colour)", "step (batch of 64 tiles)",
                          [h["loss"] for h in stage1["history"]]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.5), squeeze=False)
    for ax, (title, xlabel, losses) in zip(axes[0], panels):
        ax.plot(losses, alpha=0.3, label="per step")
        ax.plot(_smooth(losses, 25), label="mean of 25")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.legend()
    if matched:  # the match alone, mean of 25 over the steps that had one
        steps = [h["step"] for h in history if "match" in h]
        axes[0][-1].plot(steps, _smooth([h["match"] for h in history if "match" in h], 25), label="match (mean of 25)")
        axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check(weights: Path, scale: float, threads: int) -> int:
    """The held-out check of weights trained with ``--heldout 0``, written into their card (``heldout``, and the
    command that wrote it: ``heldout_command``)."""
    from zipvl.models.vision import load_vision

    torch.set_num_threads(threads)
    model, processor = build_default_model(trained=False, select=feature_select(weights))
    card = load_vision(model, weights)  # a clear error if the file is missing or does not fit the tower
    model.eval()
    card["heldout"] = heldout_accuracy(model, processor, HELDOUT_SEED, heldout_tasks(scale))
    card["heldout_command"] = f"python scripts/train_vision.py --check {weights.name} --heldout {scale:g}"
    save_card(weights, card)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--tower-steps", type=int, default=TrainConfig.tower_steps, help="stage 1 steps (0: skip)")
    p.add_argument("--init", type=Path, default=None,
                   help="continue from these tower + projector weights (a later stage: no stage 1)")
    p.add_argument("--mix", type=float, nargs=len(KINDS), default=TrainConfig.mix, metavar="W",
                   help=f"batch share per kind ({', '.join(KINDS)})")
    p.add_argument("--tower-lr", type=float, default=TrainConfig.tower_lr)
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bf16 autocast; auto: where the CPU has native bf16 matmuls (AMX / AVX512-BF16), else fp32")
    p.add_argument("--feature-select", choices=("default", "full"), default=None,
                   help="LLaVA's vision_feature_select_strategy: 'full' also hands the LM each tile's CLS token "
                        "(a per-tile summary); default: the --init weights' own, else 'default'")
    p.add_argument("--questions", type=int, default=TrainConfig.questions,
                   help="questions per image; the later ones are follow-up chat turns on the same visual tokens")
    p.add_argument("--binding", type=float, default=TrainConfig.binding,
                   help="share of scene questions that pair one object's colour with another's shape (answer no), "
                        "each beside the same question about one of the two objects (yes); needs --questions >= 2")
    p.add_argument("--captions", action="store_true",
                   help="end every sample with a turn naming what each image (tile) holds, row by row")
    p.add_argument("--caption-weight", type=float, default=TrainConfig.caption_weight,
                   help="weight of the caption turn's loss beside the answers' (each a mean over its tokens)")
    p.add_argument("--balance-yes-no", action="store_true",
                   help="draw each easy-vqa yes/no phrasing's rarer answer as often as its commoner one")
    p.add_argument("--distill", type=float, default=TrainConfig.distill,
                   help="weight of the hidden-state match against the text teacher (the frozen LM reading a soft prompt "
                        "+ each image's tiles in words); 0: off")
    p.add_argument("--teacher-steps", type=int, default=TrainConfig.teacher_steps,
                   help="steps that train the teacher's soft prompt before stage 2 (with --distill)")
    p.add_argument("--teacher-batch", type=int, default=TrainConfig.teacher_batch,
                   help="described samples per soft-prompt step")
    p.add_argument("--teacher-soft", type=int, default=TrainConfig.teacher_soft, help="the teacher's soft-prompt vectors")
    p.add_argument("--word-tiles", action="store_true",
                   help="first teach the projector to hand the LM each tile as trained vectors + its caption's own word "
                        "embeddings (zipvl.models.word_tiles), then the answer-loss steps")
    p.add_argument("--tile-prompt-steps", type=int, default=None,
                   help=f"steps that train the tile prompt through the frozen LM (with --word-tiles; default "
                        f"{NEW_TILE_PROMPT_STEPS}, or 0 from --tile-prompt); its data follow --mix and --seed")
    p.add_argument("--tile-prompt-lr", type=float, default=TrainConfig.tile_prompt_lr)
    p.add_argument("--tile-prompt-cosine", action="store_true",
                   help="the tile prompt's lr falls to 0 along a cosine over its steps (default: constant)")
    p.add_argument("--tile-prompt", type=Path, default=None,
                   help="start from a tile prompt trained before (vision-VERSION-tile-prompt.safetensors)")
    p.add_argument("--align-steps", type=int, default=TrainConfig.align_steps,
                   help="steps (of --align-batch tiles) that regress tower + projector onto the tile prompt (0: train "
                        "the tile prompt only)")
    p.add_argument("--align-batch", type=int, default=TrainConfig.align_batch)
    p.add_argument("--align-lr", type=float, default=TrainConfig.align_lr, help="the regression's projector lr")
    p.add_argument("--align-tower-lr", type=float, default=TrainConfig.align_tower_lr,
                   help="the regression's tower lr (the patch position embedding has --align-position-lr)")
    p.add_argument("--align-position-lr", type=float, default=TrainConfig.align_position_lr,
                   help="the regression's lr for the tower's patch position embedding")
    p.add_argument("--align-overviews", type=float, default=TrainConfig.align_overview_fraction,
                   help="share of each regression batch that is canvas overviews, captioned with their object count")
    p.add_argument("--align-keep-projector", action="store_true",
                   help="continue the regression of a word-tile model (--init) with its own projector (default: a "
                        "fresh one)")
    p.add_argument("--heldout", type=float, default=1.0, help="scale of the held-out check (0: skip)")
    p.add_argument("--check", type=Path, default=None, metavar="WEIGHTS",
                   help="train nothing: run the held-out check (--heldout's scale, --threads) on saved weights and "
                        "write it into their card")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = p.parse_args(argv)
    if args.check:
        if args.heldout <= 0 or not args.check.is_file():
            p.error(f"--check needs --heldout > 0 and a weights file (got --heldout {args.heldout}, {args.check})")
        return check(args.check, args.heldout, args.threads)
    bf16 = fast_bf16() if args.bf16 == "auto" else args.bf16 == "on"
    try:
        cfg = TrainConfig(bf16=bf16, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                          tower_steps=0 if args.init else args.tower_steps, tower_lr=args.tower_lr,
                          mix=tuple(args.mix), init=str(args.init) if args.init else None, questions=args.questions,
                          binding=args.binding, captions=args.captions, caption_weight=args.caption_weight,
                          distill=args.distill, teacher_steps=args.teacher_steps, teacher_soft=args.teacher_soft,
                          teacher_batch=args.teacher_batch, balance_yes_no=args.balance_yes_no,
                          word_tiles=args.word_tiles, tile_prompt=str(args.tile_prompt) if args.tile_prompt else None,
                          tile_prompt_steps=args.tile_prompt_steps, tile_prompt_lr=args.tile_prompt_lr,
                          tile_prompt_cosine=args.tile_prompt_cosine,
                          align_steps=args.align_steps, align_batch=args.align_batch, align_lr=args.align_lr,
                          align_tower_lr=args.align_tower_lr, align_position_lr=args.align_position_lr,
                          align_overview_fraction=args.align_overviews,
                          align_fresh_projector=not args.align_keep_projector)
    except ValueError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    select = args.feature_select or (feature_select(args.init) if args.init else "default")
    model, processor = build_default_model(trained=False, select=select)
    result = train(model, processor, cfg, log=lambda s: print(s, flush=True))
    history, stage1 = result["history"], result["stage1"]
    train_s = time.perf_counter() - t0
    weights = args.out / f"vision-{VERSION}.safetensors"
    args.out.mkdir(parents=True, exist_ok=True)  # the tile prompt is written before the weights
    card = {
        "command": "python scripts/train_vision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": cfg.seed, "feature_select": select, "train_config": {k: v for k, v in vars(cfg).items()}, "tower": TOWER,
        "data": "stage 1: easy-vqa train images (shape/colour from their own questions) + procedural single tiles; "
                "stage 2: easy-vqa train split (38,575 questions, 4,000 images) + procedural scenes "
                "(zipvl.data.scenes): single images, 2x2 / 3x3 / 4x4 tiled canvases, multi-image prompts; "
                "nothing downloaded",
        "train_seconds": round(train_s, 1), "machine": f"{platform.processor() or platform.machine()}, "
                                                       f"{cfg.threads} threads, torch {torch.__version__}",
        "stage1": None if stage1 is None else {"steps": cfg.tower_steps, "seconds": stage1["seconds"],
                                               "heldout_tiles": stage1["heldout"],
                                               "loss": [round(h["loss"], 4) for h in stage1["history"]]},
        "loss": [round(h["loss"], 4) for h in history], "kinds": [h["kind"] for h in history],
    }
    if result["teacher"] is not None:  # --distill: the teacher's soft-prompt loss, and the match per step (of the loss)
        card["teacher"] = {"steps": cfg.teacher_steps, "batch": cfg.teacher_batch, "loss": result["teacher"]}
        card["match"] = [round(h["match"], 4) if "match" in h else None for h in history]
    words = result["word_tiles"]
    if words is not None:  # --word-tiles: both logs; the tile prompt itself goes beside the weights
        card["word_tiles"] = {"tile_prompt_loss": words["tile_prompt"],
                              "align_loss": [round(h["loss"], 5) for h in words["align"]],
                              "align_cells": [round(h["cells"], 3) for h in words["align"]],
                              "align_overviews": [round(h["overviews"], 3) for h in words["align"] if "overviews" in h],
                              "align_error_vectors": [round(h["vectors"], 5) for h in words["align"]],
                              "align_error_words": [round(h["words"], 5) for h in words["align"]],
                              "heldout_cells": words["heldout_cells"]}
        save_tile_prompt(words["prompt"], args.out / f"vision-{VERSION}-tile-prompt.safetensors")
    if args.init:  # a later stage: record where it started, so the chain back to stage 1 is on file
        init_card = json.loads(args.init.with_suffix(".json").read_text())
        card["init"] = {"weights": args.init.name, "command": init_card["command"],
                        "heldout": init_card.get("heldout")}
    save_vision(model, weights, card)  # weights first: the held-out check below takes minutes
    plot_loss(history, stage1, args.out / f"vision-{VERSION}-loss.png", cfg.batch, result["teacher"], words)
    print(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB) after {train_s:.0f} s of training", flush=True)
    if args.heldout > 0:
        card["heldout"] = heldout_accuracy(model, processor, HELDOUT_SEED, heldout_tasks(args.heldout))
        save_vision(model, weights, card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
