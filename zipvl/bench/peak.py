# SPDX-License-Identifier: Apache-2.0
"""Prefill peak memory of an engine, one length per fresh process.

In one long process ONNX Runtime's CPU arena keeps what an earlier (longer) prefill allocated, so an in-process
peak at length n can be the footprint of an earlier length. Here every (engine, length) runs in a new interpreter:
load the engine, reset the kernel's resident-set high-water mark (``/proc/self/clear_refs`` <- 5), run one prefill,
read ``VmHWM``: the exact peak of the prefill (no sampling), next to the RSS the loaded engine already held.

``python -m zipvl.bench.peak ENGINE IDS.npy [--threads N]`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .memory import MiB


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(engine_dir: str, ids: np.ndarray, threads: int | None = None) -> dict:
    """In this process: load ``engine_dir``, one prefill of ``ids`` (n,), peak and loaded RSS in MiB."""
    from ..runtime import Engine, Prompt

    engine = Engine(engine_dir, threads=threads)
    loaded = _status_kib("VmRSS")
    exact = _reset_peak()
    t = time.perf_counter()
    engine.prefill(Prompt(ids.astype("int64")))
    seconds = time.perf_counter() - t
    peak = _status_kib("VmHWM")
    return {"n": int(ids.shape[0]), "peak_mib": None if peak is None else peak * 1024 / MiB,
            "loaded_mib": None if loaded is None else loaded * 1024 / MiB, "cold_prefill_s": seconds,
            "method": "VmHWM, fresh process" + ("" if exact else " (high-water mark not reset: includes loading)")}


def fresh_peak(engine_dir: str, ids, threads: int | None = None, timeout_s: float = 1800) -> dict:
    """:func:`measure` in a new interpreter; ``ids`` (1, n) or (n,). A failure is returned as ``{"skipped": ...}``."""
    arr = np.asarray(ids.cpu().numpy() if hasattr(ids, "cpu") else ids).reshape(-1)
    with tempfile.TemporaryDirectory(prefix="zipvl-peak-") as tmp:
        path = Path(tmp) / "ids.npy"
        np.save(path, arr)
        cmd = [sys.executable, "-m", "zipvl.bench.peak", str(engine_dir), str(path)]
        if threads:
            cmd += ["--threads", str(threads)]
        run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s)
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        return {"n": int(arr.shape[0]), "skipped": tail[0][:300]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_fresh_peaks(engines: dict[str, str], make_ids, lengths: list[int], threads: int | None = None,
                    tick=None) -> dict:
    """{variant: [peak per length]} for each engine directory (e.g. {"dense": ..., "zipvl": ...})."""
    out: dict = {name: [] for name in engines}
    for n in lengths:
        ids = make_ids(n)
        for name, folder in engines.items():
            out[name].append(fresh_peak(folder, ids, threads))
            if tick is not None:
                tick(f"fresh peak {name} n={n}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zipvl.bench.peak", description=__doc__.splitlines()[0])
    p.add_argument("engine")
    p.add_argument("ids", help=".npy file of int token ids (n,)")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.engine, np.load(args.ids), args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
