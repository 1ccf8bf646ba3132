# SPDX-License-Identifier: Apache-2.0
"""Per-forward statistics: kept counts and ratios per layer, attention FLOPs and KV bytes, dense vs ZipVL.

FLOPs count a multiply-add as 2. Causal dense attention over n tokens costs QK^T + PV = 2 * H * d * n * (n + 1)
(~ 2 n^2 hidden); the sparse attention costs the same over p tokens; the probe costs 2 * H * d * m * n (QK^T only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def causal_attention_flops(n: int, num_heads: int, head_dim: int) -> int:
    return 2 * num_heads * head_dim * n * (n + 1)


def probe_flops(n: int, m: int, num_heads: int, head_dim: int) -> int:
    return 2 * num_heads * head_dim * m * n


@dataclass
class LayerStats:
    """What one layer did in one forward, per sequence of the batch.

    ``mode``: "sparse" (selection + sparse attention), "evict_only" (dense prefill, the selection only evicts),
    "dense_layer" (listed in dense_layers), "short" (below min_length), "reselect" (decode-time re-selection).
    """

    layer: int
    phase: str
    mode: str
    length: list[int]  # tokens considered per sequence (valid prompt length, or window size when re-selecting)
    kept: list[int]  # tokens kept per sequence (sparse: by the attention; otherwise by the cache, see kv_bytes_after)
    attn_flops_dense: int = 0
    attn_flops_zipvl: int = 0  # sparse attention + probe
    probe_flops: int = 0
    kv_bytes_before: int = 0
    kv_bytes_after: int = 0
    cache_length: list[int] = field(default_factory=list)  # physical cache entries per sequence after this step

    @property
    def ratio(self) -> list[float]:
        return [k / n if n else 1.0 for k, n in zip(self.kept, self.length)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass
class ForwardStats:
    """Statistics of one model forward (one prefill or one decode step)."""

    phase: str = "prefill"
    layers: list[LayerStats] = field(default_factory=list)

    def layer_ratios(self) -> list[float]:
        """Mean kept ratio p/n of each layer (averaged over the batch), in layer order."""
        return [sum(s.ratio) / len(s.ratio) for s in sorted(self.layers, key=lambda s: s.layer) if s.ratio]

    @property
    def mean_ratio(self) -> float:
        """The run's "ratio": mean over layers and sequences of p/n."""
        r = self.layer_ratios()
        return sum(r) / len(r) if r else 1.0

    @property
    def attn_flops_dense(self) -> int:
        return sum(s.attn_flops_dense for s in self.layers)

    @property
    def attn_flops_zipvl(self) -> int:
        return sum(s.attn_flops_zipvl for s in self.layers)

    @property
    def attn_flops_reduction(self) -> float:
        """1 - zipvl / dense attention FLOPs (probe cost included), same n."""
        dense = self.attn_flops_dense
        return 1.0 - self.attn_flops_zipvl / dense if dense else 0.0

    @property
    def kv_bytes_before(self) -> int:
        return sum(s.kv_bytes_before for s in self.layers)

    @property
    def kv_bytes_after(self) -> int:
        return sum(s.kv_bytes_after for s in self.layers)

    def to_dict(self) -> dict:
        return {
            "phase": self.phase,
            "mean_ratio": self.mean_ratio,
            "layer_ratios": self.layer_ratios(),
            "attn_flops_dense": self.attn_flops_dense,
            "attn_flops_zipvl": self.attn_flops_zipvl,
            "attn_flops_reduction": self.attn_flops_reduction,
            "kv_bytes_before": self.kv_bytes_before,
            "kv_bytes_after": self.kv_bytes_after,
            "layers": [s.to_dict() for s in self.layers],
        }

    def summary(self) -> str:
        ratios = " ".join(f"{r:.2f}" for r in self.layer_ratios())
        return (
            f"{self.phase}: mean kept ratio {self.mean_ratio:.3f}; attention FLOPs reduction {100 * self.attn_flops_reduction:.1f}%; "
            f"KV {self.kv_bytes_before / 2**20:.2f} -> {self.kv_bytes_after / 2**20:.2f} MiB\n  per layer: {ratios}"
        )
