# SPDX-License-Identifier: Apache-2.0
"""Backends: the torch reference on CPU and CUDA, the onnxruntime backend's clear failure, clocks, peak memory."""

import pytest
import torch

from zipvl import ZipVLPolicy
from zipvl.bench import BackendUnavailableError, make_backend
from zipvl.bench.cli import main
from zipvl.bench.memory import PeakMemory, fit_batch, kv_bytes
from zipvl.bench.models import load_bench_model, prompt_ids
from zipvl.bench.timing import Samples, interleave


def test_onnxruntime_backend_fails_clearly(capsys):
    with pytest.raises(BackendUnavailableError, match="onnxruntime backend"):
        make_backend("onnxruntime", engine_dir=None)
    assert main(["--model", "tiny:llama", "--backend", "onnxruntime", "--no-progress"]) == 2
    assert "onnxruntime backend" in capsys.readouterr().err


def test_cuda_request_without_gpu_is_an_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["--model", "tiny:llama", "--device", "cuda", "--no-progress"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_torch_backend_prefill_and_decode_cpu():
    bench = load_bench_model("tiny:llama")
    backend = make_backend("torch", bench.model, ZipVLPolicy(), "cpu")
    ids = prompt_ids(bench, 150)
    dense, sparse = backend.prefill(ids, False, sections=True), backend.prefill(ids, True, sections=True)
    assert "dense_attention" in dense.sections and {"probe", "select", "sparse_attention"} <= set(sparse.sections)
    assert sparse.stats is not None and dense.stats is None
    assert kv_bytes(sparse.cache) <= kv_bytes(dense.cache)
    assert bench.model.config._attn_implementation == "sdpa"  # restored after the timed / zipvl runs
    cache = backend.replicate(sparse.cache, 3)
    seconds, token = backend.decode_step(cache, sparse.next_token.expand(3, 1), True)
    assert seconds > 0 and token.shape == (3, 1)
    assert cache.layers[0].keys.shape[0] == 3 and sparse.cache.layers[0].keys.shape[0] == 1  # copy, not alias


@pytest.mark.gpu
def test_torch_backend_cuda_events():
    bench = load_bench_model("tiny:llama", device="cuda")
    backend = make_backend("torch", bench.model, ZipVLPolicy(), "cuda")
    assert backend.describe()["gpu"] and backend.clock.kind == "cuda_events"
    with PeakMemory("cuda") as pm:
        run = backend.prefill(prompt_ids(bench, 300, device="cuda"), True)
    assert run.seconds > 0 and pm.peak_bytes > 0 and pm.method == "cuda_allocator"


def test_interleave_alternates_and_drops_warmup():
    calls = []
    samples = interleave({"a": lambda m: calls.append(("a", m)) or 1.0, "b": lambda m: calls.append(("b", m)) or 3.0},
                         repeats=3, warmup=1)
    assert calls == [("a", False), ("b", False), ("b", True), ("a", True), ("a", True), ("b", True), ("b", True),
                     ("a", True)]
    assert samples["a"].median == 1.0 and len(samples["b"].seconds) == 3
    s = Samples([1.0, 2.0, 4.0])
    assert s.median == 2.0 and s.spread == pytest.approx(1.5)


def test_fit_batch_and_peak_memory_cpu():
    assert fit_batch(100, 10, 30) == 3 and fit_batch(5, 10, 30) == 0
    with PeakMemory("cpu") as pm:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del x
    assert pm.method == "rss_sampled" and pm.delta_bytes is not None
