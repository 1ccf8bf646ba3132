# SPDX-License-Identifier: Apache-2.0
"""zipvl.validate: an engine against the PyTorch reference (kept sets, logits, greedy tokens); CLI zipvl-validate."""
