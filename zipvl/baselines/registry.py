# SPDX-License-Identifier: Apache-2.0
"""Name -> policy factory, for the eval CLI: ``make_policy("fastv", ratio=0.6, config=cfg, seed=0)``.

Every factory takes ``(ratio, config, seed)``; ``dense`` returns None (no policy: the model runs its own SDPA) and
``zipvl`` ignores ``ratio`` (its ratio is measured, driven by ``config.tau``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import ZipVLConfig
from ..errors import ZipVLConfigError
from ..reference.policy import FixedRatioPolicy, TokenPolicy, ZipVLPolicy
from .fastv import FastVPolicy
from .random_select import RandomPolicy
from .snapkv import SnapKVPolicy

Factory = Callable[[float | None, ZipVLConfig, int], TokenPolicy | None]


def _needs_ratio(name: str, ratio: float | None) -> float:
    if ratio is None:
        raise ZipVLConfigError(f"baseline {name!r} needs a kept ratio")
    return ratio


POLICIES: dict[str, Factory] = {
    "dense": lambda ratio, config, seed: None,
    "zipvl": lambda ratio, config, seed: ZipVLPolicy(config),
    "fixed": lambda ratio, config, seed: FixedRatioPolicy(_needs_ratio("fixed", ratio), config),
    "fastv": lambda ratio, config, seed: FastVPolicy(_needs_ratio("fastv", ratio), k=2, config=config),
    "snapkv": lambda ratio, config, seed: SnapKVPolicy(_needs_ratio("snapkv", ratio), window=64, config=config),
    "random": lambda ratio, config, seed: RandomPolicy(_needs_ratio("random", ratio), seed=seed, config=config),
}

# The baselines that run at a kept ratio matched to ZipVL's measured one.
RATIO_BASELINES = ("fixed", "fastv", "snapkv", "random")


def make_policy(name: str, ratio: float | None = None, config: ZipVLConfig | None = None,
                seed: int = 0) -> TokenPolicy | None:
    if name not in POLICIES:
        raise ZipVLConfigError(f"unknown method {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name](ratio, config or ZipVLConfig(), seed)
