# SPDX-License-Identifier: Apache-2.0
"""`zipvl` command line: `zipvl demo` runs the embedded default dense and with ZipVL, side by side."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .config import ZipVLConfig
from .console import add_debug_flag, entry_point


def _demo(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from .data import NEEDLES, answer_is_correct, load_image, needle_prompt
    from .models import load_default_model
    from .pipeline import chat_inputs, generate

    console = Console()
    config = ZipVLConfig(tau=args.tau)
    if args.threads:
        torch.set_num_threads(args.threads)
    with console.status("loading the embedded default model (first run converts the GGUF, ~40 s)"):
        t0 = time.perf_counter()
        model, processor = load_default_model()
        load_s = time.perf_counter() - t0
    console.print(f"[bold]embedded default[/]: SmolLM2-135M-Instruct in a LLaVA shell, loaded in {load_s:.1f} s; "
                  f"ZipVL tau={config.tau}")

    needle = NEEDLES[0]
    image = load_image(args.image)
    tasks = [
        ("image + question", chat_inputs(processor, [{"role": "user", "content": args.question}], images=[image]), None),
        (f"long text (~{args.context_tokens} tokens, planted fact)",
         chat_inputs(processor, needle_prompt(processor.tokenizer, args.context_tokens, depth=args.depth)), needle),
    ]
    with console.status("warming up"):  # first-call allocations would otherwise be billed to the dense run
        generate(model, processor, tasks[0][1], 2)
        generate(model, processor, tasks[0][1], 2, config=config)
    report = {"config": config.to_dict(), "tasks": []}
    for name, inputs, expected in tasks:
        n = inputs["input_ids"].shape[1]
        console.rule(f"{name}: {n} prompt tokens")
        dense = generate(model, processor, inputs, args.max_new_tokens, progress="dense")
        sparse = generate(model, processor, inputs, args.max_new_tokens, config=config, progress="zipvl")
        table = Table(show_header=True)
        for col in ("", "answer", "TTFT s", "decode tok/s", "KV MiB"):
            table.add_column(col)
        kv_dense = sparse.stats.kv_bytes_before / 2**20
        kv_sparse = sparse.stats.kv_bytes_after / 2**20
        for label, g, kv in (("dense", dense, kv_dense), ("zipvl", sparse, kv_sparse)):
            ok = "" if expected is None else (" [green]✓[/]" if answer_is_correct(g.text[0], expected) else " [red]✗[/]")
            table.add_row(label, repr(g.text[0].strip()) + ok, f"{g.ttft_s:.2f}", f"{g.decode_tps:.1f}", f"{kv:.2f}")
        console.print(table)
        console.print(sparse.stats.summary())
        report["tasks"].append({
            "task": name, "prompt_tokens": n, "dense_answer": dense.text[0], "zipvl_answer": sparse.text[0],
            "dense_ttft_s": dense.ttft_s, "zipvl_ttft_s": sparse.ttft_s, "zipvl": sparse.stats.to_dict(),
        })
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        console.print(f"report written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zipvl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded default dense and with ZipVL on an image and a long text")
    demo.add_argument("--tau", type=float, default=0.975)
    demo.add_argument("--image", default="skimage:astronaut", help="image file or skimage:<name>")
    demo.add_argument("--question", default="Describe the image in one sentence.")
    demo.add_argument("--context-tokens", type=int, default=1500)
    demo.add_argument("--depth", type=float, default=0.5, help="relative depth of the planted fact")
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.add_argument("--threads", type=int, default=0)
    demo.add_argument("--json", help="also write a JSON report here")
    demo.set_defaults(func=_demo)
    add_debug_flag(parser)
    return parser


@entry_point("zipvl")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
