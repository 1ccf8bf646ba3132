# SPDX-License-Identifier: Apache-2.0
"""Procedural scenes: deterministic, objects inside their tiles, answers that follow from the scene."""

import random

import numpy as np
import pytest

from zipvl.data.scenes import (
    COLORS,
    NUMBERS,
    SHAPES,
    canvas_caption,
    canvas_images,
    canvas_marks,
    random_canvas,
    random_scene,
    scene_question,
    tile_caption,
    tiles,
)
from zipvl.eval.tasks import IMAGE_MARK, VQA_SUFFIX, TaskOptions, make_items, question_type


def _has_color(img, rgb, tol=8) -> bool:
    a = np.asarray(img).astype(int)
    return bool((np.abs(a - np.array(rgb)).max(-1) <= tol).sum() > 20)


@pytest.mark.parametrize("side", [1, 2, 4])
def test_objects_lie_in_their_tiles_only(side):
    rng = random.Random(side)
    for _ in range(5):
        scene = random_scene(rng, side, side, 112, min(3, side * side))
        image = scene.render()
        assert image.size == (112 * side, 112 * side)
        assert np.array_equal(np.asarray(image), np.asarray(scene.render()))  # seeded
        parts = tiles(image, 112)
        assert len(parts) == side * side and all(p.size == (112, 112) for p in parts)
        for s in scene.shapes:
            for j, part in enumerate(parts):
                inside = (j // side, j % side) == s.tile
                assert _has_color(part, COLORS[s.color]) == inside, (s, j)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 3), (2, 2), (4, 4)])
def test_tile_caption_names_each_tile_in_the_order_the_tiles_are_cut(rows, cols):
    """Cell k of the caption (row by row) is the k-th tile :func:`tiles` cuts: the one holding that object's colour."""
    rng = random.Random(rows * 10 + cols)
    for _ in range(4):
        scene = random_scene(rng, rows, cols, 112, rng.randint(0, min(3, rows * cols)))
        lines = tile_caption(scene.shapes, rows, cols).split("\n")
        cells = [cell for line in lines for cell in line.split(", ")]
        assert len(lines) == rows and len(cells) == rows * cols
        for part, cell in zip(tiles(scene.render(), 112), cells):
            if cell == "empty":
                assert not any(_has_color(part, rgb) for rgb in COLORS.values())
            else:
                color, shape = cell.split()
                assert _has_color(part, COLORS[color]) and shape in SHAPES


@pytest.mark.parametrize("side", [1, 2, 4])
def test_canvas_images_are_an_overview_showing_every_object_then_the_tiles(side):
    """Several tiles: first the whole canvas shrunk to one tile (every object's colour in it), then :func:`tiles`;
    the marks and the caption follow the same order, the overview's caption line its count."""
    rng = random.Random(side)
    for _ in range(4):
        scene = random_canvas(rng, side, 112)
        images = canvas_images(scene)
        parts = tiles(scene.render(), 112)
        overview = side > 1
        assert len(images) == len(parts) + overview and all(i.size == (112, 112) for i in images)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images[overview:], parts))
        if overview:
            assert all(_has_color(images[0], COLORS[s.color], tol=12) for s in scene.shapes)
        marks = canvas_marks(side, side, "<i>")
        assert marks.count("<i>") == len(images) and marks.split("\n")[overview:] == ["<i>" * side] * side
        lines = canvas_caption(scene).split("\n")
        assert len(lines) == side + overview
        if overview:
            n = len(scene.shapes)
            assert lines[0] == f"{NUMBERS[n]} shape" + ("s" if n > 1 else "")


def test_answers_follow_from_the_scene():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        scene = random_scene(rng, 2, 2, 112, rng.randint(1, 3))
        q, a = scene_question(rng, scene)
        words = q.rstrip("?").split()
        kinds = [s.shape for s in scene.shapes]
        if q.startswith("what color is the"):
            (s,) = [s for s in scene.shapes if s.shape == words[-1]]  # asked only about a unique shape
            assert a == s.color and a in COLORS
        elif q.startswith("what is the"):
            assert a == next(s.shape for s in scene.shapes if s.color == words[3]) and a in SHAPES
        elif q.startswith("how many"):
            assert a == NUMBERS[len(kinds)]
        else:
            color, shape = words[3], words[4]
            assert a == ("yes" if any(s.color == color and s.shape == shape for s in scene.shapes) else "no")
        seen.add(q.split()[0] + ("" if a not in ("yes", "no") else a))
    assert seen >= {"what", "how", "isyes", "isno"}


def test_question_type_names_a_question_by_its_phrasing():
    """The per-type rows of the training card's held-out check: each generated question by its first words ("is there
    a" split by the answer), easy-vqa's negations apart from "is the", anything else "other"."""
    rng = random.Random(1)
    by_first_words = {"how many": "how many", "what color": "what color", "what is": "what is the"}
    for _ in range(200):
        q, a = scene_question(rng, random_scene(rng, 4, 4, 112, rng.randint(1, 3)))
        first = " ".join(q.split()[:2])
        assert question_type(q, a) == by_first_words.get(first, f"is there a ({a})"), (q, a)
    assert question_type("Is there not a red circle in the image?", "no") == "is there not"
    assert question_type("is there no triangle?", "yes") == "is there no"
    assert question_type("Is the shape blue?", "yes") == "is the"
    assert question_type("Does the image contain a circle?", "no") == "does"
    assert question_type("Name the shape.", "circle") == "other"


@pytest.mark.parametrize("task,images_per_item", [("scenes", 5), ("scenes_long", 17), ("scenes_count", 17),
                                                  ("multi_image", 4)])
def test_scene_tasks(task, images_per_item, tmp_path, monkeypatch):
    """Canvases carry their overview before the tiles; a multi-image prompt is its images alone."""
    monkeypatch.setenv("ZIPVL_CACHE", str(tmp_path))
    opts = TaskOptions(limit=6, seed=2, n_images=4)
    items = make_items(task, None, opts)
    assert [i.answers for i in items] == [i.answers for i in make_items(task, None, opts)]  # seeded
    for item in items:
        assert len(item.images) == images_per_item and item.prompt.count(IMAGE_MARK) == images_per_item
        assert item.meta["overview"] == (task != "multi_image")
        assert item.scorer == "vqa" and len(item.answers) == 1
        assert item.prompt.endswith(f"\n{item.question} {VQA_SUFFIX}") and VQA_SUFFIX not in item.question
        assert question_type(item.question, item.answers[0]) != "other"
        if task == "multi_image":
            assert "how many" not in item.prompt
        if task == "scenes_count":  # balanced: one, two, three objects in turn, the answer their number
            k = int(item.id.rsplit("-", 1)[1])
            assert item.answers == [NUMBERS[len(item.meta["objects"])]] == [("one", "two", "three")[k % 3]]
