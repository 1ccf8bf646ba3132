# SPDX-License-Identifier: Apache-2.0
"""Procedural scenes (PIL) with questions whose answers are known: the training and evaluation data of the vision
path, next to easy-vqa. Shapes and colours are easy-vqa's, so one vocabulary covers both.

A scene is a canvas of ``rows x cols`` tiles of ``tile`` pixels; each object lies inside one tile, so cutting the
canvas into tiles (:func:`tiles`, one image per tile, raster order) never splits an object. Large canvases with a
few objects are the sparse long visual inputs ZipVL is for: most tiles are background.

A canvas of several tiles goes to the model as LLaVA-NeXT's AnyRes does it: first an overview (the whole canvas
shrunk to one tile, :func:`canvas_images`), then the tiles. The overview is what the model counts from: through 16
tiles the frozen LM could not count 1-3 objects (docs/vision.md, stage 17), but it reads a count from the overview.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SHAPES = ("circle", "rectangle", "triangle")
COLORS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 50, 220), "yellow": (235, 210, 30),
          "teal": (0, 150, 150), "brown": (130, 80, 30), "gray": (128, 128, 128), "black": (10, 10, 10)}
NUMBERS = ("zero", "one", "two", "three", "four", "five")


@dataclass
class Shape:
    shape: str
    color: str
    tile: tuple[int, int]  # (row, col)


@dataclass
class Scene:
    rows: int
    cols: int
    tile: int
    shapes: list[Shape] = field(default_factory=list)
    background: tuple[int, int, int] = (245, 240, 235)
    texture: bool = False
    seed: int = 0

    def render(self):
        """The canvas as a PIL RGB image (deterministic in ``seed``)."""
        from PIL import Image, ImageDraw

        rng = random.Random(self.seed)
        w, h = self.cols * self.tile, self.rows * self.tile
        img = Image.new("RGB", (w, h), self.background)
        draw = ImageDraw.Draw(img)
        if self.texture:  # faint stripes: a background that is not flat but carries no object
            step = rng.randint(6, 14)
            tint = tuple(max(0, c - rng.randint(12, 25)) for c in self.background)
            for x in range(-h, w, step):
                draw.line([(x, 0), (x + h, h)], fill=tint, width=2)
        for s in self.shapes:
            size = rng.randint(self.tile * 3 // 10, self.tile * 7 // 10)
            x0 = s.tile[1] * self.tile + rng.randint(2, self.tile - size - 2)
            y0 = s.tile[0] * self.tile + rng.randint(2, self.tile - size - 2)
            box, fill = (x0, y0, x0 + size, y0 + size), COLORS[s.color]
            if s.shape == "circle":
                draw.ellipse(box, fill=fill)
            elif s.shape == "rectangle":
                aspect = rng.uniform(0.55, 1.0)
                draw.rectangle((x0, y0, x0 + size, y0 + int(size * aspect)), fill=fill)
            else:
                draw.polygon([(x0 + size // 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
        return img


def tiles(image, tile: int) -> list:
    """Cut a canvas into ``tile`` x ``tile`` crops, row by row."""
    w, h = image.size
    return [image.crop((c, r, c + tile, r + tile)) for r in range(0, h, tile) for c in range(0, w, tile)]


def overview(image, tile: int):
    """A canvas shrunk to one ``tile`` x ``tile`` image (bicubic): LLaVA-NeXT's base image."""
    from PIL import Image

    return image.resize((tile, tile), Image.Resampling.BICUBIC)


def canvas_images(scene: Scene) -> list:
    """What a model sees of ``scene``: the :func:`overview` then the tiles, row by row; a single tile is its own
    overview, so it goes alone."""
    image = scene.render()
    parts = tiles(image, scene.tile)
    return parts if len(parts) == 1 else [overview(image, scene.tile)] + parts


def canvas_marks(rows: int, cols: int, mark: str) -> str:
    """The prompt's image marks for :func:`canvas_images`: the overview on a line of its own (several tiles only),
    then one line per row of tiles."""
    grid = "\n".join(mark * cols for _ in range(rows))
    return grid if rows * cols == 1 else f"{mark}\n{grid}"


def count_caption(n: int) -> str:
    """The overview's caption: "one shape", "two shapes", ..."""
    return f"{NUMBERS[n]} shape" + ("" if n == 1 else "s")


def random_scene(rng: random.Random, rows: int, cols: int, tile: int, n_shapes: int,
                 distinct_shapes: bool = False) -> Scene:
    """``n_shapes`` objects in distinct tiles; with ``distinct_shapes`` no two share a shape (so "the circle" is
    well defined)."""
    cells = rng.sample([(r, c) for r in range(rows) for c in range(cols)], n_shapes)
    kinds = rng.sample(SHAPES, n_shapes) if distinct_shapes else [rng.choice(SHAPES) for _ in range(n_shapes)]
    colors = rng.sample(list(COLORS), n_shapes)
    background = tuple(rng.randint(225, 255) for _ in range(3))
    return Scene(rows, cols, tile, [Shape(k, c, cell) for k, c, cell in zip(kinds, colors, cells)],
                 background=background, texture=rng.random() < 0.3, seed=rng.randrange(2**31))


def random_canvas(rng: random.Random, side: int, tile: int, n_shapes: int | None = None) -> Scene:
    """A ``side`` x ``side`` canvas with 1-3 objects (``n_shapes`` if given; at most one per tile), half the time of
    distinct shapes: the canvases the vision path is trained on and zipvl-eval asks about."""
    n = rng.randint(1, min(3, side * side)) if n_shapes is None else n_shapes
    return random_scene(rng, side, side, tile, n, distinct_shapes=rng.random() < 0.5)


def tile_caption(shapes: list[Shape], rows: int, cols: int) -> str:
    """Every tile in words, row by row as the LM reads the tiles: "empty" or "<colour> <shape>", a comma between
    tiles, a newline after each row (one tile: just its content)."""
    cells = {tuple(s.tile): f"{s.color} {s.shape}" for s in shapes}
    return "\n".join(", ".join(cells.get((r, c), "empty") for c in range(cols)) for r in range(rows))


def canvas_caption(scene: Scene) -> str:
    """Every image of :func:`canvas_images` in words: the overview's count line (several tiles only), then
    :func:`tile_caption`."""
    grid = tile_caption(scene.shapes, scene.rows, scene.cols)
    return grid if scene.rows * scene.cols == 1 else f"{count_caption(len(scene.shapes))}\n{grid}"


def presence_question(color: str, shape: str) -> str:
    """easy-vqa's phrasing of "is this colour-and-shape object there?" (the eval's and the training's one wording)."""
    return f"is there a {color} {shape} in the image?"


def scene_question(rng: random.Random, scene: Scene) -> tuple[str, str]:
    """One (question, one-word answer) about ``scene``, in easy-vqa's phrasing where easy-vqa has one."""
    shapes = scene.shapes
    kinds = [s.shape for s in shapes]
    unique = [s for s in shapes if kinds.count(s.shape) == 1]
    kind = rng.randrange(4)
    if kind == 0 and unique:  # colour of a unique shape
        s = rng.choice(unique)
        return f"what color is the {s.shape}?", s.color
    if kind == 1:  # shape of a colour (colours are distinct)
        s = rng.choice(shapes)
        return f"what is the {s.color} shape?", s.shape
    if kind == 2:
        return "how many shapes are in the image?", NUMBERS[len(shapes)]
    if rng.random() < 0.5:  # presence, half of them true
        s = rng.choice(shapes)
        return presence_question(s.color, s.shape), "yes"
    present = {(s.color, s.shape) for s in shapes}
    while True:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        if (color, shape) not in present:
            return presence_question(color, shape), "no"
