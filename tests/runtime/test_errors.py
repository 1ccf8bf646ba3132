# SPDX-License-Identifier: Apache-2.0
"""Broken engines and out-of-limit requests: one clear zipvl error each."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from zipvl import ZipVLError
from zipvl.runtime import Engine, EngineFileError, EngineLimitError, EngineVersionError, ManifestError, Prompt
from zipvl.validate.tiny import MAX_SEQUENCE, tiny_engine


@pytest.fixture
def engine_copy(tmp_path):
    dst = tmp_path / "engine"
    shutil.copytree(tiny_engine("llava", "standard", 0.975), dst)
    return dst


def test_corrupt_manifest(engine_copy):
    (engine_copy / "manifest.json").write_text('{"format": "zipvl-engine", "format_version": 1, "files": ')
    with pytest.raises(ManifestError, match="corrupt"):
        Engine(engine_copy)


def test_missing_manifest(engine_copy):
    (engine_copy / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="missing"):
        Engine(engine_copy)


def test_wrong_format_version(engine_copy):
    manifest = json.loads((engine_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (engine_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineVersionError, match="version 99"):
        Engine(engine_copy)


def test_deleted_graph_file(engine_copy):
    (engine_copy / "decode.onnx").unlink()
    with pytest.raises(EngineFileError, match="decode.onnx.*missing"):
        Engine(engine_copy)


def test_modified_weights(engine_copy):
    with open(engine_copy / "weights.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(EngineFileError, match="sha256"):
        Engine(engine_copy)


def test_over_long_prompt():
    engine = Engine(tiny_engine("llava", "standard", 0.975), verify=False)
    prompt = Prompt(np.arange(3, 3 + MAX_SEQUENCE - 10) % 900)
    with pytest.raises(EngineLimitError, match="max_sequence of 256"):
        engine.generate([prompt], max_new_tokens=32)
    with pytest.raises(EngineLimitError, match="max_batch"):
        engine.generate([Prompt(np.arange(3, 20))] * 5, max_new_tokens=2)


def test_errors_are_zipvl_errors():
    for cls in (ManifestError, EngineVersionError, EngineFileError, EngineLimitError):
        assert issubclass(cls, ZipVLError)
