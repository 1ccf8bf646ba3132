# SPDX-License-Identifier: Apache-2.0
"""scripts/frozen_lm_ceiling.py: the text that stands in for the image, and the script end to end (its soft prompt:
tests/integration/test_text_teacher.py)."""

import random
import runpy
from pathlib import Path

import pytest

from zipvl.data.scenes import random_scene

CEILING = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "frozen_lm_ceiling.py"))


def test_grid_description_writes_each_object_in_its_tile_and_nothing_else():
    scene = random_scene(random.Random(3), 4, 4, 112, 3)
    rows = CEILING["describe"]([s.__dict__ for s in scene.shapes], "grid").split("\n")
    cells = [row.split(", ") for row in rows]
    assert [len(r) for r in cells] == [4, 4, 4, 4]
    for s in scene.shapes:
        assert cells[s.tile[0]][s.tile[1]] == f"{s.color} {s.shape}"
    assert sum(c == "empty" for r in cells for c in r) == 16 - len(scene.shapes)


def test_list_description_names_every_object_once():
    objects = [{"shape": "circle", "color": "red"}, {"shape": "triangle", "color": "teal"}]
    assert CEILING["describe"](objects, "list") == "The image shows a red circle, a teal triangle."


def test_question_type_splits_presence_by_answer():
    kind = CEILING["question_type"]
    assert kind("is there a red circle in the image?", "no") == "is there a (no)"
    assert kind("is there not a circle?", "yes") == "is there not"
    assert kind("what color is the circle?", "red") == "what color"


@pytest.mark.slow
def test_ceiling_script_runs_end_to_end_on_the_real_lm(capsys, tmp_path):
    """Two training steps and two held-out canvases: the loop, the generation and the report."""
    import json

    out = tmp_path / "ceiling.json"
    assert CEILING["main"](["--steps", "2", "--batch", "2", "--limit", "2", "--soft", "2", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["items"] == 2 and 0.0 <= report["accuracy"] <= 1.0
    assert sum(v["items"] for v in report["by_type"].values()) == 2
    written = json.loads(out.read_text())
    assert len(written["loss"]) == 2 and written["accuracy"] == report["accuracy"]
