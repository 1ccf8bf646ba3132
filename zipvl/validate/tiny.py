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


# Query / key projections of the "sharp" tiny models are scaled by this: the random init's attention is near
# uniform, so every KV head keeps about tau * n tokens; sharpened, the heads disagree (per-KV-head sets differ in
# count, not only in content).
SHARP_QK = 6.0


def tiny_model_dir(arch: str, sharp: bool = False) -> Path:
    """``tiny_model(arch)`` saved with save_pretrained (what zipvl-build / zipvl-validate load); ``sharp``: with
    peaked attention (:data:`SHARP_QK`)."""
    path = root() / "models" / (arch + ("-sharp" if sharp else ""))
    if not (path / "config.json").is_file():
        from ..export.wrappers import text_parts
        from ..testing import tiny_model

        model = tiny_model(arch)
        if sharp:
            for layer in text_parts(model)[0].layers:
                layer.self_attn.q_proj.weight.data *= SHARP_QK
                layer.self_attn.k_proj.weight.data *= SHARP_QK
        model.save_pretrained(path)
    return path


def tiny_engine(arch: str, ops: str = "standard", tau: float = 0.975, preset: str = "paper", sharp: bool = False,
                **overrides) -> Path:
    """Engine directory for the tiny ``arch`` model (built on first request), with the selection variants of a
    ``ZipVLConfig`` preset (e.g. "evict_only": dense prefill attention, the kept set compacts the cache) and
    ``overrides`` of its fields (e.g. ``protect_last=4`` so the tiny prompts are not mostly protected); ``sharp``:
    the model with peaked attention (``tiny_model_dir(arch, sharp=True)``, built in full)."""
    from dataclasses import replace

    from ..config import ZipVLConfig
    from ..export.build import build_engine, load_model

    name = f"{arch}{'-sharp' if sharp else ''}-{ops}-{tau}" + ("" if preset == "paper" else f"-{preset}")
    path = root() / "engines" / (name + "".join(f"-{k}={v}" for k, v in sorted(overrides.items())))
    if (path / "manifest.json").is_file():
        return path
    base = root() / "engines" / f"{arch}-standard-0.975"
    reuse = None
    if path != base and not sharp:  # the full build once; variants export only their prefill (and decode) graph
        reuse = tiny_engine(arch, ops) if ops != "standard" and tau != 0.975 else tiny_engine(arch)
    model, source = load_model(tiny_model_dir(arch, sharp))
    config = replace(tiny_config(tau), **{**ZipVLConfig.preset(preset).variants(), **overrides})
    build_engine(model, path, ops=ops, config=config, max_batch=4, max_sequence=MAX_SEQUENCE,
                 source_dir=source, reuse=reuse, progress=False)
    return path
