# SPDX-License-Identifier: Apache-2.0
"""`zipvl-bench`: prefill / decode / memory benchmarks of ZipVL against the dense baseline, with an SLA gate.

Exit status: 0 ok, 2 bad input or unavailable backend, 3 an --sla budget was missed (one-line reason on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..console import add_debug_flag, entry_point
from .backends import BACKENDS
from .models import SHAPE_PRESETS
from .peers import PEERS, parse_peers
from .runner import STAGES, BenchConfig, run_bench
from .sla import SLA_EXIT_CODE, check_sla, parse_sla, sla_summary


def _ints(text: str) -> list[int]:
    try:
        out = [int(float(x)) if "k" not in x.lower() else int(float(x.lower().rstrip("k")) * 1024)
               for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers (1024 or 1k), got {text!r}")
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def _peers(text: str) -> tuple[str, ...]:
    try:
        return parse_peers(text)
    except ValueError as e:  # argparse prints ArgumentTypeError's message, not a ValueError's
        raise argparse.ArgumentTypeError(str(e))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zipvl-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="default",
                   help="'default' (embedded SmolLM2, real weights), a local HF checkpoint folder, 'tiny:<arch>', or "
                        f"'shape:<preset>' (random weights; presets: {', '.join(SHAPE_PRESETS)})")
    m.add_argument("--layers", type=int, help="keep only the first N decoder layers (report says so)")
    m.add_argument("--kept-ratio", type=float, help="force this kept ratio per layer (required for shape:...)")
    m.add_argument("--tau", type=float, default=0.975, help="ZipVL retention threshold (adaptive mode)")
    r = p.add_argument_group("backend")
    r.add_argument("--backend", choices=BACKENDS, default="torch")
    r.add_argument("--device", default="cpu", help="cpu or cuda[:i] (torch backend)")
    r.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="default float32 on CPU, bfloat16 on CUDA")
    r.add_argument("--engine", help="ZipVL engine folder (onnxruntime backend; built with zipvl-build)")
    r.add_argument("--dense-engine", help="the same model built with every layer dense (onnxruntime baseline)")
    r.add_argument("--threads", type=int, help="torch CPU threads")
    c = p.add_argument_group("peers (dense baselines outside zipvl, measured in the same run)")
    c.add_argument("--peers", type=_peers, default=(),
                   help=f"comma-separated: {', '.join(PEERS)} (ortgenai needs the 'peers' extra)")
    c.add_argument("--ortgenai-model", help="a prebuilt ORT GenAI model folder (default: built from --model, cached)")
    c.add_argument("--peak-lengths", type=_ints,
                   help="onnxruntime: prefill peak RSS of both engines per length, each in a fresh process")
    s = p.add_argument_group("sweeps")
    s.add_argument("--lengths", type=_ints, help="prefill lengths (default CPU 2k,4k,8k; GPU 2k..128k)")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--crossover-lengths", type=_ints, help="short lengths for the crossover (default CPU 128..2k)")
    s.add_argument("--crossover-repeats", type=int, default=3)
    s.add_argument("--contexts", type=_ints, help="decode contexts (default CPU 2k,4k; GPU 4k,16k)")
    s.add_argument("--batches", type=_ints, help="decode batch sizes (default CPU 1,2,4,8; GPU 1..16)")
    s.add_argument("--steps", type=int, default=8, help="timed decode steps per batch")
    s.add_argument("--memory-budget", type=float, metavar="MIB",
                   help="memory budget (MiB, weights included) for the largest-batch decode comparison")
    s.add_argument("--max-batch", type=int, default=64, help="cap on the batch actually run for the budget")
    s.add_argument("--skip", default="", help=f"comma-separated stages to skip: {', '.join(STAGES)}")
    v = p.add_argument_group("serve (load against running zipvl serve gateways, loopback only)")
    v.add_argument("--serve", metavar="URL", help="the ZipVL server, e.g. http://127.0.0.1:8000: run the load test")
    v.add_argument("--serve-dense", metavar="URL", help="its dense twin (same model, tau=1), same arrivals")
    v.add_argument("--rates", type=lambda t: [float(x) for x in t.split(",")], default=[0.5, 1, 2],
                   help="Poisson arrival rates, requests/s")
    v.add_argument("--requests", type=int, default=24, help="requests per rate and server (bounded)")
    v.add_argument("--prompt-words", type=_ints, default=[64, 256, 768], help="prompt length mix (words)")
    v.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    o = p.add_argument_group("output")
    o.add_argument("--json", help="write the JSON report here")
    o.add_argument("--plot", help="write the PNG plot here")
    o.add_argument("--sla", help="budgets, e.g. ttft_ms=800,decode_tps=40,kv_mib=512: exit 3 when one is missed")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--quiet", action="store_true", help="no tables (JSON / plot / SLA line only)")
    add_debug_flag(p)
    return p


@entry_point("zipvl-bench")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    budgets = parse_sla(args.sla) if args.sla else None
    if args.serve:
        return _serve(args, budgets)
    cfg = BenchConfig(
        model=args.model, layers=args.layers, kept_ratio=args.kept_ratio, tau=args.tau, backend=args.backend,
        device=args.device, dtype=args.dtype, engine=args.engine, dense_engine=args.dense_engine,
        lengths=args.lengths, repeats=args.repeats,
        warmup=args.warmup, crossover_lengths=args.crossover_lengths, crossover_repeats=args.crossover_repeats,
        contexts=args.contexts, batches=args.batches, steps=args.steps, memory_budget_mib=args.memory_budget,
        max_batch=args.max_batch, skip=tuple(s.strip() for s in args.skip.split(",") if s.strip()),
        threads=args.threads, progress=not args.no_progress, peers=args.peers, ortgenai_model=args.ortgenai_model,
        peak_lengths=args.peak_lengths)
    report = run_bench(cfg)
    from .report import plot, render, write_json

    if budgets:
        checks = check_sla(report, budgets)
        report["sla"] = {"budgets": budgets, "checks": [c.to_dict() for c in checks],
                         "ok": all(c.ok for c in checks), "summary": sla_summary(checks)}
    if not args.quiet:
        render(report)
    if args.json:
        print(f"JSON report: {write_json(report, args.json)}")
    if args.plot:
        print(f"plot: {plot(report, args.plot)}")
    if budgets:
        line = report["sla"]["summary"]
        if not report["sla"]["ok"]:
            print(f"zipvl-bench: {line}", file=sys.stderr)
            return SLA_EXIT_CODE
        print(line)
    return 0


def _serve(args, budgets) -> int:
    import json

    from .serve_load import LoadConfig, check_serve_sla, render, run_serve_bench

    if args.requests < 1 or args.requests > 1000 or min(args.rates) <= 0:
        raise argparse.ArgumentTypeError("--requests must be in [1, 1000] and --rates positive")
    servers = {"zipvl": args.serve, **({"dense": args.serve_dense} if args.serve_dense else {})}
    cfg = LoadConfig(rates=args.rates, requests=args.requests, prompt_words=tuple(args.prompt_words),
                     max_tokens=args.max_tokens)
    report = run_serve_bench(servers, cfg, progress=(lambda m: None) if args.quiet else print)
    if not args.quiet:
        print(render(report))
    if budgets:
        checks = check_serve_sla(report, budgets)
        report["sla"] = {"budgets": budgets, "checks": [c.to_dict() for c in checks],
                         "ok": all(c.ok for c in checks), "summary": sla_summary(checks)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if budgets:
        if not report["sla"]["ok"]:
            print(f"zipvl-bench: {report['sla']['summary']}", file=sys.stderr)
            return SLA_EXIT_CODE
        print(report["sla"]["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
