# SPDX-License-Identifier: Apache-2.0
"""Stage 2's batches: follow-up questions are real chat turns with every answer labelled, and binding questions are
true "no"s whose colour and shape both occur in the scene, each asked beside a true "yes" about one of its objects."""

import random
from dataclasses import replace

import pytest
import torch

from zipvl.data.scenes import COLORS, NUMBERS, SHAPES, random_scene, scene_question
from zipvl.models.vision import IMAGE_SIZE
from zipvl.models.vision_training import (
    CAPTION_REQUEST,
    IMAGE_MARK,
    KINDS,
    VQA_SUFFIX,
    SampleStream,
    TrainConfig,
    binding_questions,
    encode_batch,
    encode_teacher,
    next_token_loss,
    shared_spans,
)


def test_default_stream_draws_what_it_drew_before_the_options():
    """questions=1, binding=0 (every shipped stage): a scene sample costs the seeded rng one random_scene and one
    scene_question, nothing more, so the weights cards' reproduce commands still replay their data."""
    mix = (0, 0, 1, 0, 0, 0)  # 2 x 2 canvases, 4 per batch
    stream, rng = SampleStream(seed=11, mix=mix), random.Random(11)
    for _ in range(5):
        rng.choices(KINDS, weights=mix)
        for sample in stream.batch(8):
            scene = random_scene(rng, 2, 2, IMAGE_SIZE, rng.randint(1, 3), distinct_shapes=rng.random() < 0.5)
            question, answer = scene_question(rng, scene)
            assert sample.prompt.endswith(f"{question} {VQA_SUFFIX}") and sample.answer == answer
            assert not sample.follow_ups


def parse_presence(question: str) -> tuple[str, str]:
    return tuple(question.removeprefix("is there a ").removesuffix(" in the image?").split())


def test_binding_questions_pair_a_false_cross_with_a_true_object():
    rng = random.Random(0)
    asked, negative_first = 0, 0
    for _ in range(200):
        scene = random_scene(rng, 4, 4, 112, rng.randint(1, 3))
        qas = binding_questions(rng, scene)
        pairs = {(s.color, s.shape) for s in scene.shapes}
        if qas is None:  # only when no colour-of-one / shape-of-another pair is absent
            assert all((a.color, b.shape) in pairs for a in scene.shapes for b in scene.shapes)
            continue
        answers = dict(qas)
        assert sorted(answers.values()) == ["no", "yes"]
        no = parse_presence(next(q for q, a in qas if a == "no"))
        yes = parse_presence(next(q for q, a in qas if a == "yes"))
        assert no not in pairs and yes in pairs
        assert no[0] in {s.color for s in scene.shapes} and no[1] in {s.shape for s in scene.shapes}
        assert yes[0] == no[0] or yes[1] == no[1]  # the positive is one of the two objects the negative crosses
        negative_first += qas[0][1] == "no"
        asked += 1
    assert asked > 50
    assert 0.25 < negative_first / asked < 0.75  # the order is random: position says nothing about the answer


def test_binding_needs_a_second_question():
    with pytest.raises(ValueError, match="questions >= 2"):
        TrainConfig(binding=0.25, questions=1)


def test_scene_presence_questions_stay_balanced_with_binding():
    """Every binding negative comes with its positive, so "is there" questions on scenes are not mostly "no"."""
    stream = SampleStream(seed=5, mix=(0, 0.5, 0.5, 0, 0, 0), questions=3, binding=0.5)
    answers = [a for _ in range(40) for s in stream.batch(8) for q, a in [(s.prompt, s.answer), *s.follow_ups]
               if "is there a" in q]
    assert len(answers) > 100
    assert 0.4 < answers.count("no") / len(answers) < 0.6


def test_follow_ups_are_distinct_questions_about_the_same_image():
    stream = SampleStream(seed=3, mix=(0.5, 0, 0.25, 0, 0, 0.25), questions=3, binding=0.3)
    for _ in range(12):
        for sample in stream.batch(8):
            first = sample.prompt.splitlines()[-1]
            questions = [first] + [q for q, _ in sample.follow_ups]
            assert len(sample.follow_ups) <= 2 and len({q.split("?")[0] for q in questions}) == len(questions)
    from easy_vqa import get_train_questions

    qs, answers, image_ids = get_train_questions()
    by_image: dict = {}
    for q, a, i in zip(qs, answers, image_ids):
        by_image.setdefault(i, {})[q] = a
    stream = SampleStream(seed=4, mix=(1, 0, 0, 0, 0, 0), questions=3)
    for sample in stream.batch(8):
        turns = [(sample.prompt.split("\n")[1].removesuffix(" " + VQA_SUFFIX), sample.answer), *sample.follow_ups]
        assert len(turns) == 3
        # one image owns all three questions with these answers: follow-ups are that image's own questions
        assert any(all(own.get(q) == a for q, a in turns) for own in by_image.values()), turns


@pytest.fixture(scope="module")
def processor():
    from zipvl.models.default import build_default_model

    return build_default_model(trained=False)[1]


def test_encode_batch_labels_every_answer_and_only_answers(processor):
    stream = SampleStream(seed=0, mix=(0, 0, 1, 0, 0, 0), questions=3, binding=0.5)
    sample = stream.batch(2)[0]
    assert len(sample.follow_ups) == 2
    enc = encode_batch(processor, [sample])
    tok = processor.tokenizer
    labels = enc["labels"][0]
    labelled = tok.decode(labels[labels >= 0])
    assert labelled == "".join(f"{a}<|im_end|>" for a in [sample.answer] + [a for _, a in sample.follow_ups])
    text = tok.decode(enc["input_ids"][0])
    for question, answer in sample.follow_ups:  # the chat template's own turn markers around each follow-up
        assert f"<|im_end|>\n<|im_start|>user\n{question} " in text
        assert f"<|im_start|>assistant\n{answer}<|im_end|>" in text


def test_captions_leave_the_questions_as_they_were_and_name_every_image():
    """A caption turn draws nothing from the seeded rng (same questions as without it); easy-vqa captions are the
    image's own labelled shape and colour, scene captions one cell per image in the prompt."""
    from easy_vqa import get_train_questions

    from zipvl.models.tower_pretraining import easyvqa_labels

    mix = (0.4, 0.1, 0.2, 0, 0.1, 0.2)
    plain, captioned = SampleStream(seed=8, mix=mix), SampleStream(seed=8, mix=mix, captions=True)
    questions, answers, image_ids = get_train_questions()
    by_image = easyvqa_labels(questions, answers, image_ids)
    captions: dict = {}  # (question, answer) -> the captions of the images asked it (None: an unlabelled image)
    for q, a, i in zip(questions, answers, image_ids):
        label = by_image.get(i)
        captions.setdefault((q, a), set()).add(None if label is None else f"{label[1]} {label[0]}")
    kinds = set()
    for _ in range(30):
        for a, b in zip(plain.batch(8), captioned.batch(8)):
            assert (a.prompt, a.answer, a.kind) == (b.prompt, b.answer, b.kind) and a.caption is None
            kinds.add(b.kind)
            if b.kind == "easyvqa":
                question = b.prompt.split("\n")[1].removesuffix(" " + VQA_SUFFIX)
                assert b.caption in captions[(question, b.answer)]
                if b.caption and b.answer in SHAPES + tuple(COLORS):  # the answer is the image's shape or colour
                    assert b.answer in b.caption.split()
                continue
            rows = b.caption.split("\n")
            assert sum(len(r.split(", ")) for r in rows) == len(b.images) == b.prompt.count(IMAGE_MARK)
            if b.kind.startswith("tiles") and len(b.images) > 1:  # a canvas: the overview's count, then the tiles
                count, *rows = rows
                assert count.split()[0] == NUMBERS[sum(c != "empty" for r in rows for c in r.split(", "))]
            named = [c for r in rows for c in r.split(", ") if c != "empty"]
            assert all(c.split()[0] in COLORS and c.split()[1] in SHAPES for c in named)
            assert 1 <= len(named) <= 4
    assert kinds >= {"easyvqa", "tiles2", "multi"}


def test_caption_turn_is_labelled_apart_from_the_answers(processor):
    sample = SampleStream(seed=2, mix=(0, 0, 1, 0, 0, 0), captions=True).batch(2)[0]
    bare = encode_batch(processor, [replace(sample, caption=None)])
    enc = encode_batch(processor, [sample])
    tok = processor.tokenizer
    assert "caption_labels" not in bare
    answers, captions = enc["labels"][0], enc["caption_labels"][0]
    assert tok.decode(answers[answers >= 0]) == f"{sample.answer}<|im_end|>"
    assert tok.decode(captions[captions >= 0]) == f"{sample.caption}<|im_end|>"
    assert not ((answers >= 0) & (captions >= 0)).any()
    n = bare["input_ids"].shape[1]  # the caption turn comes after the answer: what precedes it is unchanged
    assert torch.equal(enc["input_ids"][0, :n], bare["input_ids"][0]) and torch.equal(answers[:n], bare["labels"][0])
    assert f"<|im_start|>user\n{CAPTION_REQUEST}<|im_end|>" in tok.decode(enc["input_ids"][0])


def test_next_token_loss_is_the_models_own_loss_plus_the_weighted_caption_loss():
    """On a tiny LLaVA: with no caption tokens it is HF's loss; caption tokens add weight x their own mean."""
    from zipvl.testing import tiny_inputs, tiny_model

    model = tiny_model("llava")
    base = tiny_inputs("llava", text_len=12, batch=2).kwargs
    ids = base["input_ids"]
    labels, captions = torch.full_like(ids, -100), torch.full_like(ids, -100)
    labels[:, -4:-2] = ids[:, -4:-2]
    captions[:, -2:] = ids[:, -2:]
    with torch.no_grad():
        hf = model(**base, labels=labels).loss
        cap = model(**base, labels=captions).loss
        none = next_token_loss(model, {**base, "labels": labels, "caption_labels": torch.full_like(ids, -100)}, 0.5)
        both = next_token_loss(model, {**base, "labels": labels, "caption_labels": captions}, 0.5)
    torch.testing.assert_close(none, hf)
    torch.testing.assert_close(both, hf + 0.5 * cap)


def test_teacher_rows_read_the_description_and_share_the_questions_with_the_student(processor):
    """--distill: each described sample's teacher row is the soft prompt, the image in words and the same question;
    the two rows share exactly what follows the last image (question, answers, chat markers), labels on the answers."""
    tok = processor.tokenizer
    stream = SampleStream(seed=4, mix=(0.4, 0.1, 0.2, 0, 0.1, 0.2), questions=2, captions=True)
    seen = set()
    for _ in range(6):
        samples = stream.batch(4)
        rows = [i for i, s in enumerate(samples) if s.caption is not None]
        student = encode_batch(processor, samples, caption_turn=False)
        teacher = encode_teacher(tok, [samples[i] for i in rows], n_soft=3)
        for (i, s_end, j, t_end, n), sample in zip(shared_spans(student, teacher, rows), [samples[i] for i in rows]):
            seen.add(sample.kind)
            student_text = tok.decode(student["input_ids"][i, :s_end])
            teacher_text = tok.decode(teacher["input_ids"][j, :t_end])
            after_images = student_text[student_text.rindex(IMAGE_MARK) + len(IMAGE_MARK):]
            assert tok.decode(student["input_ids"][i, s_end - n:s_end]) == after_images
            assert teacher_text.endswith(f"{IMAGE_MARK * 3}\n{sample.caption}{after_images}")
            labels = teacher["labels"][j]
            assert tok.decode(labels[labels >= 0]) == tok.decode(student["labels"][i][student["labels"][i] >= 0])
    assert seen >= {"easyvqa", "multi"}


def test_distill_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher_steps >= 1"):
        TrainConfig(distill=1.0, teacher_steps=0)
    with pytest.raises(ValueError, match="distill must be >= 0"):
        TrainConfig(distill=-1.0)


@pytest.mark.slow
def test_train_script_distils_the_text_teacher_end_to_end(tmp_path):
    """Two soft-prompt steps, two student steps on the real LM: the card records the teacher and the match."""
    import json
    import runpy
    from pathlib import Path

    from zipvl.models.vision import VERSION, WEIGHTS

    main = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "train_vision.py"))["main"]
    assert main(["--init", str(WEIGHTS), "--steps", "2", "--mix", "0", "0", "1", "0", "0", "0", "--distill", "1",
                 "--teacher-steps", "2", "--teacher-batch", "2", "--heldout", "0", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    card = json.loads((tmp_path / f"vision-{VERSION}.json").read_text())
    assert card["train_config"]["distill"] == 1.0 and len(card["teacher"]["loss"]) == 2
    assert len(card["match"]) == 2 and all(m is not None and m > 0 for m in card["match"])


def test_caption_weight_must_be_positive():
    with pytest.raises(ValueError, match="caption_weight must be > 0"):
        TrainConfig(captions=True, caption_weight=0.0)
    assert TrainConfig(captions=False, caption_weight=0.0).caption_weight == 0.0  # unused without captions


def test_train_script_refuses_binding_without_follow_ups(capsys):
    """The CLI's one clear error, before any model is built."""
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "train_vision.py"))["main"]
    with pytest.raises(SystemExit) as exit_:
        main(["--binding", "0.25"])
    assert exit_.value.code == 2
    assert "needs questions >= 2" in capsys.readouterr().err


def test_balanced_yes_no_evens_each_phrasing_and_keeps_the_rest_once():
    from collections import Counter

    from zipvl.models.vision_training import balanced_yes_no

    questions = ["is there a red shape?"] * 5 + ["is there not a circle?"] * 3 + ["what color is it?"] * 2
    answers = ["no", "no", "no", "no", "yes", "yes", "yes", "no", "red", "blue"]
    picked = balanced_yes_no(questions, answers)
    counts = Counter((" ".join(questions[i].split()[:3]), answers[i]) for i in picked)
    assert counts == {("is there a", "no"): 4, ("is there a", "yes"): 4, ("is there not", "yes"): 2,
                      ("is there not", "no"): 2, ("what color is", "red"): 1, ("what color is", "blue"): 1}
    assert set(picked) == set(range(10))  # every question still drawn


def test_balanced_stream_asks_easyvqa_presence_both_ways():
    """--balance-yes-no: easy-vqa's "is there a …?" (18 % yes in its train split) comes about half yes."""
    stream = SampleStream(seed=1, mix=(1, 0, 0, 0, 0, 0), balance_yes_no=True)
    answers = [s.answer for _ in range(60) for s in stream.batch(8) if s.prompt.startswith(f"{IMAGE_MARK}\nis there a ")]
    assert len(answers) > 40
    assert 0.35 < answers.count("yes") / len(answers) < 0.65
