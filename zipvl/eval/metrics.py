# SPDX-License-Identifier: Apache-2.0
"""Scoring functions: fidelity to the dense model (top-1 agreement, KL, greedy exact match) and task accuracy
(exact needle retrieval, keyword match, VQA-style accuracy)."""

from __future__ import annotations

import re

import torch

# ---- fidelity ---------------------------------------------------------------------------------------------------


def kl_divergence(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(P_ref || P) per position, in nats: sum_v p_ref (log p_ref - log p). Inputs (..., V) log-probabilities."""
    ref = ref_logprobs.double()
    p = ref.exp()
    # 0 * log 0 = 0: positions where p_ref underflows contribute nothing
    return torch.where(p > 0, p * (ref - logprobs.double()), torch.zeros_like(p)).sum(dim=-1)


def top1_agreement(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(...,) bool: same argmax at each position (ties go to the lower index, as torch.argmax)."""
    return ref_logits.argmax(dim=-1) == logits.argmax(dim=-1)


def sequence_exact_match(ref_tokens, tokens) -> bool:
    """Greedy-sequence exact match: the same generated tokens, same length."""
    return list(map(int, ref_tokens)) == list(map(int, tokens))


def first_divergence(ref_tokens, tokens) -> int | None:
    """Index of the first differing token (or of the first extra one), None when equal."""
    ref, got = list(map(int, ref_tokens)), list(map(int, tokens))
    for i, (a, b) in enumerate(zip(ref, got)):
        if a != b:
            return i
    return None if len(ref) == len(got) else min(len(ref), len(got))


# ---- accuracy ---------------------------------------------------------------------------------------------------

_ARTICLES = {"a", "an", "the"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    """VQA-eval style normalisation: lowercase, punctuation to space, number words to digits, articles dropped."""
    words = _PUNCT.sub(" ", text.lower().replace("\u2019", "'").replace("'s", "")).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def _contains_phrase(text: str, phrase: str) -> bool:
    """Whole-word phrase match on normalised strings."""
    return bool(phrase) and f" {phrase} " in f" {text} "


def vqa_score(prediction: str, answers: list[str]) -> float:
    """VQA-style accuracy of a generated answer.

    A ground-truth answer matches when it equals the normalised prediction or appears in it as whole words
    (generative models answer in sentences). With >= 3 reference answers (VQAv2's 10 annotators) the score is
    min(1, matches / 3); with fewer, 1 if any matches. Yes/no answers need an unambiguous prediction: a prediction
    containing both "yes" and "no" scores 0 on them.
    """
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers if a is not None and str(a).strip()]
    if not refs:
        return 0.0
    both = _contains_phrase(pred, "yes") and _contains_phrase(pred, "no")

    def hit(ref: str) -> bool:
        if ref in ("yes", "no") and both:
            return False
        return pred == ref or _contains_phrase(pred, ref)

    matches = sum(hit(r) for r in refs)
    return min(1.0, matches / 3.0) if len(refs) >= 3 else float(matches > 0)


def keyword_score(prediction: str, keywords: list[str]) -> float:
    """1 if any keyword appears as whole words in the normalised prediction."""
    pred = normalize_answer(prediction)
    return float(any(_contains_phrase(pred, normalize_answer(k)) for k in keywords))


def needle_score(prediction: str, answers: list[str]) -> float:
    """Exact retrieval: the expected answer appears in the generated text (as :func:`zipvl.data.answer_is_correct`);
    numbers must appear as a whole number ("48213" does not match "482130")."""
    text = prediction.lower()
    for a in answers:
        a = a.lower()
        if a.isdigit():
            if re.search(rf"(?<!\d){re.escape(a)}(?!\d)", text):
                return 1.0
        elif a in text:
            return 1.0
    return 0.0


SCORERS = {"needle": needle_score, "vqa": vqa_score, "keywords": keyword_score}


def score(scorer: str, prediction: str, answers: list[str]) -> float | None:
    """Dispatch by name; None when the item has no answers (fidelity-only)."""
    if scorer == "none" or not answers:
        return None
    return SCORERS[scorer](prediction, answers)
