# SPDX-License-Identifier: Apache-2.0
"""The frozen LM reading a *perfect* description of the image: a trained soft prompt, then each image's tiles in
words (``scenes.tile_caption``), then the same question. With 64 vectors it answers easy-vqa at 0.985 and the
1,024-visual-token canvas at 0.91 (``scripts/frozen_lm_ceiling.py``), where the trained vision path reads 0.87 / 0.64.

Used twice: as that ceiling, and as a teacher for the vision path (``TrainConfig.distill``). The student's tokens
are trained so that the frozen LM's hidden states on the question and answer match the teacher's on the same text:
the answer loss says one word per image, the teacher says, layer by layer, what the LM should have read by then.
"""

from __future__ import annotations

import torch

from .default import IMAGE_TOKEN
from .tower_pretraining import warmup_cosine


class SoftPrompt(torch.nn.Module):
    """``n`` trained vectors written over the ``<image>`` placeholders of a prompt: the only trainable part."""

    def __init__(self, embeddings: torch.nn.Embedding, token_id: int, n: int):
        super().__init__()
        rms = embeddings.weight.pow(2).mean().sqrt()
        self.vectors = torch.nn.Parameter(torch.randn(n, embeddings.weight.shape[1]) * rms)
        self.embeddings, self.token_id = embeddings, token_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        slots = ids == self.token_id
        return x.masked_scatter(slots[..., None], self.vectors.to(x.dtype).repeat(ids.shape[0], 1))


def teacher_user_turn(n_soft: int, description: str, question: str) -> str:
    """The teacher's user turn: soft prompt, the image in words, the question line (as the student's prompt ends)."""
    return f"{IMAGE_TOKEN * n_soft}\n{description}\n{question}"


def common_suffix(a: list[int], b: list[int]) -> int:
    """How many trailing tokens two (unpadded) rows share: the question, the answers and the chat markers."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def relative_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||out - target||^2 / ||target||^2 per token ([..., d] -> [...]), in fp32. Per token, not per element: the
    hidden-state match weighs every position alike, and a word tile's caption words (the part that carries the tile)
    weigh as much as its trained vectors, which grow larger than word embeddings (RMS 0.30 against 0.14 after 250
    steps; the LM normalises each token anyway)."""
    return (out.float() - target.float()).pow(2).sum(-1) / target.float().pow(2).sum(-1).clamp_min(1e-6)


def hidden_match_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...],
                      spans: list[tuple[int, int, int, int, int]]) -> torch.Tensor:
    """Mean over layers (after the embeddings) and over the shared positions of ||s - t||^2 / ||t||^2.

    ``student`` / ``teacher``: HF ``hidden_states`` ([batch, seq, d] per layer, embeddings first); ``spans``:
    (student row, its end, teacher row, its end, n): the last n real positions of the two rows hold the same tokens."""
    s_rows, t_rows = [], []
    for i, s_end, j, t_end, n in spans:
        if n:
            s_rows.append(torch.stack([h[i, s_end - n:s_end] for h in student[1:]]))
            t_rows.append(torch.stack([h[j, t_end - n:t_end] for h in teacher[1:]]))
    if not s_rows:
        return torch.zeros((), device=student[0].device)
    return relative_error(torch.cat(s_rows, dim=1), torch.cat(t_rows, dim=1)).mean()  # over [layers, positions]


def labelled_loss(model, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss from the LM's last hidden states, the mean over the labelled tokens (needs one); the LM head
    runs only there, not over the ~1,100 positions of a canvas."""
    target = labels[:, 1:]
    where = target != -100
    return torch.nn.functional.cross_entropy(model.lm_head(hidden[:, :-1][where]).float(), target[where])


def answer_loss(model, soft: SoftPrompt, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token loss on the labelled tokens of text prompts whose ``<image>`` slots hold the soft prompt."""
    return labelled_loss(model, model.model.language_model(inputs_embeds=soft(ids), attention_mask=mask).last_hidden_state,
                         labels)


def train_prompt_vectors(vectors: torch.nn.Parameter, batch_loss, batches, steps: int, lr: float, name: str,
                         log=print, bf16: bool = True, cosine: bool = False) -> list[float]:
    """``steps`` AdamW steps on ``vectors`` alone, the LM frozen: ``batch_loss(next(batches))`` is the loss of a step.
    ``bf16``: autocast (on a CPU without native bf16 matmuls it is ~6x slower than fp32: 13 s against 2.3 s for a
    1,100-token forward on an AVX2 EPYC). ``cosine``: the lr falls from ``lr`` to 0 over the steps (10 warm-up), so
    a continuation settles instead of ending wherever the last batches pushed it. Freezes ``vectors`` after; returns
    the loss per step."""
    opt = torch.optim.AdamW([vectors], lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        if cosine:
            opt.param_groups[0]["lr"] = lr * warmup_cosine(step, steps, 10)
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = batch_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 4))
        if step % 25 == 0 or step == steps - 1:
            log(f"{name} step {step:4d}  loss {sum(losses[-25:]) / len(losses[-25:]):.3f}")
    vectors.requires_grad_(False)
    return losses


def train_soft_prompt(model, soft: SoftPrompt, batches, steps: int, lr: float, log=print,
                      bf16: bool = True) -> list[float]:
    """The soft prompt's training; ``batches`` yields (ids, labels, attention mask). Returns the loss per step."""
    return train_prompt_vectors(soft.vectors, lambda batch: answer_loss(model, soft, *batch), batches, steps, lr,
                                "soft prompt", log, bf16)
