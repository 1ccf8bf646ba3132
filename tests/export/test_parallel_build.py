# SPDX-License-Identifier: Apache-2.0
"""zipvl-build --jobs: graphs exported in worker processes give the same engine files as the in-process build."""

from __future__ import annotations

import json

import pytest

from zipvl.errors import ZipVLInputError
from zipvl.export.build import build_engine, load_model
from zipvl.export.parallel import export_parallel
from zipvl.validate.tiny import MAX_SEQUENCE, tiny_config, tiny_engine, tiny_model_dir


def test_parallel_build_is_byte_identical(tmp_path):
    serial = tiny_engine("llava", "standard", 0.975)  # built in process (jobs=1), shared with the runtime tests
    src = tiny_model_dir("llava")
    model, _ = load_model(src)
    build_engine(model, tmp_path / "p", config=tiny_config(0.975), max_batch=4, max_sequence=MAX_SEQUENCE,
                 source_dir=src, progress=False, jobs=2)
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "p", serial))
    graphs = [f for f in theirs["files"] if f.endswith(".onnx") or f == "weights.bin"]
    assert len(graphs) == 5 and ours["build"]["jobs"] == 2
    for f in graphs:
        assert ours["files"][f]["sha256"] == theirs["files"][f]["sha256"], f


def test_a_failing_worker_is_one_clear_error(tmp_path):
    from zipvl import ZipVLConfig

    paths = {n: tmp_path / f"{n}.onnx" for n in ("embed", "prefill")}
    with pytest.raises(ZipVLInputError, match="graph export failed in a worker: .*no config.json"):
        export_parallel(list(paths), tmp_path / "nothing", ZipVLConfig(), "standard", paths, jobs=2)
