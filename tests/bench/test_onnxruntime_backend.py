# SPDX-License-Identifier: Apache-2.0
"""The onnxruntime backend end to end on tiny engines (ZipVL + all-dense), same report format. Slow: two exports."""

import json

import pytest

from zipvl.bench.cli import main
from zipvl.bench.report import missing_fields


@pytest.mark.slow
def test_onnxruntime_backend_report(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from zipvl import ZipVLConfig
    from zipvl.export.build import build_engine
    from zipvl.testing import tiny_model

    model = tiny_model("llama")  # the bench's tiny:llama is the same seeded model
    build_engine(model, tmp_path / "z", config=ZipVLConfig(), max_sequence=512, max_batch=4, progress=False)
    build_engine(model, tmp_path / "d", config=ZipVLConfig(dense_layers=(0, 1, 2)), max_sequence=512, max_batch=4,
                 reuse=tmp_path / "z", progress=False)
    out = tmp_path / "r.json"
    argv = ["--model", "tiny:llama", "--backend", "onnxruntime", "--engine", str(tmp_path / "z"), "--dense-engine",
            str(tmp_path / "d"), "--lengths", "160", "--repeats", "1", "--warmup", "0", "--contexts", "160",
            "--batches", "1,2", "--steps", "2", "--json", str(out), "--no-progress", "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert missing_fields(report) == []
    assert report["environment"]["backend"] == "onnxruntime-cpu"
    p = report["prefill"][0]
    assert len(p["zipvl_stats"]["layer_ratios"]) == 3 and p["breakdown_zipvl_s"] is None
    assert report["decode"][0]["rows"][1]["batch"] == 2
