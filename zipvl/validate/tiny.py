# SPDX-License-Identifier: Apache-2.0
"""Tiny engines for tests and self-checks: a tiny model from config (``zipvl.testing.tiny_model``) saved as a
checkpoint directory, built once per process per (arch, ops, tau); variants reuse the base engine's embed / vision
graphs (and decode when built with the same ops), so only the prefill graph is exported again."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from ..config import ZipVLConfig

# Probes 8 + 8 so the tiny prompts (40-60 tokens) use seeded random probes; re-selection every 16 tokens so a
# 34-token generation crosses two.
TEST_CONFIG = {"n_recent": 8, "n_random": 8, "decode_interval": 16}
MAX_SEQUENCE = 256
_ROOT: Path | None = None


def root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="zipvl-tiny-engines-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def tiny_config(tau: float = 0.975) -> ZipVLConfig:
    return ZipVLConfig(tau=tau, **TEST_CONFIG)


def tiny_model_dir(arch: str) -> Path:
    """``tiny_model(arch)`` saved with save_pretrained (what zipvl-build / zipvl-validate load)."""
    path = root() / "models" / arch
    if not (path / "config.json").is_file():
        from ..testing import tiny_model

        tiny_model(arch).save_pretrained(path)
    return path


def tiny_engine(arch: str, ops: str = "standard", tau: float = 0.975, preset: str = "paper") -> Path:
    """Engine directory for the tiny ``arch`` model (built on first request), with the selection variants of a
    ``ZipVLConfig`` preset (e.g. "evict_only": dense prefill attention, the kept set compacts the cache)."""
    from dataclasses import replace

    from ..config import ZipVLConfig
    from ..export.build import build_engine, load_model

    path = root() / "engines" / (f"{arch}-{ops}-{tau}" + ("" if preset == "paper" else f"-{preset}"))
    if (path / "manifest.json").is_file():
        return path
    base = root() / "engines" / f"{arch}-standard-0.975"
    reuse = None
    if path != base:  # the full build once; variants export only their prefill (and, per ops, decode) graph
        reuse = tiny_engine(arch, ops) if ops != "standard" and tau != 0.975 else tiny_engine(arch)
    model, source = load_model(tiny_model_dir(arch))
    config = replace(tiny_config(tau), **ZipVLConfig.preset(preset).variants())
    build_engine(model, path, ops=ops, config=config, max_batch=4, max_sequence=MAX_SEQUENCE,
                 source_dir=source, reuse=reuse, progress=False)
    return path
