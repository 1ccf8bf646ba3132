# SPDX-License-Identifier: Apache-2.0
"""The embedded default's vision tower + projector: architecture and the trained weights shipped in the package.

The weights are produced by ``scripts/train_vision.py`` (see ``weights/vision-VERSION.json`` for the exact command,
seed, data, loss curve and held-out accuracy) against the frozen SmolLM2 and loaded by the default model builder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ZipVLError

VERSION = "v9"
IMAGE_SIZE, PATCH_SIZE = 112, 14  # 8 x 8 = 64 visual tokens per image (tile)
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2
TOWER = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=3, num_attention_heads=4,
             image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS = WEIGHTS_DIR / f"vision-{VERSION}.safetensors"
CARD = WEIGHTS_DIR / f"vision-{VERSION}.json"
TRAINABLE_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")


def feature_select(path: Path = WEIGHTS) -> str:
    """The LLaVA ``vision_feature_select_strategy`` the weights were trained with (their card's ``feature_select``):
    "default" hands the projector the patch tokens only, "full" also each image's CLS token, a per-tile summary."""
    card = path.with_suffix(".json")
    return json.loads(card.read_text()).get("feature_select", "default") if card.is_file() else "default"


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**TOWER)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The tower + projector tensors of a LLaVA model (what training changes)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(TRAINABLE_PREFIXES)}


def save_vision(model, path: Path, card: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in trainable_state(model).items()}, str(path))
    save_card(path, card)


def save_card(path: Path, card: dict) -> None:
    """The card beside weights ``path`` (``vision-VERSION.json``)."""
    path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")


@torch.no_grad()
def load_vision(model, path: Path = WEIGHTS) -> dict:
    """Load trained tower + projector weights into ``model``; returns the weights' card."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ZipVLError(f"trained vision weights not found at {path}; run scripts/train_vision.py")
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    expected = set(trainable_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ZipVLError(f"{path} does not match the default model's vision tower (missing {missing}, extra {extra})")
    model.load_state_dict(state, strict=False)
    card = path.with_suffix(".json")
    return json.loads(card.read_text()) if card.is_file() else {}
