# SPDX-License-Identifier: Apache-2.0
"""The ZipVL token-selection op (method steps 1-5), the single source of truth for every lowering.

Shapes: B batch, H query heads, H_kv key/value heads (GQA group g = H / H_kv), n tokens, d head dim, m probes.
Nothing n x n is materialised: the probe attention is (H, m, n), computed in key-head chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ZipVLConfig
from ..errors import ZipVLInputError

# Upper bound on the fp32 probe-score block materialised at once (elements), so 128 probes x 128K keys x 32 heads
# does not need 2 GB in one piece.
_PROBE_BLOCK_ELEMS = 1 << 26


def probe_positions(n: int, config: ZipVLConfig | None = None) -> torch.LongTensor:
    """Seeded probe query positions for a sequence of ``n`` tokens, ascending.

    The ``config.n_recent`` most recent positions plus ``config.n_random`` positions drawn uniformly without
    replacement from the rest with ``torch.Generator().manual_seed(config.seed)``; every position when
    ``n <= n_recent + n_random``. Deterministic: the runtime and the exported engine call this same function.
    """
    config = config or ZipVLConfig()
    if n < 1:
        raise ZipVLInputError(f"probe_positions needs a sequence of at least 1 token, got n={n}")
    if n <= config.n_probes:
        return torch.arange(n, dtype=torch.long)
    n_recent = min(config.n_recent, n)
    older = n - n_recent
    gen = torch.Generator().manual_seed(config.seed)
    drawn = torch.randperm(older, generator=gen)[: min(config.n_random, older)]
    recent = torch.arange(older, n, dtype=torch.long)
    return torch.cat([drawn.sort().values, recent])


def probe_mass(
    query: torch.Tensor, key: torch.Tensor, probes: torch.Tensor, scaling: float | None = None, heads: str = "sum"
) -> torch.Tensor:
    """Steps 2-3: a_j = sum over heads and probe rows of softmax(Q[P] K^T * scaling + causal mask), in fp32.

    query (B, H, n, d), key (B, H_kv, n, d), probes (m,) or (B, m) ascending -> mass (B, n) float32.
    The GQA group is folded into the probe rows (no repeat of K). ``heads="max"`` (a variant): the maximum over query
    heads of each head's sum over probe rows.
    """
    b, h, n, d = query.shape
    h_kv = key.shape[1]
    g = h // h_kv
    scale = d**-0.5 if scaling is None else float(scaling)
    probes = probes.to(query.device)
    if probes.dim() == 1:
        q_probe = query[:, :, probes]  # (B, H, m, d)
        visible = torch.arange(n, device=query.device)[None, None, :] <= probes[None, :, None]  # (1, m, n)
    else:
        idx = probes[:, None, :, None].expand(b, h, probes.shape[1], d)
        q_probe = torch.gather(query, 2, idx)
        visible = torch.arange(n, device=query.device)[None, None, :] <= probes[:, :, None]  # (B, m, n)
    m = q_probe.shape[2]
    q_probe = q_probe.float().reshape(b, h_kv, g * m, d)
    # Causal mask as an additive bias, fused with the scale into one baddbmm per key-head block.
    bias = torch.zeros(visible.shape, dtype=torch.float32, device=query.device).masked_fill_(~visible, float("-inf"))
    bias = bias.repeat(1, g, 1)[:, None]  # (B|1, 1, g*m, n), rows ordered (group member, probe) like q_probe
    mass = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    heads_per_block = max(1, min(h_kv, _PROBE_BLOCK_ELEMS // max(1, b * g * m * n)))
    for h0 in range(0, h_kv, heads_per_block):
        h1 = min(h_kv, h0 + heads_per_block)
        hb = h1 - h0
        q_blk = q_probe[:, h0:h1].reshape(b * hb, g * m, d)
        k_blk = key[:, h0:h1].float().reshape(b * hb, n, d).transpose(-1, -2)
        # Shared probes: a (g*m, n) bias broadcasts over the batch of blocks without a copy.
        bias_blk = bias[0, 0] if bias.shape[0] == 1 else bias.expand(b, hb, g * m, n).reshape(b * hb, g * m, n)
        scores = torch.baddbmm(bias_blk, q_blk, k_blk, alpha=scale)
        if heads == "sum":
            mass += torch.softmax(scores, dim=-1).view(b, hb * g * m, n).sum(dim=1)
        else:  # rows are (KV head, group member, probe): one (B, heads, n) per-head mass, query heads in order
            per_head = torch.softmax(scores, dim=-1).view(b, hb * g, m, n).sum(dim=2)
            mass = torch.maximum(mass, per_head.amax(dim=1))
    return mass


def visible_probe_counts(probes: torch.Tensor, n: int, num_heads: int) -> torch.Tensor:
    """c_j = H * (number of probe rows r with r >= j): the probe entries that can see key j. (n,) or (B, n)."""
    positions = torch.arange(n, device=probes.device)
    m = probes.shape[-1]
    if probes.dim() == 1:
        before = torch.searchsorted(probes, positions, right=False)
    else:
        before = torch.searchsorted(probes.contiguous(), positions.expand(probes.shape[0], n).contiguous())
    return num_heads * (m - before)


def adaptive_count(mass: torch.Tensor, tau: float, total: float | torch.Tensor) -> torch.Tensor:
    """Step 4: p = smallest count whose descending-sorted mass reaches ``tau * total``; p = n when tau >= 1.

    mass (B, n) -> (B,) long. The cumulative sum runs in fp64 so the count does not hinge on fp32 rounding.
    """
    b, n = mass.shape
    if tau >= 1.0:
        return torch.full((b,), n, dtype=torch.long, device=mass.device)
    cumulative = torch.sort(mass.double(), dim=-1, descending=True).values.cumsum(dim=-1)
    threshold = tau * torch.as_tensor(total, dtype=torch.float64, device=mass.device).reshape(-1, 1)
    return ((cumulative < threshold).sum(dim=-1) + 1).clamp_(max=n)


def top_by_score(score: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Step 5's choice: the ``count[b]`` largest scores of each row, ties to the lower position. -> kept (B, n) bool."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order))
    return rank < count[:, None]


@dataclass
class Selection:
    """Result of :func:`select_tokens` for one layer.

    Attributes
    ----------
    kept : (B, n) bool        tokens in T
    count : (B,) long         p, the adaptive number of kept tokens
    mass : (B, n) float32     a_j, summed probe attention
    score : (B, n) float32    a_j / c_j, the normalised score that ranks tokens
    probes : (m,) or (B, m)   the probe positions used
    evict : (B, n) bool or None   what the KV cache keeps when it differs from ``kept`` (a ``tau_evict`` variant)

    With one set per KV head (``head_reduce="kv"``) kept / mass / score are (B, H_kv, n) and count (B, H_kv).
    """

    kept: torch.Tensor
    count: torch.Tensor
    mass: torch.Tensor
    score: torch.Tensor
    probes: torch.Tensor
    evict: torch.Tensor | None = None

    @property
    def cache_kept(self) -> torch.Tensor:
        """(B, n) bool: the tokens the layer's KV cache retains."""
        return self.kept if self.evict is None else self.evict

    @property
    def ratio(self) -> torch.Tensor:
        """p / n per sequence, float."""
        return self.count.double() / self.kept.shape[-1]

    def indices(self, capacity: int | None = None, pad: int = -1) -> torch.Tensor:
        """Kept positions ascending, fixed capacity (default n), padded with ``pad``: the plugins' output layout."""
        return kept_positions(self.kept, capacity, pad)


def kept_positions(kept: torch.Tensor, capacity: int | None = None, pad: int = -1) -> torch.Tensor:
    """(..., n) bool -> the True positions ascending, fixed capacity (default n), padded with ``pad``."""
    n = kept.shape[-1]
    capacity = n if capacity is None else capacity
    positions = torch.arange(n, device=kept.device).expand_as(kept)
    # Non-kept positions sort after every kept one; stable sort keeps the kept ones ascending.
    keyed = torch.where(kept, positions, positions + n)
    out = torch.sort(keyed, dim=-1, stable=True).values[..., :capacity]
    return torch.where(out < n, out, torch.full_like(out, pad))


def _check_shapes(query: torch.Tensor, key: torch.Tensor, probes: torch.Tensor) -> None:
    if query.dim() != 4 or key.dim() != 4:
        raise ZipVLInputError(
            f"select_tokens expects query (B, H, n, d) and key (B, H_kv, n, d), got {tuple(query.shape)} "
            f"and {tuple(key.shape)}"
        )
    b, h, n, d = query.shape
    if key.shape[0] != b or key.shape[2] != n or key.shape[3] != d:
        raise ZipVLInputError(f"query {tuple(query.shape)} and key {tuple(key.shape)} disagree on B, n or d")
    if h % key.shape[1] != 0:
        raise ZipVLInputError(f"query heads ({h}) must be a multiple of key heads ({key.shape[1]})")
    if n < 1:
        raise ZipVLInputError("select_tokens needs at least one token (n >= 1)")
    if probes.dtype not in (torch.int64, torch.int32) or probes.dim() not in (1, 2) or probes.shape[-1] < 1:
        raise ZipVLInputError(f"probes must be a non-empty (m,) or (B, m) integer tensor, got {probes.dtype} "
                              f"{tuple(probes.shape)}")
    if int(probes.min()) < 0 or int(probes.max()) >= n:
        raise ZipVLInputError(f"probe positions must lie in [0, {n}), got [{int(probes.min())}, {int(probes.max())}]")
    if probes.shape[-1] > 1 and bool((probes[..., 1:] <= probes[..., :-1]).any()):
        raise ZipVLInputError("probe positions must be strictly ascending")
    if int(probes.max()) != n - 1 if probes.dim() == 1 else bool((probes[:, -1] != n - 1).any()):
        # The last position is always a probe (it is the most recent), which keeps every c_j > 0.
        raise ZipVLInputError(f"the last position ({n - 1}) must be a probe")


def select_tokens(
    query: torch.Tensor,
    key: torch.Tensor,
    probes: torch.Tensor,
    tau: float,
    scaling: float | None = None,
) -> Selection:
    """ZipVL's token selection for one layer (method steps 1-5).

    Parameters
    ----------
    query : (B, H, n, d) tensor, after rotary embedding
    key : (B, H_kv, n, d) tensor, after rotary embedding (not repeated for GQA)
    probes : (m,) or (B, m) long tensor of probe positions, strictly ascending, ending at n - 1
        (see :func:`probe_positions`)
    tau : float in (0, 1]
    scaling : softmax scale, default 1 / sqrt(d)

    Returns
    -------
    Selection with ``kept`` (B, n) bool, ``count`` (B,), ``mass`` (B, n), ``score`` (B, n).
    """
    if not 0.0 < float(tau) <= 1.0:
        raise ZipVLInputError(f"tau must be in (0, 1], got {tau!r}")
    _check_shapes(query, key, probes)
    probes = probes.to(device=query.device, dtype=torch.long)
    mass, score = score_tokens(query, key, probes, scaling)
    total = float(query.shape[1] * probes.shape[-1])  # every probe row of every head sums to 1
    count = adaptive_count(mass, tau, total)
    return Selection(kept=top_by_score(score, count), count=count, mass=mass, score=score, probes=probes)


def score_tokens(query: torch.Tensor, key: torch.Tensor, probes: torch.Tensor, scaling: float | None = None,
                 heads: str = "sum"):
    """Steps 2, 3 and 5's score: (mass a_j, normalised score a_j / c_j), both (B, n) float32.

    ``heads="max"``: the max-over-heads mass, normalised by the probe rows that see j (c_j / H)."""
    b, h, n, _ = query.shape
    mass = probe_mass(query, key, probes, scaling, heads)
    score = mass / visible_probe_counts(probes, n, h if heads == "sum" else 1).to(mass.dtype)
    return mass, score.expand(b, n).contiguous()


def token_attention_mass(query: torch.Tensor, key: torch.Tensor, visible: torch.Tensor, scaling: float,
                         per_kv_head: bool = False) -> torch.Tensor:
    """The current token's attention over the retained cache, summed over heads: the input of decode re-selection.

    query (B, H, d) or (B, H, 1, d), key (B, H_kv, L, d), visible (B, L) bool, or (B, H_kv, L) when KV heads hold
    different entries -> (B, L) float32; fp32, GQA folded into the query rows (no repeat of the cache), softmax over
    every visible entry. ``per_kv_head``: summed over each KV head's query group only, (B, H_kv, L) (for a cache
    whose slot l holds a different token in each KV head).
    """
    b, h, d = query.shape[0], query.shape[1], query.shape[-1]
    h_kv = key.shape[1]
    logits = torch.matmul(query.float().reshape(b, h_kv, h // h_kv, d), key.float().transpose(-1, -2)) * scaling
    hidden = ~(visible[:, None, None, :] if visible.dim() == 2 else visible[:, :, None, :])
    probs = torch.softmax(logits.masked_fill(hidden, float("-inf")), dim=-1)
    return probs.sum(dim=2) if per_kv_head else probs.sum(dim=(1, 2))


def select_window(window_mass: torch.Tensor, tau: float, num_heads: int) -> torch.Tensor:
    """Decode-time re-selection inside the newest window (method, "Decoding").

    window_mass (B, w): the current token's attention, summed over heads, on the window's entries. With a single
    query every c_j = H, so ranking by the normalised score is ranking by mass; the threshold is tau times the
    window's own mass. -> kept (B, w) bool.
    """
    count = adaptive_count(window_mass, tau, window_mass.double().sum(dim=-1))
    return top_by_score(window_mass / num_heads, count)
