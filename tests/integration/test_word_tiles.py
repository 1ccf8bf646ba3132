# SPDX-License-Identifier: Apache-2.0
"""zipvl.models.word_tiles: tiles as trained vectors + their caption's own word embeddings, the tile prompt's
training through the frozen LM, and the regression of tower + projector onto it."""

import random

import pytest
import torch

from zipvl.data.scenes import random_scene, tile_caption
from zipvl.models.text_teacher import labelled_loss, relative_error
from zipvl.models.vision_training import TrainConfig
from zipvl.models.word_tiles import (
    EMPTY,
    TilePrompt,
    align_tower,
    candidate_cells,
    caption_mask,
    decode_cells,
    labelled_cells,
    load_tile_prompt,
    save_tile_prompt,
    tile_cells,
    train_tile_prompt,
)
from zipvl.testing import IMAGE_TOKEN, tiny_model


class WordTokenizer:
    """One id per word (a leading space dropped): enough for captions of known words."""

    def __init__(self, words):
        self.ids = {w: i + 1 for i, w in enumerate(words)}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.ids[w] for w in text.split()]}


def test_tile_cells_are_the_captions_tiles_in_raster_order():
    scene = random_scene(random.Random(3), 2, 3, 56, 3)
    cells = tile_cells(tile_caption(scene.shapes, 2, 3))
    assert len(cells) == 6
    for s in scene.shapes:
        assert cells[s.tile[0] * 3 + s.tile[1]] == f"{s.color} {s.shape}"
    assert cells.count(EMPTY) == 3


def test_a_tile_is_the_vectors_then_its_captions_word_embeddings_and_only_the_vectors_learn():
    emb = torch.nn.Embedding(40, 6)
    emb.requires_grad_(False)
    tok = WordTokenizer(["red", "circle", "empty"])
    prompt = TilePrompt(emb, tok, tokens_per_tile=5)
    tile = prompt.tile("red circle")
    assert tile.shape == (5, 6)
    assert torch.equal(tile[:3], prompt.vectors[:3]) and torch.equal(tile[3:], emb.weight[[1, 2]])
    assert torch.equal(prompt.tile(EMPTY)[4], emb.weight[3]) and torch.equal(prompt.tile(EMPTY)[:4], prompt.vectors[:4])
    ids = torch.tensor([[30, 39, 39, 39, 39, 39, 31] + [39] * 5 + [32]])
    x = prompt.fill(ids, ["red circle", EMPTY], image_token_id=39)
    assert torch.equal(x[0, 1:6], tile) and torch.equal(x[0, 7:12], prompt.tile(EMPTY))
    assert torch.equal(x[0, [0, 6, 12]], emb.weight[[30, 31, 32]])
    x.sum().backward()
    assert prompt.vectors.grad is not None and emb.weight.grad is None


def test_labelled_cells_name_colour_and_shape_empty_or_the_overviews_count():
    cells = labelled_cells(torch.tensor([1, 0, 1, 1, 1]), torch.tensor([0, -1, 2, -1, -1]),
                           torch.tensor([0, -1, 4, -1, -1]), torch.tensor([-1, -1, -1, 1, 3]))
    assert cells == ["red circle", EMPTY, "teal triangle", "one shape", "three shapes"]


def test_nearest_target_decodes_each_cell_and_survives_small_noise():
    emb = torch.nn.Embedding(40, 16)
    words = sorted({w for c in candidate_cells() for w in c.split()})
    prompt = TilePrompt(emb, WordTokenizer(words), tokens_per_tile=8)
    cells = candidate_cells()
    exact = torch.stack([prompt.tile(c) for c in cells]).detach()
    assert decode_cells(prompt, exact) == cells
    noisy = exact + 0.05 * exact.pow(2).mean().sqrt() * torch.randn(exact.shape, generator=torch.Generator().manual_seed(0))
    assert decode_cells(prompt, noisy) == cells


def test_tile_prompt_training_lowers_the_answer_loss_and_changes_no_model_weight(tmp_path):
    model = tiny_model("llava")
    model.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    emb = model.get_input_embeddings()
    prompt = TilePrompt(emb, WordTokenizer(["red", "circle", "empty"]), tokens_per_tile=4)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(5, 60, (2, 6), generator=g)
    ids = torch.cat([torch.full((2, 8), IMAGE_TOKEN), text], 1)  # two tiles per row, then text
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    cells = ["red circle", EMPTY, EMPTY, "red circle"]

    def loss():
        with torch.no_grad():
            h = model.model.language_model(inputs_embeds=prompt.fill(ids, cells, IMAGE_TOKEN)).last_hidden_state
            return labelled_loss(model, h, labels).item()

    start = loss()
    losses = train_tile_prompt(model, IMAGE_TOKEN, prompt, iter(lambda: (inputs, cells), None), 40, 0.1, log=lambda _: None)
    # a random 3-layer LM barely listens to its prompt: the loss still falls steadily
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1 and loss() < start - 0.1
    assert not prompt.vectors.requires_grad
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    save_tile_prompt(prompt, tmp_path / "p.safetensors")
    again = load_tile_prompt(emb, prompt.tokenizer, tmp_path / "p.safetensors")
    assert torch.equal(again.tile("red circle"), prompt.tile("red circle"))


def _tiny_llava_to_align():
    """A tiny LLaVA, a processor at its tower's size, and a tile prompt over every candidate cell's words."""
    from transformers import CLIPImageProcessor

    model = tiny_model("llava")
    model.requires_grad_(False)
    size = model.config.vision_config.image_size
    processor = type("P", (), {"image_processor": CLIPImageProcessor(size={"shortest_edge": size},
                                                                     crop_size={"height": size, "width": size})})()
    words = sorted({w for c in candidate_cells() for w in c.split()})
    prompt = TilePrompt(model.get_input_embeddings(), WordTokenizer(words), tokens_per_tile=(size // 14) ** 2)
    prompt.vectors.requires_grad_(False)
    return model, processor, prompt


def test_align_tower_moves_the_projector_onto_the_targets():
    """A few regression steps on labelled tiles (easy-vqa train images and procedural ones) at the tiny tower's size:
    the loss falls and only tower + projector change."""
    model, processor, prompt = _tiny_llava_to_align()
    lm_before = {k: v.clone() for k, v in model.model.language_model.state_dict().items()}
    history = align_tower(model, processor, prompt, steps=40, lr=3e-3, tower_lr=1e-3, batch=16, seed=0, bf16=False,
                          log=lambda _: None)
    first, last = (sum(h["loss"] for h in part) / 5 for part in (history[:5], history[-5:]))
    assert last < 0.75 * first
    # the log splits the error into the trained vectors' positions and the caption's, both falling
    for key in ("vectors", "words"):
        assert sum(h[key] for h in history[-5:]) < sum(h[key] for h in history[:5])
    assert all(torch.equal(v, model.model.language_model.state_dict()[k]) for k, v in lm_before.items())
    assert all("overviews" in h for h in history)  # 3 of each 16 tiles: canvas overviews, their count the caption


@pytest.mark.parametrize("fresh", [True, False])
def test_align_tower_starts_from_a_fresh_projector_or_continues_its_own(fresh):
    """Zero steps: a fresh projector is re-initialised, a continued one is exactly what the model held."""
    model, processor, prompt = _tiny_llava_to_align()
    before = {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    align_tower(model, processor, prompt, steps=0, lr=1e-3, tower_lr=1e-3, batch=4, seed=0, bf16=False,
                fresh_projector=fresh, log=lambda _: None)
    after = model.model.multi_modal_projector.state_dict()
    same = all(torch.equal(v, after[k]) for k, v in before.items())
    assert same != fresh


def test_word_tiles_config_needs_a_tile_prompt_and_a_step():
    with pytest.raises(ValueError, match="tile_prompt_steps >= 1"):
        TrainConfig(word_tiles=True, tile_prompt_steps=0)  # nothing to align to
    with pytest.raises(ValueError, match="one of them > 0"):
        TrainConfig(word_tiles=True, tile_prompt="p.safetensors", tile_prompt_steps=0, align_steps=0)
    assert TrainConfig(word_tiles=True, tile_prompt="p.safetensors", tile_prompt_steps=0).align_steps > 0
    assert TrainConfig(word_tiles=True, align_steps=0).tile_prompt_steps > 0  # a tile-prompt stage alone
    assert TrainConfig(word_tiles=False, align_steps=0).align_steps == 0  # unused when off
    # the default: a new tile prompt trains 250 steps, a loaded one is used as it is
    assert TrainConfig(word_tiles=True).tile_prompt_steps == 250
    assert TrainConfig(word_tiles=True, tile_prompt="p.safetensors").tile_prompt_steps == 0


def test_decoding_is_the_nearest_target_by_relative_error():
    """decode_cells' one-matmul expansion picks what a direct relative_error sum per candidate picks."""
    words = sorted({w for c in candidate_cells() for w in c.split()})
    prompt = TilePrompt(torch.nn.Embedding(len(words) + 1, 16), WordTokenizer(words), tokens_per_tile=8)
    prompt.vectors.requires_grad_(False)
    targets = torch.stack([prompt.tile(c) for c in candidate_cells()])
    torch.manual_seed(0)
    out = targets[torch.randint(len(targets), (200,))] + 0.6 * torch.randn(200, *targets.shape[1:])
    direct = torch.stack([relative_error(out, t[None]).sum(-1) for t in targets], dim=1).argmin(1)
    assert decode_cells(prompt, out) == [candidate_cells()[i] for i in direct.tolist()]


def test_caption_mask_marks_each_tiles_caption_words():
    prompt = TilePrompt(torch.nn.Embedding(40, 8), WordTokenizer(["red", "circle", "empty"]), tokens_per_tile=6)
    mask = caption_mask(prompt, ["red circle", "empty"])
    assert mask.tolist() == [[False] * 4 + [True] * 2, [False] * 5 + [True]]


def test_check_needs_saved_weights_and_a_held_out_scale(tmp_path, capsys):
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "train_vision.py"))["main"]
    for argv in (["--check", str(tmp_path / "missing.safetensors")], ["--check", __file__, "--heldout", "0"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "--check needs --heldout > 0 and a weights file" in capsys.readouterr().err


@pytest.mark.slow
def test_train_script_runs_word_tiles_end_to_end(tmp_path):
    """Two tile-prompt steps, two regression steps, one answer step on the real LM: the card and the tile prompt."""
    import json
    import runpy
    from pathlib import Path

    from zipvl.models.vision import VERSION, WEIGHTS

    main = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "train_vision.py"))["main"]
    assert main(["--init", str(WEIGHTS), "--steps", "1", "--mix", "0", "0", "1", "0", "0", "0", "--word-tiles",
                 "--tile-prompt-steps", "2", "--align-steps", "2", "--align-batch", "4", "--heldout", "0",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    card = json.loads((tmp_path / f"vision-{VERSION}.json").read_text())
    assert card["train_config"]["word_tiles"] and len(card["word_tiles"]["tile_prompt_loss"]) == 2
    assert len(card["word_tiles"]["align_loss"]) == 2 and len(card["loss"]) == 1
    assert (tmp_path / f"vision-{VERSION}-tile-prompt.safetensors").is_file()
    cells = card["word_tiles"]["heldout_cells"]
    assert cells["easyvqa_test_images"] == 512 and cells["canvas_tiles"] >= 512 and 0 <= cells["canvas"] <= 1
    assert 0 <= cells["canvas_overviews"] <= 1 and len(card["word_tiles"]["align_overviews"]) == 2
    # the held-out check of those weights afterwards (--check), written into their card
    weights = tmp_path / f"vision-{VERSION}.safetensors"
    assert main(["--check", str(weights), "--heldout", "0.01", "--threads", "1"]) == 0
    checked = json.loads(weights.with_suffix(".json").read_text())
    assert checked["loss"] == card["loss"] and checked["heldout_command"].endswith("--heldout 0.01")
    assert checked["heldout"]["easyvqa"]["items"] == 5 and checked["heldout"]["scenes_long"]["items"] == 1
    # a tile-prompt stage alone: continue that tile prompt one step, no regression
    first = tmp_path / f"vision-{VERSION}-tile-prompt.safetensors"
    more = tmp_path / "more"
    assert main(["--init", str(WEIGHTS), "--steps", "0", "--word-tiles", "--tile-prompt", str(first),
                 "--tile-prompt-steps", "1", "--tile-prompt-lr", "0.01", "--tile-prompt-cosine", "--align-steps", "0",
                 "--heldout", "0", "--threads", "1", "--out", str(more)]) == 0
    card = json.loads((more / f"vision-{VERSION}.json").read_text())
    assert len(card["word_tiles"]["tile_prompt_loss"]) == 1 and card["word_tiles"]["align_loss"] == []
    assert card["train_config"]["tile_prompt_lr"] == 0.01 and card["train_config"]["tile_prompt_cosine"] is True
    from safetensors.torch import load_file

    before, after = (load_file(str(p))["vectors"] for p in (first, more / first.name))
    assert before.shape == after.shape and not torch.equal(before, after)
