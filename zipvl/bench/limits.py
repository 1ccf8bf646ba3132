# SPDX-License-Identifier: Apache-2.0
"""The physical limit of each measured speed-up, from the model's FLOPs split (multiply-add = 2 FLOPs).

Per layer, for n prompt tokens:

- ``F_lin``  = 2 n (hidden*H*d + 2*hidden*H_kv*d + H*d*hidden + k*hidden*intermediate): projections and MLP, which
  ZipVL leaves dense on all n tokens (k = 3 for gated MLPs: gate, up, down).
- ``F_attn`` = 2 n^2 H d (= 2 n^2 hidden): causal QK^T + PV; ZipVL runs it on p = r n tokens -> F_attn r^2.
- ``F_probe`` = 2 m n H d: the probe's QK^T (m <= 128 probe rows); 0 on layers that stay dense.

End to end:   prefill <= (L F_lin + L F_attn + F_head) / (L F_lin + sum_l (F_attn r_l^2 + F_probe_l) + F_head)
Attention:    attention-only <= n^2 / mean_l(p_l^2) = 1 / mean_l(r_l^2)   (1 / r^2 for one ratio)
Decode:       decode <= dense KV bytes / evicted KV bytes   (a decode step streams the cache; KV-bound regime)

With ``logits_to_keep=1`` the LM head costs ``F_head`` = 2 hidden vocab (one row), kept for completeness.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from ..reference.stats import probe_flops as reference_probe_flops

TARGET_EFFICIENCY = 0.9  # the goal: measured speed-up >= 90 % of its limit


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder LM that fix its FLOPs split."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    vocab: int = 0
    mlp_matrices: int = 3

    @classmethod
    def from_config(cls, text_config, layers: int | None = None) -> ModelShape:
        heads = text_config.num_attention_heads
        hidden = text_config.hidden_size
        return cls(
            hidden=hidden,
            heads=heads,
            kv_heads=getattr(text_config, "num_key_value_heads", None) or heads,
            head_dim=getattr(text_config, "head_dim", None) or hidden // heads,
            intermediate=text_config.intermediate_size,
            layers=layers or text_config.num_hidden_layers,
            vocab=getattr(text_config, "vocab_size", 0) or 0,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def linear_flops(shape: ModelShape, n: int) -> float:
    """F_lin of one layer over n tokens: q, k, v, o projections and the MLP."""
    qo = 2 * shape.hidden * shape.heads * shape.head_dim
    kv = 2 * shape.hidden * shape.kv_heads * shape.head_dim
    mlp = shape.mlp_matrices * shape.hidden * shape.intermediate
    return 2.0 * n * (qo + kv + mlp)


def attention_flops(shape: ModelShape, n: int) -> float:
    """F_attn of one layer: causal attention over n tokens, 2 n^2 H d."""
    return 2.0 * n * n * shape.heads * shape.head_dim


def probe_flops(shape: ModelShape, n: int, m: int) -> float:
    """F_probe of one layer: m probe rows against n keys, QK^T only (the reference's statistics count it the same)."""
    return float(reference_probe_flops(n, m, shape.heads, shape.head_dim))


def flops_split(shape: ModelShape, n: int, m: int = 128) -> dict:
    """Per-layer FLOPs at length n, and the attention share of a dense layer."""
    f_lin, f_attn = linear_flops(shape, n), attention_flops(shape, n)
    return {"n": n, "F_lin": f_lin, "F_attn": f_attn, "F_probe": probe_flops(shape, n, min(m, n)),
            "attn_share": f_attn / (f_lin + f_attn)}


def prefill_limit(shape: ModelShape, n: int, ratios: list[float] | float, m: int = 128,
                  probed: list[bool] | None = None) -> float:
    """End-to-end prefill speed-up limit for per-layer kept ratios ``ratios`` (one float: the same for all layers).

    ``probed[l]`` False marks a layer that ran dense (dense_layers / short fallback): ratio 1 and no probe cost.
    """
    ratios = [float(ratios)] * shape.layers if isinstance(ratios, (int, float)) else [float(r) for r in ratios]
    probed = [True] * len(ratios) if probed is None else list(probed)
    f_lin, f_attn = linear_flops(shape, n), attention_flops(shape, n)
    f_probe = probe_flops(shape, n, min(m, n))
    f_head = 2.0 * shape.hidden * shape.vocab
    dense = len(ratios) * (f_lin + f_attn) + f_head
    sparse = len(ratios) * f_lin + f_head + sum(f_attn * r * r + (f_probe if p else 0.0) for r, p in zip(ratios, probed))
    return dense / sparse


def attention_limit(ratios: list[float] | float) -> float:
    """Attention-only limit: 1 / mean(r^2) (1 / r^2 for one ratio). Excludes the probe, as the kernel limit."""
    ratios = [float(ratios)] if isinstance(ratios, (int, float)) else [float(r) for r in ratios]
    mean_sq = sum(r * r for r in ratios) / len(ratios)
    return 1.0 / mean_sq


def effective_ratio(ratios: list[float]) -> float:
    """sqrt(mean(r^2)): the single ratio with the same total attention cost as the per-layer ratios."""
    return (sum(r * r for r in ratios) / len(ratios)) ** 0.5 if ratios else 1.0


def decode_limit(kv_bytes_dense: float, kv_bytes_zipvl: float) -> float:
    """Decode throughput limit: dense KV bytes / evicted KV bytes."""
    return kv_bytes_dense / kv_bytes_zipvl if kv_bytes_zipvl else float("inf")


def time_split_limit(dense_total_s: float, dense_attention_s: float, ratios: list[float] | float) -> float:
    """The same bound from the *measured* dense time split instead of FLOPs: T / (T - T_attn + T_attn mean(r^2)).

    On hardware where the MLP is not FLOP-bound (small matrices on CPU), this is the tighter, honest bound."""
    mean_sq = 1.0 / attention_limit(ratios)
    return dense_total_s / (dense_total_s - dense_attention_s + dense_attention_s * mean_sq)


def efficiency(speedup: float, limit: float) -> float:
    """Measured / limit (1.0 = the method's physical limit reached)."""
    return speedup / limit if limit else float("nan")
