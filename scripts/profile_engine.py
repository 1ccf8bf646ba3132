#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Where an engine's prefill or decode time goes: ONNX Runtime's own profiler (``enable_profiling``) on the graph,
kernel time summed per op type, for a prompt of ``--length`` tokens (text only) and ``--steps`` decode steps.

    python scripts/profile_engine.py ENGINE --graph decode --length 2048 --batch 1 --steps 16
    python scripts/profile_engine.py ENGINE --graph prefill --length 2048

The first run of a graph is a warm-up and is not counted (its events are dropped by timestamp).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from zipvl.runtime import Engine, Prompt


def profiled_session(engine: Engine, graph: str, prefix: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = prefix
    if engine.manifest["ops"] == "plugin":
        raise SystemExit("profile_engine: profile a --ops standard engine (plugin nodes run in Python here)")
    return ort.InferenceSession(str(engine.dir / engine.manifest["graphs"][graph]), so,
                                providers=["CPUExecutionProvider"])


def op_times(trace: Path) -> tuple[dict[str, float], list[float]]:
    """Seconds of kernel time per op type over every run but the first (warm-up), and those runs' seconds."""
    events = json.loads(trace.read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    if len(runs) < 2:
        raise SystemExit("profile_engine: the profile holds fewer than two runs of the graph")
    after = runs[0][1]
    out: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= after:
            out[event["args"]["op_name"]] += event["dur"] / 1e6
    return dict(out), [(b - a) / 1e6 for a, b in runs[1:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine")
    p.add_argument("--graph", choices=("prefill", "decode"), default="decode")
    p.add_argument("--length", type=int, default=2048, help="prompt tokens")
    p.add_argument("--batch", type=int, default=1, help="decode batch")
    p.add_argument("--steps", type=int, default=16, help="decode steps profiled")
    args = p.parse_args(argv)
    engine = Engine(args.engine, verify=False, decode_interval=0)
    rng = np.random.default_rng(0)
    prompts = [Prompt(rng.integers(100, min(engine.desc["vocab_size"], 30000), args.length))
               for _ in range(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        session = profiled_session(engine, args.graph, str(Path(tmp) / args.graph))
        if args.graph == "prefill":
            engine.prefill_session = session
            engine.prefill(prompts[0])  # warm-up
            engine.prefill(prompts[0])
        else:
            engine.decode_session = session
            engine.generate(prompts, max_new_tokens=2)  # warm-up: one decode step
            engine.generate(prompts, max_new_tokens=args.steps + 1)
        times, runs = op_times(Path(session.end_profiling()))
    total, n = sum(times.values()), len(runs)
    print(f"{args.graph} (n = {args.length}, B = {args.batch}): {n} profiled run(s), {sum(runs) / n * 1e3:.1f} ms per "
          f"run in the session, kernel time {total / n * 1e3:.1f} ms per run")
    print("| op type | seconds | share | ms per run |\n|---|---|---|---|")
    for op, sec in sorted(times.items(), key=lambda kv: -kv[1]):
        if sec / total >= 0.005:
            print(f"| {op} | {sec:.3f} | {sec / total:.1%} | {sec / n * 1e3:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
