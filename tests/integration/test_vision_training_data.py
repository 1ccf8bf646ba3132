# SPDX-License-Identifier: Apache-2.0
"""Stage 2's batches: follow-up questions are real chat turns with every answer labelled, and binding questions are
true "no"s whose colour and shape both occur in the scene, each asked beside a true "yes" about one of its objects."""

import random

import pytest

from zipvl.data.scenes import random_scene, scene_question
from zipvl.models.vision import IMAGE_SIZE
from zipvl.models.vision_training import KINDS, VQA_SUFFIX, SampleStream, TrainConfig, binding_questions, encode_batch


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


def test_train_script_refuses_binding_without_follow_ups(capsys):
    """The CLI's one clear error, before any model is built."""
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "train_vision.py"))["main"]
    with pytest.raises(SystemExit) as exit_:
        main(["--binding", "0.25"])
    assert exit_.value.code == 2
    assert "needs questions >= 2" in capsys.readouterr().err
