# SPDX-License-Identifier: Apache-2.0
"""The embedded default model (real SmolLM2-135M in a LLaVA shell): build, validate against the reference (both
lowerings, tau 1 and 0.975, 34 tokens crossing re-selections at interval 16, batches of 2 unequal prompts), and
zipvl-run. Slow: a few minutes per engine on 2 cores."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default():
    from zipvl.export.build import load_model

    return load_model(None)


@pytest.fixture(scope="module")
def base_engine(default, tmp_path_factory):
    from zipvl.export.build import build_engine

    model, source = default
    out = tmp_path_factory.mktemp("default") / "standard-0.975"
    build_engine(model, out, ops="standard", source_dir=source, max_sequence=2048, progress=False)
    return out


@pytest.mark.parametrize("ops,tau", [("standard", 0.975), ("plugin", 0.975), ("standard", 1.0), ("plugin", 1.0)])
def test_default_engine_matches_reference(default, base_engine, tmp_path_factory, ops, tau):
    from zipvl import ZipVLConfig
    from zipvl.export.build import build_engine
    from zipvl.runtime import Engine
    from zipvl.validate.compare import validate
    from zipvl.validate.prompts import make_prompts

    model, source = default
    path = base_engine
    if (ops, tau) != ("standard", 0.975):
        path = tmp_path_factory.mktemp("default") / f"{ops}-{tau}"
        build_engine(model, path, ops=ops, config=ZipVLConfig(tau=tau), source_dir=source, max_sequence=2048,
                     reuse=base_engine, progress=False)
    engine = Engine(path, decode_interval=16)
    report = validate(engine, model, make_prompts(engine, 2), max_new_tokens=34, batch=2)
    s = report["summary"]
    assert report["passed"], s
    assert s["kept_sets_identical_up_to_ties"] and s["cache_lengths_equal"] and s["tokens_identical"]
    assert s["reselections"] == 2 and s["max_abs_logit_error"] < 1e-3


def test_zipvl_run_cli(base_engine, tmp_path, capsys):
    from PIL import Image

    from zipvl.runtime.cli import main

    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    code = main([str(base_engine), "--image", str(image), "--prompt", "What colour is this image?", "--prompt",
                 "Say hello.", "--max-new-tokens", "12", "--stats"])
    out = capsys.readouterr()
    assert code == 0 and len(out.out.strip().splitlines()) >= 1 and "kv_bytes" in out.err
