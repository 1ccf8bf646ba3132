# SPDX-License-Identifier: Apache-2.0
"""Model builders: the embedded default (real SmolLM2 LM in a LLaVA shell)."""

from .default import cache_root, default_model_dir, load_default_model

__all__ = ["cache_root", "default_model_dir", "load_default_model"]
