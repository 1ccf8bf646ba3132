# SPDX-License-Identifier: Apache-2.0
"""ZipVLConfig: the knobs of the method (see docs/method.md), validated on construction."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from .errors import ZipVLConfigError

PROBE_SETS = ("paper", "recent", "question")
POOLS = ("none", "max", "avg")
HEAD_REDUCTIONS = ("sum", "max", "kv")


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

    Selection variants (docs/method.md, "Variants"); every default is the paper's method, and ``tau = 1`` stays exactly
    dense for all of them.

    probe_set : str
        "paper" (recent + random), "recent" (the ``n_recent`` most recent positions only) or "question" (the trailing
        text span: the positions after the last image token of ``extras["image_mask"]``, the whole prompt without
        one, or the last ``question_tokens`` when > 0; at most ``n_recent + n_random`` of them, the most recent).
    question_tokens : int
        Length of the "question" span when > 0 (then no image mask is needed); 0 derives it from the image mask.
    pool, pool_kernel : str, int
        "max" or "avg" pooling (odd window ``pool_kernel``, SnapKV-style) of the per-token mass and normalised score
        before the tau rule, so the neighbours of a high-score token survive with it: the count is the tau rule on
        the pooled mass against its own total, the ranking is by the pooled score. "none": the paper's rule.
    protect_first, protect_last, protect_text : int, int, bool
        Always-kept tokens: the first ``protect_first`` (attention sinks), the last ``protect_last``, and with
        ``protect_text`` every token outside ``extras["image_mask"]`` (only visual tokens are sparsified). The tau
        rule then runs on the unprotected tokens alone: kept = protected + the smallest number of unprotected tokens
        whose mass reaches ``tau`` of the unprotected mass. Prefill only (decode re-selection is the paper's, and is
        off with ``protect_text``: generated tokens are text).
    head_reduce : str
        How the per-head probe mass becomes one shared set per layer: "sum" over heads (the paper's reading) or
        "max" over query heads (a token any head needs); with "max" the tau rule uses the max-reduced mass's own
        total. "kv": one set per KV head (Ada-KV's granularity): the tau rule and the ranking run on each KV head's
        own mass (its query group's probe rows), so heads keep different tokens and different counts. Eviction only
        (needs ``sparse_prefill=False``, no ``tau_evict``); engines keep a cache length per KV head (standard
        lowering only).
    sparse_prefill : bool
        False: dense prefill attention; the kept set only decides the KV eviction (as the SnapKV baseline).
    tau_evict : float or None
        Threshold of the KV eviction (prefill cache and decode re-selection), >= ``tau``: the cache may keep more
        tokens than the sparse attention used. None: ``tau``.
    min_ratio : float or tuple of float
        Per-layer floor on the kept ratio: at least ``ceil(min_ratio * n)`` tokens (protected ones included); a tuple
        gives one floor per layer and must match the model's depth. 0 disables.
    """

    # The selection study (docs/selection-study.md): the variant that keeps dense's answers best at equal kept ratio.
    RECOMMENDED: ClassVar[str] = "evict_question_wide"

    tau: float = 0.975
    n_recent: int = 64
    n_random: int = 64
    decode_interval: int = 100
    dense_layers: tuple[int, ...] = field(default_factory=tuple)
    seed: int = 0
    min_length: int = 0
    probe_set: str = "paper"
    question_tokens: int = 0
    pool: str = "none"
    pool_kernel: int = 5
    protect_first: int = 0
    protect_last: int = 0
    protect_text: bool = False
    head_reduce: str = "sum"
    sparse_prefill: bool = True
    tau_evict: float | None = None
    min_ratio: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.tau, bool) or not isinstance(self.tau, numbers.Real):
            raise ZipVLConfigError(f"ZipVLConfig.tau must be a number in (0, 1], got {self.tau!r}")
        if not math.isfinite(float(self.tau)) or not 0.0 < float(self.tau) <= 1.0:
            raise ZipVLConfigError(f"ZipVLConfig.tau must be in (0, 1], got {self.tau!r}")
        object.__setattr__(self, "tau", float(self.tau))
        for name in ("n_recent", "n_random", "decode_interval", "min_length", "seed", "question_tokens", "pool_kernel",
                     "protect_first", "protect_last"):
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
        self._check_variants()

    def _check_variants(self) -> None:
        for name, choices in (("probe_set", PROBE_SETS), ("pool", POOLS), ("head_reduce", HEAD_REDUCTIONS)):
            if getattr(self, name) not in choices:
                raise ZipVLConfigError(f"ZipVLConfig.{name} must be one of {', '.join(choices)}, got "
                                       f"{getattr(self, name)!r}")
        if self.probe_set == "recent" and self.n_recent < 1:
            raise ZipVLConfigError("ZipVLConfig.n_recent must be >= 1 with probe_set='recent'")
        if self.pool_kernel < 1 or self.pool_kernel % 2 == 0:
            raise ZipVLConfigError(f"ZipVLConfig.pool_kernel must be odd and >= 1, got {self.pool_kernel}")
        for name in ("protect_text", "sparse_prefill"):
            if not isinstance(getattr(self, name), bool):
                raise ZipVLConfigError(f"ZipVLConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.head_reduce == "kv" and (self.sparse_prefill or self.tau_evict is not None):
            raise ZipVLConfigError("ZipVLConfig.head_reduce='kv' (one kept set per KV head) decides the eviction only: "
                                   "set sparse_prefill=False and leave tau_evict unset")
        if self.tau_evict is not None:
            t = self.tau_evict
            if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(float(t)) or not (
                    self.tau <= float(t) <= 1.0):
                raise ZipVLConfigError(f"ZipVLConfig.tau_evict must be None or in [tau, 1] = [{self.tau}, 1], "
                                       f"got {t!r}")
            object.__setattr__(self, "tau_evict", float(t))
        floors = self.min_ratio if isinstance(self.min_ratio, (tuple, list)) else (self.min_ratio,)
        if not floors or any(isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0.0 <= float(r) <= 1.0
                             for r in floors):
            raise ZipVLConfigError(f"ZipVLConfig.min_ratio must be a ratio in [0, 1] or a non-empty tuple of them "
                                   f"(one per layer), got {self.min_ratio!r}")
        floors = tuple(float(r) for r in floors)
        object.__setattr__(self, "min_ratio", floors if isinstance(self.min_ratio, (tuple, list)) else floors[0])

    @property
    def n_probes(self) -> int:
        """Maximum number of probe queries m."""
        return self.n_recent + self.n_random

    @property
    def evict_tau(self) -> float:
        """The threshold of every KV eviction: ``tau_evict``, or ``tau`` when unset."""
        return self.tau if self.tau_evict is None else self.tau_evict

    def layer_floor(self, layer: int, num_layers: int) -> float:
        """``min_ratio`` of one layer; a per-layer tuple must have one entry per layer."""
        if not isinstance(self.min_ratio, tuple):
            return self.min_ratio
        if len(self.min_ratio) != num_layers:
            raise ZipVLConfigError(f"ZipVLConfig.min_ratio has {len(self.min_ratio)} per-layer floors, the model has "
                                   f"{num_layers} layers")
        return self.min_ratio[layer]

    def variants(self) -> dict:
        """The selection-variant fields set away from the paper's method: {name: value}."""
        inert = {"pool_kernel"} if self.pool == "none" else set()
        inert |= {"question_tokens"} if self.probe_set != "question" else set()
        return {f: getattr(self, f) for f in VARIANT_FIELDS
                if f not in inert and getattr(self, f) != self.__dataclass_fields__[f].default}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        if isinstance(self.min_ratio, tuple):
            d["min_ratio"] = list(self.min_ratio)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ZipVLConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ZipVLConfigError(f"unknown ZipVLConfig fields: {sorted(unknown)}")
        d = dict(d)
        if "dense_layers" in d:
            d["dense_layers"] = tuple(d["dense_layers"])
        if isinstance(d.get("min_ratio"), list):
            d["min_ratio"] = tuple(d["min_ratio"])
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> ZipVLConfig:
        """A named configuration (see :meth:`presets`), with ``overrides`` applied on top."""
        if name not in PRESETS:
            raise ZipVLConfigError(f"unknown ZipVLConfig preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name][1], **overrides})

    @staticmethod
    def presets() -> dict[str, str]:
        """Preset name -> one-line description."""
        return {name: desc for name, (desc, _) in PRESETS.items()}


# Fields that change the selection away from the paper's method (zipvl.export.build.ENGINE_VARIANTS: what engines
# implement).
VARIANT_FIELDS = ("probe_set", "question_tokens", "pool", "pool_kernel", "protect_first", "protect_last",
                  "protect_text", "head_reduce", "sparse_prefill", "tau_evict", "min_ratio")

# The evict_question family's shared fields: dense prefill, eviction scored by the question span, max-pooled (k=5),
# first 4 and last 32 tokens kept; each preset below changes one thing (tau, pool width, head granularity).
_EVICT_QUESTION = {"sparse_prefill": False, "probe_set": "question", "pool": "max", "pool_kernel": 5,
                   "protect_first": 4, "protect_last": 32}

# name -> (one-line description, fields). Candidates for the measurement study; "paper" is exactly ZipVLConfig().
PRESETS: dict[str, tuple[str, dict]] = {
    "paper": ("the paper's method (docs/method.md): 64 recent + 64 random probes, sum over heads, nothing protected",
              {}),
    "accurate": ("question-span probes, max-pooled score (k=5), first 4 and last 32 tokens always kept",
                 {"probe_set": "question", "pool": "max", "pool_kernel": 5, "protect_first": 4, "protect_last": 32}),
    # accurate's three pieces alone (the study's ablation: which one contributes what)
    "question_probes": ("probes are the question span (the text after the last image token) instead of recent + "
                        "random", {"probe_set": "question"}),
    "pooled": ("max-pooled probe score over 5 neighbouring positions, so a whole span survives",
               {"pool": "max", "pool_kernel": 5}),
    "protected": ("first 4 (attention sinks) and last 32 tokens always kept", {"protect_first": 4, "protect_last": 32}),
    "visual_only": ("only visual tokens are sparsified: every text token is kept (needs extras['image_mask'])",
                    {"protect_text": True}),
    "evict_only": ("dense prefill attention; ZipVL's kept set only decides the KV eviction",
                   {"sparse_prefill": False}),
    # dense prefill + a SnapKV-like score under the tau count (the study's next lever: rank by what the question needs)
    "evict_pooled": ("dense prefill; eviction by ZipVL's tau rule on the max-pooled (k=5) probe score",
                     {"sparse_prefill": False, "pool": "max", "pool_kernel": 5}),
    # tau 0.985: the needle grid's best agreement at <= 0.75 kept (docs/selection-study.md, third round); every
    # visual task keeps dense's answers at any tau from 0.9 to 0.99
    "evict_question": (("dense prefill; eviction by the tau (0.985) rule on the question span's max-pooled (k=5) "
                        "score, first 4 and last 32 tokens kept"),
                       {**_EVICT_QUESTION, "tau": 0.985}),
    # the fifth round's lever: numbers are one token per digit and the question marks where they start; a 9-wide pool
    # keeps the 4 tokens either side of a kept one, so trailing digits stay (4K grid: 0.88 vs 0.80 same answer).
    # tau 0.99 (sixth round): 120-item 1K/2K/4K grid 0.867 same answer at 0.693 kept, 60 of dense's 61 retrievals
    "evict_question_wide": (("evict_question with a 9-token max-pool at tau 0.99: the 4 neighbours either side of a "
                             "token the question needs survive with it (a number's trailing digits)"),
                            {**_EVICT_QUESTION, "pool_kernel": 9, "tau": 0.99}),
    "evict_question_heads": (("evict_question, with the score reduced by max over query heads (a token any head "
                              "needs) instead of the sum"),
                             {**_EVICT_QUESTION, "head_reduce": "max"}),
    "evict_question_kv": (("evict_question with one kept set per KV head (Ada-KV's granularity) instead of one per "
                           "layer"),
                          {**_EVICT_QUESTION, "tau": 0.985, "head_reduce": "kv"}),
    "safe_evict": ("sparse prefill at tau, KV eviction at the stricter tau_evict = 0.99", {"tau_evict": 0.99}),
    "max_heads": ("one set per layer by max over query heads (a token any head needs) instead of the sum",
                  {"head_reduce": "max"}),
    "more_probes": ("128 recent + 128 random probes", {"n_recent": 128, "n_random": 128}),
    "floored": ("at least 10% of the tokens kept in every layer (guards deep layers)", {"min_ratio": 0.1}),
}
