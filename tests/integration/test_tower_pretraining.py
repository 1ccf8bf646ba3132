# SPDX-License-Identifier: Apache-2.0
"""Stage 1 of the vision recipe: the labels it trains on are right, and its loop trains a tower."""

import random
import re

import numpy as np
import pytest
import torch

from zipvl.data.scenes import COLORS, SHAPES, canvas_images, random_canvas
from zipvl.models.tower_pretraining import LabelledTiles, PretrainConfig, easyvqa_labels, pretrain_tower


def _positive_yes_no(question: str):
    """(attribute, value) named by a yes/no question without negation, e.g. "is a green shape present?"."""
    if re.search(r"\bnot?\b", question) or not question.startswith(("is ", "does ")):
        return None
    words = set(re.findall(r"[a-z]+", question))
    named = [("shape", w) for w in words & set(SHAPES)] + [("color", w) for w in words & set(COLORS)]
    return named[0] if len(named) == 1 else None


def test_easyvqa_labels_agree_with_each_images_yes_no_questions():
    """Labels come from the what-questions; the image's own yes/no questions (not used) must agree with them."""
    from easy_vqa import get_train_questions

    questions, answers, image_ids = get_train_questions()
    labels = easyvqa_labels(questions, answers, image_ids)
    assert len(labels) > 3000 and all(s in SHAPES and c in COLORS for s, c in labels.values())
    checked = 0
    for q, a, i in zip(questions, answers, image_ids):
        named = _positive_yes_no(q)
        if i in labels and named:
            shape, color = labels[i]
            assert (a == "yes") == (named[1] == (shape if named[0] == "shape" else color)), (q, a, labels[i])
            checked += 1
    assert checked > 5000


def test_labelled_tiles_match_their_pixels():
    """Procedural tiles: an object's colour is in the tile iff the tile is labelled with it; empty tiles occur."""
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    data = LabelledTiles(proc, 56, PretrainConfig(seed=3))
    empty = 0
    for _ in range(40):
        image, label = data._scene_tile()
        pixels = np.asarray(image).astype(int)
        for name, rgb in COLORS.items():
            has = (np.abs(pixels - np.array(rgb)).max(-1) <= 8).sum() > 20
            assert has == (label is not None and label[1] == name), (label, name)
        empty += label is None
    assert 0 < empty < 40
    pixels, present, shape, color, count = data.batch(16)
    assert pixels.shape == (16, 3, 56, 56)
    assert ((shape >= 0) == present.bool()).all() and ((color >= 0) == present.bool()).all()
    assert (count == -1).all()  # no overviews unless asked for


def test_overviews_are_whole_canvases_labelled_with_their_count():
    """A quarter of the batch: overviews, last; each holds as many object colours as its count label says."""
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112})
    data = LabelledTiles(proc, 112, PretrainConfig(seed=5, overview_fraction=0.25))
    _, present, shape, color, count = data.batch(16)
    assert (count[:12] == -1).all() and set(count[12:].tolist()) <= {1, 2, 3}
    assert (shape[12:] == -1).all() and (color[12:] == -1).all() and present[12:].all()
    rng = random.Random(5)  # the stream's own seed: an overview is a fresh 2 x 2 to 4 x 4 canvas's first image
    data = LabelledTiles(proc, 112, PretrainConfig(seed=5, overview_fraction=0.25))
    for _ in range(10):
        image, n = data._overview()
        scene = random_canvas(rng, rng.randint(2, 4), 112)
        assert n == len(scene.shapes) and np.array_equal(np.asarray(image), np.asarray(canvas_images(scene)[0]))



def test_stage_one_teaches_a_tiny_tower_colour():
    """Sixty steps on a tiny tower: held-out colour accuracy far above chance (1/8)."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=56, patch_size=14))
    proc = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    result = pretrain_tower(tower, proc, 56, PretrainConfig(steps=60, batch=32, lr=3e-3, warmup=5), log=lambda s: None)
    assert result["heldout"]["color"] > 0.4, result["heldout"]
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]


@pytest.mark.parametrize("seed", [0, 1])
def test_labelled_tiles_are_seeded(seed):
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    a = LabelledTiles(proc, 28, PretrainConfig(seed=seed)).batch(8)
    b = LabelledTiles(proc, 28, PretrainConfig(seed=seed)).batch(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
