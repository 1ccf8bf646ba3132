# SPDX-License-Identifier: Apache-2.0
"""zipvl.models.text_teacher: the soft prompt, its training, and the hidden-state match the vision path is distilled
with."""

import itertools

import torch

from zipvl.models.text_teacher import (
    SoftPrompt,
    common_suffix,
    hidden_match_loss,
    train_prompt_vectors,
    train_soft_prompt,
)
from zipvl.models.vision_training import student_forward
from zipvl.testing import IMAGE_TOKEN, tiny_inputs, tiny_model


def test_soft_prompt_replaces_only_the_placeholders_and_is_all_that_learns():
    emb = torch.nn.Embedding(10, 6)
    emb.requires_grad_(False)
    soft = SoftPrompt(emb, token_id=7, n=2)
    ids = torch.tensor([[1, 7, 7, 3], [7, 7, 2, 2]])
    x = soft(ids)
    assert torch.equal(x[0, 1:3], soft.vectors) and torch.equal(x[1, :2], soft.vectors)
    assert torch.equal(x[0, [0, 3]], emb.weight[[1, 3]]) and torch.equal(x[1, 2:], emb.weight[[2, 2]])
    x.sum().backward()
    assert soft.vectors.grad is not None and emb.weight.grad is None


def test_common_suffix_counts_the_shared_tail():
    assert common_suffix([1, 2, 3, 4], [9, 3, 4]) == 2
    assert common_suffix([5, 6], [5, 6]) == 2
    assert common_suffix([1, 2], [2, 1]) == 0
    assert common_suffix([], [1]) == 0


def test_hidden_match_loss_is_the_relative_error_on_the_shared_positions_only():
    g = torch.Generator().manual_seed(0)
    student = tuple(torch.randn(2, 9, 5, generator=g) for _ in range(4))  # embeddings + 3 layers
    teacher = tuple(torch.randn(3, 6, 5, generator=g) for _ in range(4))
    spans = [(0, 9, 2, 5, 3), (1, 7, 0, 6, 2), (1, 9, 1, 6, 0)]  # the last row shares nothing: adds nothing
    expected = []
    for layer in range(1, 4):  # the embedding layer is left out
        for i, s_end, j, t_end, n in spans:
            for k in range(1, n + 1):
                s, t = student[layer][i, s_end - k], teacher[layer][j, t_end - k]
                expected.append(((s - t) ** 2).sum() / (t ** 2).sum())
    torch.testing.assert_close(hidden_match_loss(student, teacher, spans), torch.stack(expected).mean())
    moved = [h.clone() for h in student]
    moved[0] += 1.0  # embeddings
    moved[2][0, :6] += 1.0  # row 0 before its shared tail
    moved[1][1, 7:] += 1.0  # row 1 past its end (padding)
    torch.testing.assert_close(hidden_match_loss(tuple(moved), teacher, spans), torch.stack(expected).mean())
    assert hidden_match_loss(student, teacher, [(0, 9, 0, 6, 0)]).item() == 0.0


def test_teacher_reading_the_students_own_inputs_matches_it_and_the_gradient_reaches_only_the_projector():
    """The plumbing: the student's hidden states (all layers) line up with a text LM run on the very vectors the
    LLaVA body hands its LM, so the match is 0 there; a teacher with another prefix differs, and its match trains the
    tower + projector alone."""
    model = tiny_model("llava")
    inputs = tiny_inputs("llava", text_len=12, batch=2).kwargs
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.update(embeds=kw["inputs_embeds"].detach()), with_kwargs=True)
    outputs = student_forward(model, inputs, hidden_states=True)
    hook.remove()
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        same = model.model.language_model(inputs_embeds=seen["embeds"], output_hidden_states=True)
    spans = [(b, n, b, n, 10) for b in range(2)]
    assert hidden_match_loss(outputs.hidden_states, same.hidden_states, spans).item() < 1e-10

    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("model.vision_tower.", "model.multi_modal_projector.")))
    other = torch.cat([torch.full((2, 3), 5), inputs["input_ids"][:, -8:]], dim=1)  # another prefix, same 8 last
    with torch.no_grad():
        teacher = model.model.language_model(input_ids=other, output_hidden_states=True)
    outputs = student_forward(model, inputs, hidden_states=True)
    loss = hidden_match_loss(outputs.hidden_states, teacher.hidden_states, [(b, n, b, 11, 8) for b in range(2)])
    assert loss.item() > 0
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["model.multi_modal_projector.linear_1.weight"].abs().sum() > 0
    assert all(g is None for name, g in grads.items() if name.startswith("model.language_model."))


def test_train_soft_prompt_lowers_the_answer_loss_and_moves_nothing_else():
    model = tiny_model("llava")
    model.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    soft = SoftPrompt(model.get_input_embeddings(), IMAGE_TOKEN, n=4)
    ids = torch.tensor([[1, IMAGE_TOKEN, IMAGE_TOKEN, IMAGE_TOKEN, IMAGE_TOKEN, 30, 31, 42, 2],
                        [1, IMAGE_TOKEN, IMAGE_TOKEN, IMAGE_TOKEN, IMAGE_TOKEN, 32, 33, 43, 2]])
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]  # the answer and its end token

    def batches():
        while True:
            yield ids, labels, torch.ones_like(ids)

    losses = train_soft_prompt(model, soft, batches(), steps=40, lr=0.1, log=lambda _s: None)
    # a random 3-layer LM barely listens to its prompt: the loss still falls steadily (6.88 -> 6.51 here)
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    assert not soft.vectors.requires_grad  # frozen for its use as a teacher
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_train_prompt_vectors_cosine_settles_and_fp32_runs_without_autocast():
    """cosine=True: the steps shrink to ~0 by the end (constant lr keeps stepping at lr); bf16=False: the loss is
    computed in fp32 (no autocast), as on a CPU without native bf16 matmuls."""
    target = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))

    def run(cosine: bool, bf16: bool):
        vectors = torch.nn.Parameter(torch.zeros(4, 8))
        seen, dtypes = [], []

        def batch_loss(_batch):
            seen.append(vectors.detach().clone())
            out = torch.nn.functional.linear(vectors, torch.eye(8))  # a matmul: autocast would make it bf16
            dtypes.append(out.dtype)
            return (out.float() - target).pow(2).mean()

        train_prompt_vectors(vectors, batch_loss, iter(lambda: None, 1), 40, 0.05, "t", lambda _s: None, bf16, cosine)
        steps = [(b - a).abs().max().item() for a, b in itertools.pairwise(seen)]
        return steps, set(dtypes), vectors

    constant, dtypes, _ = run(cosine=False, bf16=False)
    assert dtypes == {torch.float32}
    assert constant[-1] > 0.02  # Adam at a constant lr still moves ~lr per step
    cosine, dtypes, vectors = run(cosine=True, bf16=True)
    assert dtypes == {torch.bfloat16}
    assert cosine[0] < cosine[15] and cosine[-1] < 0.002  # warm-up, then settles
    assert not vectors.requires_grad
