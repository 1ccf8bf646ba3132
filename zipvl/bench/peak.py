# SPDX-License-Identifier: Apache-2.0
"""Prefill peak memory of an engine, one length per fresh process.

In one long process ONNX Runtime's CPU arena keeps what an earlier (longer) prefill allocated, so an in-process
peak at length n can be the footprint of an earlier length. Here every (engine, length) runs in a new interpreter:
import the runtime (``base``: the interpreter, torch, ONNX Runtime), load the engine (``loaded``), reset the kernel's
resident-set high-water mark (``/proc/self/clear_refs`` <- 5), run one prefill, read ``VmHWM``: the exact peak of the
prefill (no sampling). The engine's own footprint is ``peak - base``; the issue's bound for it is the weights file
+ the prompt's dense KV + 1 GiB (:func:`bound_mib`).

``python -m zipvl.bench.peak ENGINE IDS.npy [--threads N] [--share-weights]`` prints one JSON line.
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


def bound_mib(manifest: dict, n: int) -> dict:
    """Weights (the engine's external weight files), the dense KV of an n-token prompt, and their sum + 1 GiB."""
    desc = manifest["model"]
    weights = sum(f["bytes"] for name, f in manifest["files"].items() if name.endswith(".bin")) / MiB
    kv = 2 * desc["num_layers"] * desc["num_kv_heads"] * desc["head_dim"] * 4 * n / MiB
    return {"weights_mib": weights, "kv_mib": kv, "bound_mib": weights + kv + 1024}


def measure(engine_dir: str, ids: np.ndarray, threads: int | None = None, share_weights: bool = False) -> dict:
    """In this process: load ``engine_dir``, one prefill of ``ids`` (n,); base, loaded and peak RSS in MiB."""
    from ..runtime import Engine, Prompt

    base = _status_kib("VmRSS")
    engine = Engine(engine_dir, threads=threads, share_weights=share_weights)
    loaded = _status_kib("VmRSS")
    exact = _reset_peak()
    t = time.perf_counter()
    engine.prefill(Prompt(ids.astype("int64")))
    seconds = time.perf_counter() - t
    peak = _status_kib("VmHWM")
    mib = (lambda kib: None if kib is None else kib * 1024 / MiB)
    return {"n": int(ids.shape[0]), "peak_mib": mib(peak), "loaded_mib": mib(loaded), "base_mib": mib(base),
            "cold_prefill_s": seconds, "share_weights": share_weights, **bound_mib(engine.manifest, int(ids.shape[0])),
            "method": "VmHWM, fresh process" + ("" if exact else " (high-water mark not reset: includes loading)")}


def fresh_peak(engine_dir: str, ids, threads: int | None = None, timeout_s: float = 1800,
               share_weights: bool = False) -> dict:
    """:func:`measure` in a new interpreter; ``ids`` (1, n) or (n,). A failure is returned as ``{"skipped": ...}``."""
    arr = np.asarray(ids.cpu().numpy() if hasattr(ids, "cpu") else ids).reshape(-1)
    with tempfile.TemporaryDirectory(prefix="zipvl-peak-") as tmp:
        path = Path(tmp) / "ids.npy"
        np.save(path, arr)
        cmd = [sys.executable, "-m", "zipvl.bench.peak", str(engine_dir), str(path)]
        if threads:
            cmd += ["--threads", str(threads)]
        if share_weights:
            cmd.append("--share-weights")
        run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s)
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        return {"n": int(arr.shape[0]), "skipped": tail[0][:300]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_fresh_peaks(engines: dict[str, str | tuple[str, bool]], make_ids, lengths: list[int],
                    threads: int | None = None, tick=None) -> dict:
    """{variant: [peak per length]} for each engine directory (e.g. {"dense": ..., "zipvl": ...}); a value
    ``(folder, True)`` loads that engine with shared, memory-mapped weights."""
    out: dict = {name: [] for name in engines}
    for n in lengths:
        ids = make_ids(n)
        for name, spec in engines.items():
            folder, share = spec if isinstance(spec, tuple) else (spec, False)
            out[name].append(fresh_peak(folder, ids, threads, share_weights=share))
            if tick is not None:
                tick(f"fresh peak {name} n={n}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zipvl.bench.peak", description=__doc__.splitlines()[0])
    p.add_argument("engine")
    p.add_argument("ids", help=".npy file of int token ids (n,)")
    p.add_argument("--threads", type=int)
    p.add_argument("--share-weights", action="store_true", help="one memory-mapped copy of the weights")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.engine, np.load(args.ids), args.threads, args.share_weights)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
