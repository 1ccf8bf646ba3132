# SPDX-License-Identifier: Apache-2.0
"""``zipvl.pipeline.generate`` (what ``zipvl demo`` runs) with the recommended preset on a tiny LLaVA with an image:
its question-span probes read the image mask the pipeline sets, the prefill stays dense (same first token as dense)
and the cache is evicted (the demo's kept-ratio line has both token types); tau = 1 is exactly dense."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from zipvl import ZipVLConfig
from zipvl.pipeline import generate
from zipvl.serve.tiny import make_processor
from zipvl.testing import tiny_model


def _inputs(processor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8))
    question = " ".join(f"w{i}" for i in range(100, 160))
    return processor(images=image, text="<image>\n" + question, return_tensors="pt")


def test_recommended_preset_runs_through_the_pipeline():
    torch.manual_seed(0)
    model, processor = tiny_model("llava").eval(), make_processor()
    inputs = _inputs(processor)
    # a random tiny model's attention is near uniform: at the preset's own tau (0.99, 9-wide pool) every one of its
    # 76 tokens may be needed, so a lower tau makes the eviction visible; everything else is the preset's
    config = ZipVLConfig.preset(ZipVLConfig.RECOMMENDED, tau=0.9)
    assert config.probe_set == "question" and not config.sparse_prefill
    dense = generate(model, processor, inputs, 6)
    evicted = generate(model, processor, inputs, 6, config=config)
    assert evicted.tokens[0, 0] == dense.tokens[0, 0]  # dense prefill: the first token is dense's
    n = inputs["input_ids"].shape[1]
    assert min(evicted.stats.layers[i].kept[0] for i in range(len(evicted.stats.layers))) < n  # something evicted
    assert set(evicted.kept_by_type) == {"visual", "text"}  # the demo's kept-ratio line
    exact = generate(model, processor, inputs, 6, config=ZipVLConfig.preset(ZipVLConfig.RECOMMENDED, tau=1.0))
    assert torch.equal(exact.tokens, dense.tokens)
