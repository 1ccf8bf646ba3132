# SPDX-License-Identifier: Apache-2.0
"""The embedded default (real SmolLM2-135M weights) under ZipVL: real attention gives real sparsity."""

from pathlib import Path

import torch

import zipvl
from zipvl import ZipVLConfig
from zipvl.data import NEEDLES, answer_is_correct, load_image, needle_prompt
from zipvl.pipeline import chat_inputs, generate


def test_essay_sparsity_and_needle_answers(default_model, capsys):
    model, processor = default_model
    inputs = chat_inputs(processor, needle_prompt(processor.tokenizer, 2000, depth=0.5))
    n = inputs["input_ids"].shape[1]
    assert 1900 < n < 2200
    dense = generate(model, processor, inputs, max_new_tokens=12)
    sparse = generate(model, processor, inputs, max_new_tokens=12, config=ZipVLConfig(tau=0.975))
    ratios = sparse.stats.layer_ratios()
    assert len(ratios) == model.config.text_config.num_hidden_layers
    assert sparse.stats.mean_ratio < 0.8
    assert min(ratios) < max(ratios)  # adaptive: layers differ
    # Cache lengths after prefill: each layer holds its kept count (+ the decoded tokens).
    kept = [s.kept[0] for s in sorted(sparse.stats.layers, key=lambda s: s.layer)]
    assert [lengths[0] - (sparse.tokens.shape[1] - 1) for lengths in sparse.cache_lengths] == kept
    assert answer_is_correct(dense.text[0], NEEDLES[0])  # the dense model knows the fact
    with capsys.disabled():
        print(f"\n[default model, {n} tokens, tau=0.975] mean kept ratio {sparse.stats.mean_ratio:.3f}")
        print("  per layer: " + " ".join(f"{r:.2f}" for r in ratios))
        print(f"  dense answer: {dense.text[0]!r}\n  zipvl answer: {sparse.text[0]!r}")


@torch.no_grad()
def test_image_prompt_tau_one_matches_dense(default_model):
    model, processor = default_model
    image = load_image("skimage:chelsea")
    inputs = chat_inputs(processor, [{"role": "user", "content": "What animal is this?"}], images=[image])
    ref = model(**inputs).logits[:, -1]
    with zipvl.enable(model, ZipVLConfig(tau=1.0)):
        out = model(**inputs).logits[:, -1]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


@torch.no_grad()
def test_trained_vision_sees_held_out_images(default_model):
    """The shipped tower + projector load and carry the image: on a fixed sample of easy-vqa *test* questions the
    dense model beats the majority answer by 30 points (a random tower answers at about the majority rate), and
    ZipVL answers on the same prompts report visual and text kept ratios."""
    from zipvl.eval.metrics import score
    from zipvl.eval.tasks import TaskOptions, build_inputs, make_items

    model, processor = default_model
    items = make_items("easyvqa", None, TaskOptions(limit=30, seed=7))
    majority = max(sum(i.answers[0] == a for i in items) for a in {i.answers[0] for i in items}) / len(items)
    hits = 0.0
    for item in items:
        inputs, _ = build_inputs(processor, item)
        hits += score("vqa", generate(model, processor, inputs, max_new_tokens=4).text[0], item.answers)
    assert hits / len(items) >= majority + 0.3, (hits / len(items), majority)
    sparse = generate(model, processor, build_inputs(processor, items[0])[0], max_new_tokens=4,
                      config=ZipVLConfig(tau=0.975))
    assert set(sparse.kept_by_type) == {"visual", "text"} and 0 < sparse.kept_by_type["visual"] <= 1


@torch.no_grad()
def test_trained_vision_answers_the_demo_image(default_model):
    """The held-out easy-vqa image of `zipvl demo` (a yellow circle, test split): right dense and with ZipVL."""
    from zipvl.eval.tasks import TaskOptions, build_inputs, make_items

    model, processor = default_model
    item = make_items("easyvqa", None, TaskOptions(limit=12, seed=0))[11]
    assert item.answers == ["yellow"] and "color of the circle" in item.prompt
    inputs, _ = build_inputs(processor, item)
    for config in (None, ZipVLConfig(tau=0.975)):
        text = generate(model, processor, inputs, max_new_tokens=4, config=config).text[0]
        assert text.strip().rstrip(".").lower() == "yellow", (config, text)


def test_heldout_check_reports_accuracy_per_question_phrasing(default_model):
    """The training card's held-out check (scripts/train_vision.py) breaks each task's accuracy down by question
    phrasing: the rows cover every item, name each item's phrasing, and average back to the task's accuracy."""
    import runpy
    from collections import Counter
    from pathlib import Path

    from zipvl.eval.tasks import TaskOptions, make_items, question_type

    heldout_accuracy = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "train_vision.py"))[
        "heldout_accuracy"]
    model, processor = default_model
    tasks = {"easyvqa": 6, "scenes": 4}
    out = heldout_accuracy(model, processor, 0, tasks)
    for task, n in tasks.items():
        rows = out[task]["by_type"]
        items = make_items(task, None, TaskOptions(limit=n, seed=0))
        assert {k: v["items"] for k, v in rows.items()} == dict(Counter(question_type(i.question, i.answers[0])
                                                                        for i in items))
        mean = sum(v["items"] * v["accuracy"] for v in rows.values()) / n
        assert abs(mean - out[task]["accuracy"]) < 0.01, (rows, out[task])


def test_a_checkpoint_published_by_another_process_during_conversion_stays(tmp_path, monkeypatch):
    """Two first uses at once (zipvl-eval's two processes): the one that finishes second keeps the first one's
    checkpoint, which the first may be loading from already, and drops its own copy."""
    from zipvl.models import default

    monkeypatch.setenv("ZIPVL_CACHE", str(tmp_path))
    target = default.cache_root() / default.checkpoint_name()

    class Saved:
        def save_pretrained(self, path):
            (Path(path) / "mine.txt").write_text("second")

    def convert(trained):  # while this process converts, another one publishes
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        return Saved(), Saved()

    monkeypatch.setattr(default, "build_default_model", convert)
    assert default.default_model_dir() == target
    assert (target / "config.json").is_file() and not (target / "mine.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no leftover temporary copy
