# SPDX-License-Identifier: Apache-2.0
"""A tiny LLaVA engine with a real processor (word-level tokenizer "w3 w4 ..." = ids 3, 4, ..., CLIP image
processor, 16 image tokens) and a real ``zipvl serve`` on free loopback ports, stopped after the module."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from zipvl.serve.cli import free_port


class Served(str):
    """The gateway URL, plus Triton's own HTTP port."""

    triton_http: int


@pytest.fixture(scope="session")
def served_engine(tmp_path_factory) -> Path:
    from zipvl.export.build import build_engine, load_model
    from zipvl.serve.tiny import make_processor
    from zipvl.testing import tiny_model
    from zipvl.validate.tiny import tiny_config

    root = tmp_path_factory.mktemp("serve")
    model_dir = root / "model"
    tiny_model("llava").save_pretrained(model_dir)
    make_processor().save_pretrained(model_dir)
    model, source = load_model(model_dir)
    engine = root / "engine"
    build_engine(model, engine, config=tiny_config(0.975), max_batch=4, max_sequence=2048, source_dir=source,
                 progress=False)
    return engine


@contextlib.contextmanager
def _serve(engine: Path, log: Path, *options: str):
    """``zipvl serve ENGINE OPTIONS`` as a user runs it, on free loopback ports; yields the gateway URL; always
    stopped (SIGTERM, then SIGKILL)."""
    port, triton = free_port(), [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "zipvl.cli", "serve", str(engine), "--port", str(port), "--threads", "1",
           "--triton-ports", ",".join(map(str, triton)), *options]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"zipvl serve exited: {log.read_text()[-2000:]}"
            try:
                if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"zipvl serve not ready in 150 s: {log.read_text()[-2000:]}")
        served = Served(url)
        served.triton_http = triton[0]
        yield served
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="session")
def serve():
    """``with serve(engine, log, *options) as url``: a server with other options than the shared one's."""
    return _serve


@pytest.fixture(scope="module")
def server(served_engine, tmp_path_factory):
    with _serve(served_engine, tmp_path_factory.mktemp("serve-log") / "serve.log", "--max-queue", "16") as url:
        yield url
