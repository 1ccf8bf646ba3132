# SPDX-License-Identifier: Apache-2.0
"""`zipvl` command line: `zipvl demo` runs the embedded default dense and with ZipVL, side by side."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .config import ZipVLConfig
from .console import add_debug_flag, entry_point


def _demo_tasks(processor, args) -> list[tuple[str, dict, object]]:
    """(name, model inputs, expected: list of answers | Needle) for the demo's three prompts."""
    from .data import NEEDLES, needle_prompt
    from .eval.tasks import Item, TaskOptions, build_inputs, make_items
    from .pipeline import chat_inputs

    if args.image:
        item = Item(id="user", task="user", prompt=f"<<image>>\n{args.question}", answers=[], scorer="none",
                    images=[args.image])
    else:
        item = make_items("easyvqa", None, TaskOptions(limit=args.vqa_item + 1, seed=0))[args.vqa_item]
    canvas = make_items("scenes_long", None, TaskOptions(limit=1, seed=0))[0]
    needle = NEEDLES[0]
    text = chat_inputs(processor, needle_prompt(processor.tokenizer, args.context_tokens, depth=args.depth))
    return [
        (f"image + question ({'your image' if args.image else 'easy-vqa test image'}): {item.prompt.split(chr(10))[-1]}",
         build_inputs(processor, item)[0], item.answers or None),
        (f"sparse canvas, overview + {canvas.meta['tiles']} tiles: {canvas.prompt.split(chr(10))[-1]}",
         build_inputs(processor, canvas)[0], canvas.answers),
        (f"long text (~{args.context_tokens} tokens, planted fact)", text, needle),
    ]


def _demo(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from .data import Needle, answer_is_correct
    from .eval.metrics import score
    from .models import load_default_model
    from .pipeline import generate

    console = Console()
    config = ZipVLConfig.preset(args.preset, **({} if args.tau is None else {"tau": args.tau}))
    if args.threads:
        torch.set_num_threads(args.threads)
    with console.status("loading the embedded default model (first run converts the GGUF, ~40 s)"):
        t0 = time.perf_counter()
        model, processor = load_default_model()
        load_s = time.perf_counter() - t0
    console.print(f"[bold]embedded default[/]: SmolLM2-135M-Instruct + trained vision tower (LLaVA), loaded in "
                  f"{load_s:.1f} s; ZipVL preset {args.preset!r}, tau={config.tau}")
    tasks = _demo_tasks(processor, args)

    def mark(text: str, expected) -> str:
        if expected is None:
            return ""
        ok = answer_is_correct(text, expected) if isinstance(expected, Needle) else score("vqa", text, expected)
        return " [green]✓[/]" if ok else " [red]✗[/]"

    with console.status("warming up"):  # first-call allocations would otherwise be billed to the dense run
        generate(model, processor, tasks[0][1], 2)
        generate(model, processor, tasks[0][1], 2, config=config)
    report = {"config": config.to_dict(), "tasks": []}
    for name, inputs, expected in tasks:
        n = inputs["input_ids"].shape[1]
        console.rule(f"{name} [{n} prompt tokens]")
        dense = generate(model, processor, inputs, args.max_new_tokens, progress="dense")
        sparse = generate(model, processor, inputs, args.max_new_tokens, config=config, progress="zipvl")
        table = Table(show_header=True)
        for col in ("", "answer", "TTFT s", "decode tok/s", "KV MiB", "kept visual / text"):
            table.add_column(col)
        kv = {"dense": sparse.stats.kv_bytes_before / 2**20, "zipvl": sparse.stats.kv_bytes_after / 2**20}
        kept = sparse.kept_by_type or {}
        kept_text = " / ".join(f"{kept[k]:.2f}" if k in kept else "-" for k in ("visual", "text"))
        if isinstance(expected, list):
            console.print(f"expected: {expected[0]!r}")
        for label, g in (("dense", dense), ("zipvl", sparse)):
            table.add_row(label, repr(g.text[0].strip()) + mark(g.text[0], expected), f"{g.ttft_s:.2f}",
                          f"{g.decode_tps:.1f}", f"{kv[label]:.2f}", "1.00 / 1.00" if label == "dense" else kept_text)
        console.print(table)
        console.print(sparse.stats.summary())
        report["tasks"].append({
            "task": name, "prompt_tokens": n, "dense_answer": dense.text[0], "zipvl_answer": sparse.text[0],
            "dense_ttft_s": dense.ttft_s, "zipvl_ttft_s": sparse.ttft_s, "kept_by_type": kept,
            "zipvl": sparse.stats.to_dict(),
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
    demo.add_argument("--preset", default=ZipVLConfig.RECOMMENDED, choices=tuple(ZipVLConfig.presets()),
                      help=f"the ZipVL configuration (default: the recommended one, {ZipVLConfig.RECOMMENDED!r})")
    demo.add_argument("--tau", type=float, default=None, help="default: the preset's")
    demo.add_argument("--image", help="your own image file or skimage:<name> (default: an easy-vqa test image)")
    demo.add_argument("--question", default="what shape is in the image?", help="asked about --image")
    demo.add_argument("--vqa-item", type=int, default=11,
                      help="which seeded easy-vqa test question (default 11: a colour question the shipped weights answer right, dense and with ZipVL)")
    demo.add_argument("--context-tokens", type=int, default=1500)
    demo.add_argument("--depth", type=float, default=0.5, help="relative depth of the planted fact")
    demo.add_argument("--max-new-tokens", type=int, default=12)
    demo.add_argument("--threads", type=int, default=0)
    demo.add_argument("--json", help="also write a JSON report here")
    demo.set_defaults(func=_demo)
    sub.add_parser("serve", help="serve an engine on Triton Inference Server + OpenAI API (zipvl serve -h)")
    add_debug_flag(parser)
    return parser


@entry_point("zipvl")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # its own parser and dependencies (zipvl.serve, the serve extra)
        from .serve.cli import main as serve

        return serve(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
