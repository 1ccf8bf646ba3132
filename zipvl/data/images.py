# SPDX-License-Identifier: Apache-2.0
"""Offline images: scikit-image sample photos, easy-vqa pictures, or a user's file."""

from __future__ import annotations

from pathlib import Path

from ..errors import ZipVLError, ZipVLInputError

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina")


def load_image(source: str | Path):
    """A PIL RGB image from a file path or ``skimage:<name>`` (e.g. ``skimage:astronaut``)."""
    from PIL import Image, UnidentifiedImageError

    source = str(source)
    if source.startswith("skimage:"):
        name = source.split(":", 1)[1]
        try:
            from skimage import data
        except ImportError as e:
            raise ZipVLError("skimage sample images need scikit-image: pip install 'zipvl[data]'") from e
        if name not in SKIMAGE_PHOTOS or not hasattr(data, name):
            raise ZipVLInputError(f"unknown scikit-image photo {name!r}; choose from {', '.join(SKIMAGE_PHOTOS)}")
        return Image.fromarray(getattr(data, name)()).convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise ZipVLInputError(f"image not found: {path}")
    try:
        return Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ZipVLInputError(f"not a readable image: {path} ({e})") from e
