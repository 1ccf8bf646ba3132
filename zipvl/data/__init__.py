# SPDX-License-Identifier: Apache-2.0
"""Offline data: needle-in-a-haystack prompts over the essays, sample images."""

from .images import load_image
from .needle import NEEDLES, Needle, answer_is_correct, needle_prompt

__all__ = ["load_image", "NEEDLES", "Needle", "answer_is_correct", "needle_prompt"]
