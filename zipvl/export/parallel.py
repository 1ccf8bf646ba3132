# SPDX-License-Identifier: Apache-2.0
"""Export the engine graphs in parallel worker processes.

torch.export, its decompositions, the ONNX translation and the onnxscript optimizer are single-threaded Python, and
the prefill and decode graphs each trace every decoder layer: on a multi-core machine one build uses one core. Each
worker is a fresh interpreter (``python -m zipvl.export.parallel``: no fork of a process whose torch thread pools
are running, and no re-import of the caller's ``__main__`` as multiprocessing's spawn would do) that loads the model
from its checkpoint directory once and exports the graphs it is handed; the big graphs go to different workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ZipVLInputError


def _shares(names: list[str], jobs: int) -> list[list[str]]:
    """Round-robin over the graphs, largest first (prefill and decode trace every layer): one list per worker."""
    from .graphs import OPS_GRAPHS

    order = sorted(names, key=lambda n: n not in OPS_GRAPHS)
    shares = [order[i::jobs] for i in range(min(jobs, len(order)))]
    return [s for s in shares if s]


def export_parallel(names: list[str], source: str | Path, config, ops: str, paths: dict[str, Path], jobs: int,
                    on_done=None) -> dict[str, float]:
    """Export ``names`` to ``paths[name]`` with ``jobs`` workers loading the model from ``source``; returns the
    seconds each graph took in its worker. ``on_done(name)`` is called for each graph once its worker is done."""
    procs = []
    for share in _shares(names, jobs):
        cmd = [sys.executable, "-m", "zipvl.export.parallel", str(source), ops, json.dumps(config.to_dict())]
        cmd += [f"{n}={paths[n]}" for n in share]
        procs.append((share, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    timings: dict[str, float] = {}
    errors = []
    for share, proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            errors.append(f"{'/'.join(share)}: {lines[-1] if lines else f'exit status {proc.returncode}'}")
            continue
        timings.update(json.loads(out.strip().splitlines()[-1]))
        for name in share:
            if on_done is not None:
                on_done(name)
    if errors:
        raise ZipVLInputError("graph export failed in a worker: " + "; ".join(errors))
    return {n: timings[n] for n in names}


def main(argv: list[str]) -> int:
    """Worker: ``SOURCE OPS CONFIG_JSON name=path ...`` -> one JSON line {name: seconds}."""
    import torch

    from ..config import ZipVLConfig
    from . import graphs
    from .build import _quiet, load_model
    from .wrappers import describe

    source, ops, config = argv[0], argv[1], ZipVLConfig.from_dict(json.loads(argv[2]))
    torch.set_num_threads(1)  # the workers share the cores; tracing needs no intra-op threads
    model = load_model(source)[0]
    desc = describe(model)
    timings = {}
    for item in argv[3:]:
        name, path = item.split("=", 1)
        t = time.perf_counter()
        with _quiet():
            graphs.export_graph(name, model, desc, config, ops, Path(path))
        timings[name] = round(time.perf_counter() - t, 2)
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
