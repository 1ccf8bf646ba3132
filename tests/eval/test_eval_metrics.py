# SPDX-License-Identifier: Apache-2.0
"""Scoring functions against hand-made cases."""

import math

import torch

from zipvl.eval.metrics import (
    first_divergence,
    keyword_score,
    kl_divergence,
    needle_score,
    normalize_answer,
    score,
    sequence_exact_match,
    top1_agreement,
    vqa_score,
)


def test_kl_divergence_hand_computed():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64).log()
    q = torch.tensor([[0.9, 0.1], [0.9, 0.1]], dtype=torch.float64).log()
    kl = kl_divergence(p, q)
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert abs(float(kl[0]) - want) < 1e-9
    assert float(kl[1]) == 0.0
    # p_ref = 0 where q = 0 contributes nothing (no nan), and KL is asymmetric
    p0 = torch.tensor([1.0, 0.0], dtype=torch.float64).log()
    q0 = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    assert abs(float(kl_divergence(p0, q0)) - math.log(2)) < 1e-12
    assert math.isinf(float(kl_divergence(q0, p0)))


def test_top1_and_sequences():
    a = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.1, 0.2, 0.7]])
    assert top1_agreement(a, b).tolist() == [True, False]
    assert sequence_exact_match([1, 2, 3], torch.tensor([1, 2, 3]))
    assert not sequence_exact_match([1, 2, 3], [1, 2])
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2
    assert first_divergence([4], [4]) is None


def test_normalize_answer():
    assert normalize_answer("The Cat's  toy!") == "cat toy"
    assert normalize_answer("Two red circles.") == "2 red circles"


def test_vqa_score():
    assert vqa_score("Red.", ["red"]) == 1.0
    assert vqa_score("The shape is a red circle", ["circle"]) == 1.0
    assert vqa_score("reddish", ["red"]) == 0.0  # whole words only
    assert vqa_score("two", ["2"]) == 1.0
    assert vqa_score("yes, or maybe no", ["yes"]) == 0.0  # ambiguous yes/no
    assert vqa_score("No.", ["no"]) == 1.0
    ten = ["cat"] * 2 + ["dog"] * 8
    assert abs(vqa_score("a cat", ten) - 2 / 3) < 1e-12  # VQAv2: min(1, matches / 3)
    assert vqa_score("dog", ten) == 1.0
    assert vqa_score("anything", []) == 0.0


def test_needle_and_keywords():
    assert needle_score("The secret passcode is 48213.", ["48213"]) == 1.0
    assert needle_score("It is 482130", ["48213"]) == 0.0
    assert needle_score("It is 4821", ["48213"]) == 0.0
    assert needle_score("MANGO", ["mango"]) == 1.0
    assert keyword_score("A cat on a sofa", ["kitten", "cat"]) == 1.0
    assert keyword_score("a category", ["cat"]) == 0.0
    assert keyword_score("a space suit", ["space suit"]) == 1.0
    assert score("none", "x", ["x"]) is None and score("vqa", "x", []) is None
