# SPDX-License-Identifier: Apache-2.0
"""ZipVLConfig: the knobs of the method (see docs/method.md), validated on construction."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

from .errors import ZipVLConfigError


@dataclass(frozen=True)
class ZipVLConfig:
    """Hyper-parameters of ZipVL.

    Parameters
    ----------
    tau : float
        Attention-mass retention threshold in (0, 1]. Each layer keeps the smallest number of tokens whose
        probe-attention mass reaches ``tau`` of the total. ``tau = 1.0`` is exactly dense attention.
    n_recent, n_random : int
        Probe queries: the ``n_recent`` most recent positions plus ``n_random`` seeded random ones (without
        replacement). When the sequence has at most ``n_recent + n_random`` tokens every position is a probe.
    decode_interval : int
        During decoding, every ``decode_interval`` generated tokens the newest ``decode_interval`` cache entries are
        re-scored with the current token's attention and the low-mass ones are evicted. 0 disables decode-time
        re-selection.
    dense_layers : tuple of int
        Layers that keep dense attention and a full cache (e.g. FastV-style early layers).
    seed : int
        Seed of the random probe positions; the same probe set is used by every layer of one forward.
    min_length : int
        Sequences shorter than this run dense attention (selection would cost more than it saves); statistics
        report such layers as ``fallback="short"``.
    """

    tau: float = 0.975
    n_recent: int = 64
    n_random: int = 64
    decode_interval: int = 100
    dense_layers: tuple[int, ...] = field(default_factory=tuple)
    seed: int = 0
    min_length: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.tau, bool) or not isinstance(self.tau, numbers.Real):
            raise ZipVLConfigError(f"ZipVLConfig.tau must be a number in (0, 1], got {self.tau!r}")
        if not math.isfinite(float(self.tau)) or not 0.0 < float(self.tau) <= 1.0:
            raise ZipVLConfigError(f"ZipVLConfig.tau must be in (0, 1], got {self.tau!r}")
        object.__setattr__(self, "tau", float(self.tau))
        for name in ("n_recent", "n_random", "decode_interval", "min_length", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ZipVLConfigError(f"ZipVLConfig.{name} must be an integer, got {value!r}")
            if name != "seed" and value < 0:
                raise ZipVLConfigError(f"ZipVLConfig.{name} must be >= 0, got {value}")
        if self.n_recent + self.n_random < 1:
            raise ZipVLConfigError("ZipVLConfig needs at least one probe query (n_recent + n_random >= 1)")
        layers = tuple(self.dense_layers)
        if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 for i in layers):
            raise ZipVLConfigError(f"ZipVLConfig.dense_layers must be non-negative layer indices, got {layers!r}")
        object.__setattr__(self, "dense_layers", tuple(sorted(set(int(i) for i in layers))))

    @property
    def n_probes(self) -> int:
        """Maximum number of probe queries m."""
        return self.n_recent + self.n_random

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ZipVLConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ZipVLConfigError(f"unknown ZipVLConfig fields: {sorted(unknown)}")
        d = dict(d)
        if "dense_layers" in d:
            d["dense_layers"] = tuple(d["dense_layers"])
        return cls(**d)
