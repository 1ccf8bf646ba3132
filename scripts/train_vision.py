#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Train the embedded default's vision tower + projector against the frozen SmolLM2, offline and seeded.

    python scripts/train_vision.py                       # the shipped weights: --steps 800 --seed 0
    python scripts/train_vision.py --steps 20 --out /tmp/v  # a smoke run

Writes <out>/vision-v2.safetensors (fp16 tower + projector), vision-v2.json (command, seed, data, config,
held-out accuracy, loss log) and vision-v2-loss.png. Default <out> is zipvl/models/weights (what the default
model builder loads).
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
from zipvl.models.vision import TOWER, VERSION, WEIGHTS_DIR, save_vision
from zipvl.models.vision_training import TrainConfig, chat_prompt, train


@torch.no_grad()
def easyvqa_accuracy(model, processor, n: int, seed: int) -> dict:
    """Greedy answers on a seeded sample of the easy-vqa *test* split (held out from training)."""
    import random

    from easy_vqa import get_test_image_paths, get_test_questions
    from PIL import Image

    from zipvl.models.vision_training import IMAGE_MARK, VQA_SUFFIX, _upscale

    questions, answers, image_ids = get_test_questions()
    paths = get_test_image_paths()
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    correct, majority = 0, 0
    tok = processor.tokenizer
    for i in order[:n]:
        enc = processor(text=chat_prompt(tok, f"{IMAGE_MARK}\n{questions[i]} {VQA_SUFFIX}"),
                        images=[_upscale(Image.open(paths[image_ids[i]]))], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip().lower()
        correct += text.rstrip(".") == answers[i]
        majority += answers[i] == "yes"
    return {"split": "easy-vqa test", "questions": n, "sample_seed": seed, "accuracy": correct / n,
            "majority_answer": "yes", "majority_accuracy": majority / n}


def plot_loss(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [h["loss"] for h in history]
    k = 25
    smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(losses, alpha=0.3, label="per step")
    ax.plot(smooth, label=f"mean of {k}")
    ax.set_xlabel("step (batch of 8)")
    ax.set_ylabel("answer loss")
    ax.set_yscale("log")
    ax.set_title("vision tower + projector vs frozen SmolLM2-135M")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--eval-questions", type=int, default=300)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = p.parse_args(argv)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads)
    t0 = time.perf_counter()
    model, processor = build_default_model(trained=False)
    history = train(model, processor, cfg, log=lambda s: print(s, flush=True))
    train_s = time.perf_counter() - t0
    acc = easyvqa_accuracy(model, processor, args.eval_questions, seed=args.seed)
    print(json.dumps(acc), flush=True)
    weights = args.out / f"vision-{VERSION}.safetensors"
    card = {
        "command": "python scripts/train_vision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": cfg.seed, "train_config": {k: v for k, v in vars(cfg).items()}, "tower": TOWER,
        "data": "easy-vqa train split (38,575 questions, 4,000 images) + procedural scenes (zipvl.data.scenes): "
                "single images, 2x2 / 3x3 tiled canvases, multi-image prompts; nothing downloaded",
        "train_seconds": round(train_s, 1), "machine": f"{platform.processor() or platform.machine()}, "
                                                       f"{cfg.threads} threads, torch {torch.__version__}",
        "heldout": acc, "loss": [round(h["loss"], 4) for h in history],
        "kinds": [h["kind"] for h in history],
    }
    save_vision(model, weights, card)
    plot_loss(history, args.out / f"vision-{VERSION}-loss.png")
    print(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB) in {train_s:.0f} s; "
          f"held-out easy-vqa accuracy {acc['accuracy']:.3f} (majority {acc['majority_accuracy']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
