# SPDX-License-Identifier: Apache-2.0
"""Peer methods as :class:`~zipvl.TokenPolicy` siblings of ZipVL, on the same attention/cache plumbing.

- ``fixed``: :class:`zipvl.FixedRatioPolicy` (ZipVL's scorer, fixed per-layer ratio: the paper's ablation);
- ``fastv``: :class:`FastVPolicy` (dense first K layers, then top image tokens by the last query's attention);
- ``snapkv``: :class:`SnapKVPolicy` (dense prefill, H2O/SnapKV-style fixed-budget KV eviction);
- ``random``: :class:`RandomPolicy`.
"""

from ..reference.policy import FixedRatioPolicy
from .fastv import FastVPolicy
from .random_select import RandomPolicy
from .registry import POLICIES, RATIO_BASELINES, make_policy
from .snapkv import SnapKVPolicy

__all__ = [
           "POLICIES",
           "RATIO_BASELINES",
           "FastVPolicy",
           "FixedRatioPolicy",
           "RandomPolicy",
           "SnapKVPolicy",
           "make_policy",
]
