#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""How well can the frozen SmolLM2 answer zipvl-eval's vision questions from a *perfect* reading of the image?

The vision path trains only the tower + projector, i.e. the vectors the frozen LM reads in place of the image. Here
those vectors are a trained soft prompt followed by an exact text description of the image ("The image shows a red
circle." / a 4 x 4 grid of "empty" and "blue triangle" cells), so perception is perfect and only the LM's reading
is left. Its accuracy, on the same seeded items and with the same greedy 4-token answers and scorer as the held-out
check, is a reference for what a tower + projector can reach with this LM frozen (not a strict bound: learned vectors
can carry more than words, and a short prompt reads less: 16 vectors gave easy-vqa 0.890, 64 gave 0.985).

    python scripts/frozen_lm_ceiling.py --task easyvqa --limit 500 --soft 64 --steps 300
    python scripts/frozen_lm_ceiling.py --task scenes_long --describe grid --soft 64 --steps 300
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from zipvl.data.scenes import Shape, random_canvas, scene_question, tile_caption
from zipvl.eval import TaskOptions
from zipvl.eval.metrics import vqa_score
from zipvl.eval.tasks import VQA_SUFFIX, accuracy_by_type, make_items, question_type
from zipvl.models.default import IMAGE_TOKEN, build_default_model
from zipvl.models.text_teacher import SoftPrompt, teacher_user_turn, train_soft_prompt
from zipvl.models.tower_pretraining import easyvqa_labels
from zipvl.models.vision import IMAGE_SIZE
from zipvl.models.vision_training import chat_prompt, fast_bf16, padded


def describe(objects: list[dict], style: str, side: int = 4) -> str:
    """The image in words: ``list`` names the objects; ``grid`` writes every tile, row by row, as the LM reads the
    tiles ("empty" or "<colour> <shape>")."""
    if style == "list":
        return "The image shows " + ", ".join(f"a {o['color']} {o['shape']}" for o in objects) + "."
    return tile_caption([Shape(o["shape"], o["color"], tuple(o["tile"])) for o in objects], side, side)


def training_rows(task: str, style: str, rng: random.Random):
    """Endless (description, question, answer) from the training distribution: easy-vqa *train* questions on
    labelled images, or fresh canvases drawn like zipvl-eval's (never its seeded items)."""
    if task == "easyvqa":
        from easy_vqa import get_train_questions

        questions, answers, images = get_train_questions()
        labels = easyvqa_labels(questions, answers, images)
        rows = [(q, a, labels[i]) for q, a, i in zip(questions, answers, images) if i in labels]
        while True:
            q, a, (shape, color) = rng.choice(rows)
            yield describe([{"shape": shape, "color": color}], "list"), q, a
    while True:
        scene = random_canvas(rng, 4, IMAGE_SIZE)
        q, a = scene_question(rng, scene)
        yield describe([s.__dict__ for s in scene.shapes], style), q, a


def heldout_rows(task: str, style: str, tokenizer, limit: int):
    """zipvl-eval's seeded items (seed 0), the image replaced by its description; easy-vqa items whose image has no
    shape/colour label in its own questions are left out."""
    items = make_items(task, tokenizer, TaskOptions(limit=limit, seed=0))
    if task == "easyvqa":
        from easy_vqa import get_test_questions

        questions, answers, images = get_test_questions()
        labels = easyvqa_labels(questions, answers, images)
    for item in items:
        if task == "easyvqa":
            label = labels.get(images[item.meta["question_index"]])
            if label is None:
                continue
            text = describe([{"shape": label[0], "color": label[1]}], "list")
        else:
            text = describe(item.meta["objects"], style)
        yield text, item.question, item.answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("scenes_long", "easyvqa"), default="scenes_long")
    p.add_argument("--describe", choices=("list", "grid"), default="grid", help="canvas description (scenes_long)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--soft", type=int, default=16, help="soft-prompt vectors")
    p.add_argument("--limit", type=int, default=100, help="held-out items (zipvl-eval's seeded sample)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the result, with the loss per step, as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, processor = build_default_model(trained=False)
    tok = processor.tokenizer
    model.requires_grad_(False)
    soft = SoftPrompt(model.get_input_embeddings(), tok.convert_tokens_to_ids(IMAGE_TOKEN), args.soft)

    def prompt(text: str, question: str) -> str:
        return chat_prompt(tok, teacher_user_turn(args.soft, text, f"{question} {VQA_SUFFIX}"))

    def batches():
        draws = training_rows(args.task, args.describe, random.Random(f"ceiling-{args.seed}"))
        while True:
            batch = [next(draws) for _ in range(args.batch)]
            prompts = [tok(prompt(t, q), add_special_tokens=False)["input_ids"] for t, q, _ in batch]
            targets = [tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"] for _, _, a in batch]
            rows = [x + y for x, y in zip(prompts, targets)]
            yield (padded(rows, tok.pad_token_id), padded([[-100] * len(x) + y for x, y in zip(prompts, targets)], -100),
                   padded([[1] * len(r) for r in rows], 0))

    start = time.perf_counter()
    losses = train_soft_prompt(model, soft, batches(), args.steps, args.lr,
                               log=lambda s: print(f"{s}  {time.perf_counter() - start:.0f} s", flush=True),
                               bf16=fast_bf16())  # autocast only where the CPU has native bf16 matmuls

    typed_scores = []
    with torch.no_grad():
        for text, question, answers in heldout_rows(args.task, args.describe, tok, args.limit):
            ids = torch.tensor([tok(prompt(text, question), add_special_tokens=False)["input_ids"]])
            out = model.generate(inputs_embeds=soft(ids), attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                 do_sample=False)
            typed_scores.append((question_type(question, answers[0]),
                                 vqa_score(tok.decode(out[0], skip_special_tokens=True), answers)))
    scores = [s for _, s in typed_scores]
    result = {"command": "python scripts/frozen_lm_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "task": args.task, "describe": args.describe if args.task == "scenes_long" else "list",
              "items": len(scores), "accuracy": round(sum(scores) / len(scores), 4),
              "by_type": accuracy_by_type(typed_scores),
              "seconds": round(time.perf_counter() - start, 1), "loss": losses}
    print(json.dumps({k: v for k, v in result.items() if k != "loss"}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
