# SPDX-License-Identifier: Apache-2.0
"""Train the default model's vision tower + projector against the frozen SmolLM2, on offline data only: the easy-vqa
train split and procedural scenes (:mod:`zipvl.data.scenes`) as single images, tiled canvases up to 4 x 4 (an
overview then the tiles: 1,088 visual tokens) and multi-image prompts. Two stages: the tower learns to see labelled
tiles (:mod:`zipvl.models.tower_pretraining`, no LM, minutes), then tower + projector learn to answer through the
frozen LM (the LLaVA recipe: answer loss only). Seeded end to end; ``scripts/train_vision.py`` is the CLI.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.scenes import (
    NUMBERS,
    Shape,
    canvas_caption,
    canvas_images,
    canvas_marks,
    presence_question,
    random_canvas,
    random_scene,
    scene_question,
    tile_caption,
    tiles,
)
from .text_teacher import (
    SoftPrompt,
    common_suffix,
    hidden_match_loss,
    labelled_loss,
    teacher_user_turn,
    train_soft_prompt,
)
from .tower_pretraining import LabelledTiles, PretrainConfig, easyvqa_labels, pretrain_tower
from .vision import IMAGE_SIZE, TOKENS_PER_IMAGE, TRAINABLE_PREFIXES
from .word_tiles import (
    TilePrompt,
    align_tower,
    heldout_cell_accuracy,
    load_tile_prompt,
    tile_cells,
    train_tile_prompt,
)

VQA_SUFFIX = "Answer the question using a single word or phrase."  # the eval tasks' prompt (zipvl.eval.tasks)
IMAGE_MARK = "<image>"
# the caption turn (TrainConfig.captions): asked after the questions, so the answers are read from the image alone
CAPTION_REQUEST = "Name what each image shows, row by row: its colour and shape, or empty."


KINDS = ("easyvqa", "scene1", "tiles2", "tiles3", "tiles4", "multi")
# samples per batch as a fraction of TrainConfig.batch: long prompts come in smaller batches, so every step costs
# about the same number of tokens (~100 per single image, ~1,100 per 4 x 4 canvas)
KIND_BATCH = {"easyvqa": 1.0, "scene1": 1.0, "tiles2": 0.5, "tiles3": 0.25, "tiles4": 0.125, "multi": 0.5}


NEW_TILE_PROMPT_STEPS = 250  # TrainConfig.tile_prompt_steps when it is None and no trained tile prompt is given


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 640
    batch: int = 8
    lr: float = 1e-3  # projector
    tower_lr: float = 3e-4  # the tower already sees after stage 1: move it gently
    min_lr_fraction: float = 0.05
    warmup: int = 30
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2
    bf16: bool = True  # autocast (the shipped weights were trained so, on AMX); scripts/train_vision.py --bf16 auto
    tower_steps: int = 1000  # stage 1 (0: skip)
    init: str | None = None  # start from these tower + projector weights (a later stage); skips stage 1
    # share of the batches of each kind in KINDS; in time: ~40 % easy-vqa, 20 % 4 x 4 canvases
    mix: tuple[float, ...] = (0.5, 0.06, 0.125, 0.07, 0.165, 0.08)
    # questions per image (later ones as follow-up chat turns): one encode of the visual tokens, several answers'
    # gradients — a 4 x 4 canvas is ~1,100 tokens and a follow-up ~25
    questions: int = 1
    # share of scene questions that test binding: "is there a <colour of one object> <shape of another>?" -> no,
    # each asked beside its positive about one of those two objects (-> yes), so "no" is not the prior
    binding: float = 0.0
    # add a last chat turn asking for every image's content (scenes.tile_caption: "red circle" / a grid of tiles with
    # "empty"), labelled and weighted ``caption_weight`` in the loss: the answer loss says one word per image, the
    # caption names what every tile holds and where — the LLaVA recipe's caption alignment, as a follow-up turn
    captions: bool = False
    caption_weight: float = 1.0
    # easy-vqa's yes/no phrasings are skewed in its train split ("is there a …?" 18 % yes, "is there not …?" 82 % yes)
    # and v7 answers four of them with their majority answer whatever the image (docs/vision.md): with this on, each
    # phrasing's rarer answer is drawn as often as its commoner one
    balance_yes_no: bool = False
    # distil the text teacher (.text_teacher): the frozen LM reading a soft prompt + each image's tiles in words
    # (0.985 easy-vqa / 0.91 canvas from such text). First ``teacher_steps`` train the teacher's soft prompt on the
    # same kind of samples; then every step adds ``distill`` x the mismatch of the LM's hidden states (all layers, the
    # question and answer tokens) between the student's visual tokens and the teacher's text
    distill: float = 0.0
    teacher_soft: int = 64
    teacher_steps: int = 300
    teacher_lr: float = 3e-2
    teacher_batch: int = 16
    # word tiles (.word_tiles): teach the projector to hand the LM each tile as trained vectors + the caption's own
    # word embeddings. ``tile_prompt_steps`` train the vectors through the frozen LM on exactly captioned tiles, then
    # ``align_steps`` regress tower + projector onto those targets (no LM); the answer-loss steps follow
    word_tiles: bool = False
    tile_prompt: str | None = None  # start from this trained tile prompt (save_tile_prompt's file)
    # None: NEW_TILE_PROMPT_STEPS from scratch, 0 (use it as it is) from a trained tile_prompt
    tile_prompt_steps: int | None = None
    tile_prompt_lr: float = 3e-2
    # the tile prompt's lr falls to 0 along a cosine (constant when off, as stages 14-15 trained): at a constant 3e-2
    # each continuation ended reading best whichever task its last batches held
    tile_prompt_cosine: bool = False
    tile_prompt_batch: int = 16
    align_steps: int = 1500
    align_lr: float = 1e-3
    align_tower_lr: float = 3e-4
    align_position_lr: float = 3e-2  # the tower's patch position embedding (word_tiles.align_tower says why)
    align_caption_weight: float = 10.0
    align_batch: int = 64
    align_overview_fraction: float = 0.2  # canvas overviews per regression batch (they carry the object count)
    align_fresh_projector: bool = True  # False: continue a word-tile model's regression with its own projector

    def __post_init__(self):
        if self.tile_prompt_steps is None:
            object.__setattr__(self, "tile_prompt_steps", 0 if self.tile_prompt else NEW_TILE_PROMPT_STEPS)
        if self.binding and self.questions < 2:
            raise ValueError(f"binding={self.binding} needs questions >= 2: each binding negative is asked beside its "
                             f"positive on the same image (got questions={self.questions})")
        if self.captions and not self.caption_weight > 0:
            raise ValueError(f"caption_weight must be > 0 with captions on (got {self.caption_weight})")
        if self.distill < 0 or (self.distill and self.teacher_steps < 1):
            raise ValueError(f"distill must be >= 0 and needs teacher_steps >= 1 (got distill={self.distill}, "
                             f"teacher_steps={self.teacher_steps})")
        if not 0 <= self.align_overview_fraction < 1:
            raise ValueError(f"align_overview_fraction must be in [0, 1), got {self.align_overview_fraction}")
        if self.word_tiles and (self.tile_prompt_steps < (0 if self.tile_prompt else 1) or self.align_steps < 0
                                or (self.align_steps == 0 and self.tile_prompt_steps == 0)):
            raise ValueError(f"word_tiles needs tile_prompt_steps >= 1 (>= 0 from a trained tile_prompt), "
                             f"align_steps >= 0, and one of them > 0 (got tile_prompt_steps={self.tile_prompt_steps}, "
                             f"align_steps={self.align_steps})")


@dataclass
class Sample:
    prompt: str  # user turn, with IMAGE_MARK per image
    images: list
    answer: str
    kind: str
    follow_ups: list = field(default_factory=list)  # (question, answer) turns after the first, same images
    caption: str | None = None  # the last turn's target (CAPTION_REQUEST), when captions are on


def canvas_prompt(n_tiles: int, cols: int, question: str) -> str:
    """A tiled canvas (:func:`scenes.canvas_marks`): the overview, then one image per tile, a newline after each row
    of tiles."""
    return canvas_marks(n_tiles // cols, cols, IMAGE_MARK) + f"\n{question} {VQA_SUFFIX}"


def multi_image_prompt(n: int, question: str) -> str:
    return "\n".join(f"Image {i + 1}: {IMAGE_MARK}" for i in range(n)) + f"\n{question} {VQA_SUFFIX}"


class SampleStream:
    """Seeded, endless stream of training batches; each batch is one kind, so padding stays small."""

    def __init__(self, seed: int, mix: tuple[float, ...], questions: int = 1, binding: float = 0.0,
                 captions: bool = False, balance_yes_no: bool = False):
        from easy_vqa import get_train_image_paths, get_train_questions

        self.rng = random.Random(seed)
        self.questions, self.answers, self.image_ids = get_train_questions()
        self.paths = get_train_image_paths()
        self.mix = mix
        self.n_questions = questions
        self.binding = binding
        # captions draw nothing from the rng: a stream with captions asks what the same stream without them asks
        self.labels = easyvqa_labels(self.questions, self.answers, self.image_ids) if captions else None
        self._order: list[int] = []
        self._pool = balanced_yes_no(self.questions, self.answers) if balance_yes_no else list(range(len(self.questions)))
        self._by_image: dict[int, list[int]] = {}
        for i, image in enumerate(self.image_ids):
            self._by_image.setdefault(image, []).append(i)

    def _easyvqa(self) -> Sample:
        from PIL import Image

        if not self._order:
            self._order = list(self._pool)
            self.rng.shuffle(self._order)
        i = self._order.pop()
        image = self.image_ids[i]
        img = Image.open(self.paths[image]).convert("RGB")  # the processor resizes, as in zipvl-eval
        others = [j for j in self._by_image[image] if j != i]
        more = self.rng.sample(others, min(len(others), self.n_questions - 1))
        caption = None
        if self.labels is not None and image in self.labels:  # 3,181 of the 4,000 train images are labelled
            shape, color = self.labels[image]
            caption = tile_caption([Shape(shape, color, (0, 0))], 1, 1)
        return Sample(f"{IMAGE_MARK}\n{self.questions[i]} {VQA_SUFFIX}", [img], self.answers[i], "easyvqa",
                      [(self.questions[j], self.answers[j]) for j in more], caption)

    def _scene_questions(self, scene, multi: bool = False) -> list[tuple[str, str]]:
        """``n_questions`` distinct questions about one scene. A ``binding`` share are pairs from
        :func:`binding_questions`: one object's colour with another's shape (answer no) beside the same question about
        one of those two objects (yes), in random order — without the positive (stage 9) every canvas "is there"
        question drifted to "no"."""
        rng, out = self.rng, []
        for _ in range(8 * self.n_questions):
            if len(out) >= self.n_questions:
                break
            # no draw when binding is off: the stream stays the one earlier stages' reproduce commands rely on
            pair = None
            if self.binding and self.n_questions - len(out) >= 2 and rng.random() < self.binding:
                pair = binding_questions(rng, scene)
            new = pair or [scene_question(rng, scene)]
            if multi:
                new = [("how many images show a shape?", NUMBERS[len(scene.shapes)]) if q.startswith("how many")
                       else (q, a) for q, a in new]
            asked = {q for q, _ in out}
            if all(q not in asked for q, _ in new):
                out += new
        return out

    def _tiled(self, side: int) -> Sample:
        rng = self.rng
        scene = random_canvas(rng, side, IMAGE_SIZE)
        (question, answer), *more = self._scene_questions(scene)
        return Sample(canvas_prompt(side * side, side, question), canvas_images(scene), answer, f"tiles{side}", more,
                      self._caption(scene, canvas=True))

    def _multi(self) -> Sample:
        """2-4 images, one object each, distinct shapes where asked about: the question names a shape or colour."""
        rng = self.rng
        n = rng.randint(2, 4)
        scene = random_scene(rng, 1, n, IMAGE_SIZE, n, distinct_shapes=n <= 3)
        (question, answer), *more = self._scene_questions(scene, multi=True)
        return Sample(multi_image_prompt(n, question), tiles(scene.render(), IMAGE_SIZE), answer, "multi", more,
                      self._caption(scene))

    def _caption(self, scene, canvas: bool = False) -> str | None:
        """With captions on: every image in words (a canvas's overview count first, :func:`scenes.canvas_caption`)."""
        if self.labels is None:
            return None
        return canvas_caption(scene) if canvas else tile_caption(scene.shapes, scene.rows, scene.cols)

    def batch(self, size: int) -> list[Sample]:
        kind = self.rng.choices(KINDS, weights=self.mix)[0]
        make = {"easyvqa": self._easyvqa, "scene1": lambda: self._tiled(1), "tiles2": lambda: self._tiled(2),
                "tiles3": lambda: self._tiled(3), "tiles4": lambda: self._tiled(4), "multi": self._multi}[kind]
        return [make() for _ in range(max(1, round(size * KIND_BATCH[kind])))]


def balanced_yes_no(questions: list[str], answers: list[str]) -> list[int]:
    """Question indices with each yes/no phrasing (its first three words) balanced: the rarer answer's questions
    repeated until they are as many as the commoner's; every other question once."""
    groups: dict[str, dict[str, list[int]]] = {}
    out = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        if a in ("yes", "no"):
            groups.setdefault(" ".join(q.lower().split()[:3]), {"yes": [], "no": []})[a].append(i)
        else:
            out.append(i)
    for by_answer in groups.values():
        rare, common = sorted(by_answer.values(), key=len)
        out += common + ((rare * (len(common) // len(rare) + 1))[:len(common)] if rare else [])
    return out


def binding_questions(rng: random.Random, scene) -> list[tuple[str, str]] | None:
    """"is there a <colour of one object> <shape of another>?" (no: no object has both) and the same question about
    one of those two objects (yes), in random order; None if the scene has no such pair."""
    present = {(s.color, s.shape) for s in scene.shapes}
    pairs = [(a, b) for a in scene.shapes for b in scene.shapes if a is not b and (a.color, b.shape) not in present]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    real = rng.choice((a, b))
    out = [(presence_question(a.color, b.shape), "no"), (presence_question(real.color, real.shape), "yes")]
    rng.shuffle(out)
    return out


def fast_bf16() -> bool:
    """Whether bf16 autocast pays off on this CPU: only where it does bf16 matmuls natively (AVX512-BF16 / AMX).
    Elsewhere PyTorch emulates them: on an AVX2-only CPU a 512 x 576 x 1,536 matmul took 0.75 s in bf16 vs
    0.014 s in fp32 (measured 2026-12-02)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def chat_prompt(tokenizer, user: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                         tokenize=False)


def _turn(text: str) -> str:
    """A later user turn in SmolLM2's ChatML markers, as its chat template writes them."""
    return f"\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def _turns(tok, s: Sample, caption_turn: bool) -> list[tuple[list[int], str | None]]:
    """What follows the first user turn: the answer, each follow-up question and answer, the caption turn; as
    (token ids, which labels they go to)."""
    pieces = [(s.answer + "<|im_end|>", "answer")]
    for question, answer in s.follow_ups:
        pieces += [(_turn(f"{question} {VQA_SUFFIX}"), None), (answer + "<|im_end|>", "answer")]
    if caption_turn and s.caption is not None:
        pieces += [(_turn(CAPTION_REQUEST), None), (s.caption + "<|im_end|>", "caption")]
    return [(tok(text, add_special_tokens=False)["input_ids"], target) for text, target in pieces]


def _labelled_row(prompt: list[int], turns: list[tuple[list[int], str | None]]):
    """The prompt's ids then each turn's, with the answer labels and the caption labels (-100 elsewhere)."""
    row, label, caption = list(prompt), [-100] * len(prompt), [-100] * len(prompt)
    for piece, target in turns:
        row += piece
        label += piece if target == "answer" else [-100] * len(piece)
        caption += piece if target == "caption" else [-100] * len(piece)
    return row, label, caption


def padded(values: list[list[int]], fill: int) -> torch.Tensor:
    """Right-pad token rows to the longest with ``fill``."""
    width = max(len(v) for v in values)
    return torch.tensor([v + [fill] * (width - len(v)) for v in values])


def encode_batch(processor, samples: list[Sample], caption_turn: bool = True) -> dict:
    """Right-padded inputs with labels on the answer tokens (+ end of turn) only; follow-up questions are later turns,
    each answer labelled. With ``caption_turn``, samples with a caption end with the caption turn, labelled apart in
    ``caption_labels`` (present only when some sample has one)."""
    tok = processor.tokenizer
    rows, labels, caption_labels, pixels = [], [], [], []
    for s in samples:
        enc = processor(text=chat_prompt(tok, s.prompt), images=s.images, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        row, label, caption = _labelled_row(ids, _turns(tok, s, caption_turn))
        rows.append(row)
        labels.append(label)
        caption_labels.append(caption)
        pixels.append(enc["pixel_values"])
    out = {"input_ids": padded(rows, tok.pad_token_id), "attention_mask": padded([[1] * len(r) for r in rows], 0),
           "labels": padded(labels, -100), "pixel_values": torch.cat(pixels)}
    if caption_turn and any(s.caption is not None for s in samples):
        out["caption_labels"] = padded(caption_labels, -100)
    return out


def encode_teacher(tok, samples: list[Sample], n_soft: int, caption_turn: bool = False) -> dict:
    """The same samples for the text teacher (:mod:`.text_teacher`): the images replaced by the soft prompt and their
    description (``Sample.caption``, which every sample here must have), then the same question and later turns,
    labels on the answers."""
    rows, labels = [], []
    for s in samples:
        question = s.prompt.split("\n")[-1]  # every prompt ends with "<question> <VQA_SUFFIX>" on its own line
        prompt = tok(chat_prompt(tok, teacher_user_turn(n_soft, s.caption, question)), add_special_tokens=False)
        row, label, _ = _labelled_row(prompt["input_ids"], _turns(tok, s, caption_turn))
        rows.append(row)
        labels.append(label)
    return {"input_ids": padded(rows, tok.pad_token_id), "labels": padded(labels, -100),
            "attention_mask": padded([[1] * len(r) for r in rows], 0)}


def shared_spans(student: dict, teacher: dict, rows: list[int]) -> list[tuple[int, int, int, int, int]]:
    """Per teacher row j (student row ``rows[j]``): (student row, its end, j, its end, trailing tokens they share)."""
    out = []
    for j, i in enumerate(rows):
        s_end, t_end = int(student["attention_mask"][i].sum()), int(teacher["attention_mask"][j].sum())
        n = common_suffix(student["input_ids"][i, :s_end].tolist(), teacher["input_ids"][j, :t_end].tolist())
        out.append((i, s_end, j, t_end, n))
    return out


def student_forward(model, inputs: dict, hidden_states: bool = False):
    """The LLaVA body (no LM head) on an encoded batch; ``hidden_states``: also every layer's output."""
    fields = {k: v for k, v in inputs.items() if k not in ("labels", "caption_labels")}
    return model.model(**fields, use_cache=False, output_hidden_states=hidden_states)


def next_token_loss(model, inputs: dict, caption_weight: float, outputs=None) -> torch.Tensor:
    """Answer loss + ``caption_weight`` x caption loss, each the mean over its own tokens (:func:`labelled_loss`).
    ``outputs``: :func:`student_forward`'s, if already run."""
    outputs = outputs if outputs is not None else student_forward(model, inputs)
    total = 0.0
    for target, weight in ((inputs["labels"], 1.0), (inputs.get("caption_labels"), caption_weight)):
        if target is not None and (target[:, 1:] != -100).any():
            total = total + weight * labelled_loss(model, outputs.last_hidden_state, target)
    return total


def freeze_language_model(model) -> list[torch.nn.Parameter]:
    """Only the tower + projector learn; returns their parameters."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(TRAINABLE_PREFIXES))
        if p.requires_grad:
            params.append(p)
    return params


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine down to ``min_lr_fraction``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_fraction + 0.5 * (1 - cfg.min_lr_fraction) * (1 + math.cos(math.pi * t))


def train(model, processor, cfg: TrainConfig, log=print) -> dict:
    """Stage 1 (tower alone) then ``cfg.steps`` AdamW steps through the frozen LM, in place. Returns the stage-1
    result and the per-step log of stage 2 (loss, kind, lr, tokens, seconds)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    stage1 = None
    if cfg.init:  # a later stage continues from shipped weights, so it needs neither stage 1 nor the rescale
        from .vision import load_vision

        load_vision(model, Path(cfg.init))
    elif cfg.tower_steps:
        from .default import match_projector_scale

        pre = PretrainConfig(steps=cfg.tower_steps, seed=cfg.seed, bf16=cfg.bf16)
        stage1 = pretrain_tower(model.model.vision_tower, processor.image_processor, IMAGE_SIZE, pre, log=log)
        # the projector was scaled for the random tower: rescale on real tiles (match_projector_scale is no_grad)
        match_projector_scale(model, LabelledTiles(processor.image_processor, IMAGE_SIZE, pre).batch(32)[0])
    params = freeze_language_model(model)
    tower = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("model.vision_tower.")]
    projector = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("model.vision_tower.")]
    opt = torch.optim.AdamW([{"params": projector, "lr": cfg.lr, "base": cfg.lr},
                             {"params": tower, "lr": cfg.tower_lr, "base": cfg.tower_lr}],
                            weight_decay=cfg.weight_decay)
    tok = processor.tokenizer
    soft, teacher_losses = None, None
    if cfg.distill:
        soft = SoftPrompt(model.get_input_embeddings(), tok.convert_tokens_to_ids(IMAGE_MARK), cfg.teacher_soft)
        # its own stream (seed + TEACHER_SEED_OFFSET): the student's draws stay the ones its seed alone gives
        rows = teacher_batches(tok, SampleStream(cfg.seed + TEACHER_SEED_OFFSET, cfg.mix, cfg.questions, cfg.binding,
                                                 captions=True), cfg)
        teacher_losses = train_soft_prompt(model, soft, rows, cfg.teacher_steps, cfg.teacher_lr, log=log,
                                           bf16=cfg.bf16)
    words = word_tiles(model, processor, cfg, log) if cfg.word_tiles else None
    model.train()
    stream = SampleStream(cfg.seed, cfg.mix, cfg.questions, cfg.binding, captions=cfg.captions or bool(cfg.distill),
                          balance_yes_no=cfg.balance_yes_no)
    history = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        samples = stream.batch(cfg.batch)
        inputs = encode_batch(processor, samples, caption_turn=cfg.captions)
        for group in opt.param_groups:
            group["lr"] = group["base"] * lr_factor(step, cfg)
        match = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            if soft is None and "caption_labels" not in inputs:  # the loss the shipped stages were trained with
                loss = model(**inputs, use_cache=False).loss
            else:
                outputs = student_forward(model, inputs, hidden_states=soft is not None)
                loss = next_token_loss(model, inputs, cfg.caption_weight, outputs)
                described = [i for i, s in enumerate(samples) if s.caption is not None] if soft is not None else []
                if described:
                    match = teacher_match(model, soft, tok, inputs, outputs, [samples[i] for i in described],
                                          described, cfg)
                    loss = loss + cfg.distill * match
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append({"step": step, "loss": loss.item(), "kind": samples[0].kind, "lr": cfg.lr * lr_factor(step, cfg),
                        "tokens": int(inputs["input_ids"].shape[1]), "seconds": time.perf_counter() - start,
                        **({"match": match.item()} if match is not None else {})})
        if step % 20 == 0 or step == cfg.steps - 1:
            recent = history[-20:]
            matched = [h["match"] for h in recent if "match" in h]
            log(f"step {step:5d}  loss {sum(h['loss'] for h in recent) / len(recent):.3f}"
                + (f"  match {sum(matched) / len(matched):.3f}" if matched else "")
                + f"  ({samples[0].kind}, {inputs['input_ids'].shape[1]} tok)  {time.perf_counter() - start:.0f} s")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {"stage1": stage1, "history": history, "teacher": teacher_losses, "word_tiles": words}


def word_tiles(model, processor, cfg: TrainConfig, log=print) -> dict:
    """Steps 1-2 of :mod:`.word_tiles`: train the tile prompt (from ``cfg.tile_prompt`` if given) through the frozen LM
    on exactly captioned samples (a stream of its own seed), then regress tower + projector onto it (unless
    ``align_steps`` is 0: a tile-prompt stage alone). Returns both logs and the tile prompt."""
    tok = processor.tokenizer
    if cfg.tile_prompt:
        prompt = load_tile_prompt(model.get_input_embeddings(), tok, cfg.tile_prompt)
        prompt.vectors.requires_grad_(True)
    else:
        prompt = TilePrompt(model.get_input_embeddings(), tok, TOKENS_PER_IMAGE)
    losses = train_tile_prompt(model, tok.convert_tokens_to_ids(IMAGE_MARK), prompt,
                               tile_prompt_batches(processor, cfg), cfg.tile_prompt_steps, cfg.tile_prompt_lr, log=log,
                               bf16=cfg.bf16, cosine=cfg.tile_prompt_cosine)
    if cfg.align_steps == 0:
        return {"tile_prompt": losses, "align": [], "prompt": prompt, "heldout_cells": None}
    align = align_tower(model, processor, prompt, cfg.align_steps, cfg.align_lr, cfg.align_tower_lr, cfg.align_batch,
                        cfg.seed, cfg.bf16, cfg.align_position_lr, cfg.align_caption_weight,
                        cfg.align_overview_fraction, cfg.align_fresh_projector, log=log)
    cells = heldout_cell_accuracy(model, processor, prompt)
    log(f"held-out tiles decoded to their caption: {cells}")
    return {"tile_prompt": losses, "align": align, "prompt": prompt, "heldout_cells": cells}


def tile_prompt_batches(processor, cfg: TrainConfig):
    """Endless (encoded batch, its tiles' cells) of captioned samples, from a stream of its own seed (the answer
    steps' draws stay the ones their seed alone gives)."""
    stream = SampleStream(cfg.seed + WORD_TILES_SEED_OFFSET, cfg.mix, cfg.questions, cfg.binding, captions=True)
    while True:
        samples = [s for s in stream.batch(cfg.tile_prompt_batch) if s.caption is not None]
        if samples:  # a batch of unlabelled easy-vqa images has no caption: skip it
            yield encode_batch(processor, samples, caption_turn=False), [c for s in samples for c in tile_cells(s.caption)]


TEACHER_SEED_OFFSET = 1_000_003
WORD_TILES_SEED_OFFSET = 2_000_003


def teacher_batches(tok, stream: SampleStream, cfg: TrainConfig):
    """Endless (ids, labels, mask) of ``cfg.teacher_batch`` described samples from ``stream``, for the soft prompt."""
    while True:
        samples: list[Sample] = []
        while len(samples) < cfg.teacher_batch:
            samples += [s for s in stream.batch(cfg.batch) if s.caption is not None]
        enc = encode_teacher(tok, samples[:cfg.teacher_batch], cfg.teacher_soft, cfg.captions)
        yield enc["input_ids"], enc["labels"], enc["attention_mask"]


def teacher_match(model, soft, tok, inputs: dict, outputs, samples: list[Sample], rows: list[int],
                  cfg: TrainConfig) -> torch.Tensor:
    """The hidden-state mismatch between the student's batch (``outputs``, all layers) and the text teacher reading
    ``samples`` (student rows ``rows``) on the tokens they share: the question, the answers, the chat markers."""
    teacher = encode_teacher(tok, samples, cfg.teacher_soft, cfg.captions)
    with torch.no_grad():
        t = model.model.language_model(inputs_embeds=soft(teacher["input_ids"]),
                                       attention_mask=teacher["attention_mask"], output_hidden_states=True)
    return hidden_match_loss(outputs.hidden_states, t.hidden_states, shared_spans(inputs, teacher, rows))


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
