# SPDX-License-Identifier: Apache-2.0
"""The crossover finder on synthetic timings."""

import math

import pytest

from zipvl.bench import find_crossover


def test_crossover_between_two_lengths():
    r = find_crossover([128, 256, 512, 1024], dense_s=[1.0, 2.0, 4.0, 8.0], zipvl_s=[2.0, 2.5, 3.0, 4.0])
    assert r["recommended_min_length"] == 512
    # log speed-up: 256 -> log(0.8), 512 -> log(4/3); linear in log2(n)
    t = math.log(0.8) / (math.log(0.8) - math.log(4 / 3))
    assert r["interpolated"] == round(2 ** (8 + t))
    assert 256 < r["interpolated"] < 512


def test_noisy_win_below_a_loss_does_not_count():
    # ZipVL "wins" at 128 by noise, loses at 256, wins from 512 on: the crossover is 512.
    r = find_crossover([128, 256, 512], [1.0, 1.0, 1.0], [0.9, 1.1, 0.8])
    assert r["recommended_min_length"] == 512


def test_never_wins_and_always_wins():
    never = find_crossover([128, 256], [1.0, 1.0], [2.0, 1.5])
    assert never["recommended_min_length"] is None and "longest" in never["reason"]
    always = find_crossover([256, 128], [2.0, 2.0], [1.0, 1.0])  # unsorted input
    assert always["recommended_min_length"] == 128 and always["lengths"] == [128, 256]


def test_tie_is_not_a_win():
    r = find_crossover([128, 256], [1.0, 1.0], [1.0, 0.5])
    assert r["recommended_min_length"] == 256
    assert r["speedups"] == pytest.approx([1.0, 2.0])
