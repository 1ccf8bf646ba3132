# SPDX-License-Identifier: Apache-2.0
"""zipvl: ZipVL dynamic token sparsification for vision-language models.

Public API (the method's single source of truth, see docs/method.md):

- :class:`ZipVLConfig` - the method's knobs, validated.
- :func:`probe_positions`, :func:`select_tokens`, :class:`Selection` - the selection op (steps 1-5).
- :func:`sparse_attention`, :func:`compact` - steps 6-7 on plain tensors.
"""

from .config import ZipVLConfig
from .errors import UnsupportedModelError, ZipVLConfigError, ZipVLError, ZipVLInputError, ZipVLIntegrationError
from .reference.selection import Selection, probe_positions, score_tokens, select_tokens, select_window
from .reference.sparse import compact, sparse_attention

__version__ = "0.1.0"

__all__ = [
    "ZipVLConfig",
    "ZipVLError",
    "ZipVLConfigError",
    "ZipVLInputError",
    "ZipVLIntegrationError",
    "UnsupportedModelError",
    "Selection",
    "probe_positions",
    "select_tokens",
    "score_tokens",
    "select_window",
    "sparse_attention",
    "compact",
    "__version__",
]

from .reference.apply import SUPPORTED_ARCHITECTURES, ZipVLState, disable, enable  # noqa: E402
from .reference.cache import ZipVLCache, ZipVLLayer  # noqa: E402
from .reference.policy import FixedRatioPolicy, LayerContext, SectionTimer, TokenPolicy, ZipVLPolicy  # noqa: E402
from .reference.stats import ForwardStats, LayerStats  # noqa: E402

__all__ += ["enable", "disable", "ZipVLState", "ZipVLCache", "ZipVLLayer", "TokenPolicy", "ZipVLPolicy",
            "LayerContext", "FixedRatioPolicy", "SectionTimer", "ForwardStats", "LayerStats", "SUPPORTED_ARCHITECTURES"]
