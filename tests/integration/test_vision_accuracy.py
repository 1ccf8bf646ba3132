# SPDX-License-Identifier: Apache-2.0
"""Nightly: the shipped vision weights on fixed, seeded held-out samples (easy-vqa test split, 4 x 4 canvases)."""

import json

import pytest
import torch

from zipvl.eval.metrics import score
from zipvl.eval.tasks import TaskOptions, build_inputs, make_items
from zipvl.pipeline import generate

pytestmark = pytest.mark.slow


def _accuracy(model, processor, items) -> float:
    hits = 0.0
    for item in items:
        inputs, _ = build_inputs(processor, item)
        hits += score("vqa", generate(model, processor, inputs, max_new_tokens=4).text[0], item.answers)
    return hits / len(items)


@torch.no_grad()
def test_shipped_weights_reproduce_their_recorded_accuracy(default_model):
    """The held-out accuracy written in the weights' card (same seeded easy-vqa test sample, same prompt) is what
    the shipped weights give, within 2 points."""
    from zipvl.models.vision import CARD

    card = json.loads(CARD.read_text())["heldout"]
    model, processor = default_model
    items = make_items("easyvqa", None, TaskOptions(limit=card["questions"], seed=card["sample_seed"]))
    assert abs(_accuracy(model, processor, items) - card["accuracy"]) <= 0.02
