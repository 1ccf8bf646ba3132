# SPDX-License-Identifier: Apache-2.0
"""zipvl-build --preset: the preset's fields reach the engine's manifest (explicit options override them), and a
preset whose variant the graphs do not implement is refused before any export, naming the field."""

from __future__ import annotations

import json

from zipvl.export.cli import main
from zipvl.validate.tiny import tiny_engine, tiny_model_dir


def test_per_kv_head_preset_refuses_the_plugin_lowering(capsys):
    rc = main([str(tiny_model_dir("llava")), "-o", "/tmp/never-written", "--preset", "evict_question_kv", "--ops",
               "plugin", "--jobs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "head_reduce='kv'" in err and "--ops standard" in err and "Traceback" not in err


def test_visual_only_needs_a_model_with_visual_tokens(capsys):
    rc = main([str(tiny_model_dir("llama")), "-o", "/tmp/never-written", "--preset", "visual_only", "--jobs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "protect_text" in err and "LlamaForCausalLM" in err and "Traceback" not in err


def test_plugin_ops_refuse_a_selection_the_plugin_lacks(capsys):
    rc = main([str(tiny_model_dir("llava")), "-o", "/tmp/never-written", "--preset", "evict_question", "--ops",
               "plugin", "--jobs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "ZipVLTokenSelect" in err and "pool='max'" in err and "--ops standard" in err
    assert "Traceback" not in err


def test_evict_only_preset_builds_with_its_fields_and_overrides(tmp_path, capsys):
    out = tmp_path / "engine"
    base = tiny_engine("llava")  # reuse its embed / vision / decode graphs: only the prefill is exported
    rc = main([str(tiny_model_dir("llava")), "-o", str(out), "--preset", "evict_only", "--tau", "0.9",
               "--n-recent", "8", "--n-random", "8", "--reuse", str(base), "--jobs", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    config = json.loads((out / "manifest.json").read_text())["zipvl"]
    assert config["sparse_prefill"] is False and config["tau"] == 0.9 and config["n_recent"] == 8


def test_paper_preset_is_the_default_build(tmp_path, capsys):
    out = tmp_path / "engine"
    rc = main([str(tiny_model_dir("llava")), "-o", str(out), "--preset", "paper", "--reuse", str(tiny_engine("llava")),
               "--jobs", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    config = json.loads((out / "manifest.json").read_text())["zipvl"]
    assert config["sparse_prefill"] is True and config["tau"] == 0.975 and config["n_recent"] == 64
