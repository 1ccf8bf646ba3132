# SPDX-License-Identifier: Apache-2.0
"""Task builders (offline data) and, on the embedded default (slow), the CLI end to end."""

import json

import pytest

from zipvl.errors import ZipVLInputError
from zipvl.eval.tasks import IMAGE_MARK, PHOTO_KEYWORDS, TaskOptions, make_items


def test_jsonl_items(tmp_path):
    (tmp_path / "img").mkdir()
    rows = [{"image": "img/a.png", "question": "What colour?", "answers": ["red", "red", "maroon"]},
            {"images": ["skimage:chelsea", "/abs/b.png"], "question": "Which animal?", "answer": "cat", "id": "q2"},
            {"question": "No image, no answer"}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = make_items("jsonl", None, TaskOptions(jsonl=str(path)))
    assert [i.id for i in items] == ["data-1", "q2", "data-3"]
    assert items[0].images == [str(tmp_path / "img" / "a.png")] and items[0].prompt.count(IMAGE_MARK) == 1
    assert items[1].images == ["skimage:chelsea", "/abs/b.png"] and items[1].answers == ["cat"]
    assert items[2].scorer == "none" and not items[2].images
    assert len(make_items("jsonl", None, TaskOptions(jsonl=str(path), limit=1))) == 1
    path.write_text("{not json\n")
    with pytest.raises(ZipVLInputError, match="not JSON"):
        make_items("jsonl", None, TaskOptions(jsonl=str(path)))


def test_visual_needle_and_easyvqa_items():
    pytest.importorskip("easy_vqa")
    items = make_items("visual_needle", None, TaskOptions(limit=4, n_images=4, seed=3))
    assert items == make_items("visual_needle", None, TaskOptions(limit=4, n_images=4, seed=3))  # seeded
    for item in items:
        assert len(item.images) == 4 and item.prompt.count(IMAGE_MARK) == 4
        slot = item.meta["target_image"]
        assert f"image {slot}" in item.prompt
        target = item.images[slot - 1]
        if item.scorer == "keywords":
            assert item.answers == PHOTO_KEYWORDS[target.split(":", 1)[1]]
        else:
            assert not target.startswith("skimage:") and len(item.answers) == 1
    assert {i.scorer for i in items} == {"keywords", "vqa"}
    vqa = make_items("easyvqa", None, TaskOptions(limit=5))
    assert len(vqa) == 5 and all(len(i.images) == 1 and i.scorer == "vqa" for i in vqa)


@pytest.mark.slow
def test_cli_on_embedded_default(tmp_path):
    from zipvl.eval.cli import main

    out = tmp_path / "out"
    rc = main(["--tasks", "needle,easyvqa", "--contexts", "400", "--depths", "0.5", "--needles", "1", "--limit", "2",
               "--taus", "0.975", "--baselines", "fixed,fastv", "--threads", "1", "-q", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    needle = report["tasks"]["needle"]["methods"]
    assert needle["dense"]["summary"]["accuracy"] == 1.0  # the dense model retrieves the passcode at 400 tokens
    assert 0.5 < needle["zipvl@0.975"]["summary"]["mean_ratio"] < 1.0
    vqa = report["tasks"]["easyvqa"]["methods"]
    assert vqa["dense"]["summary"]["accuracy"] is not None and "zipvl@0.975" in vqa
    assert (out / "layer_ratios_easyvqa.png").exists()
