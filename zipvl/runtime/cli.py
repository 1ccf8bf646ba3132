# SPDX-License-Identifier: Apache-2.0
"""``zipvl-run ENGINE_DIR --image IMG --prompt TEXT``: generate with a zipvl engine on ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from ..console import add_debug_flag, entry_point
from ..errors import ZipVLError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zipvl-run", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("engine", help="engine directory (from zipvl-build)")
    p.add_argument("--prompt", action="append", required=True, help="user message; repeat for a batch")
    p.add_argument("--image", action="append", default=[], help="image file; one for all prompts or one per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-chat-template", action="store_true", help="feed the text as is")
    p.add_argument("--stats", action="store_true", help="print the ZipVL statistics (JSON) to stderr")
    add_debug_flag(p)
    return p


def encode(engine, processor, text: str, image, chat: bool):
    from .multimodal import Prompt

    token = getattr(processor, "image_token", "<image>")
    body = f"{token}\n{text}" if image is not None else text
    if chat and getattr(processor.tokenizer, "chat_template", None):
        body = processor.tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                       add_generation_prompt=True)
    enc = processor(images=image, text=body, return_tensors="np") if image is not None else \
        processor(text=body, return_tensors="np")
    return Prompt(enc["input_ids"][0], enc.get("pixel_values"), enc.get("image_sizes"), enc.get("image_grid_thw"))


@entry_point("zipvl-run")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from .engine import Engine

    engine = Engine(args.engine)
    if not engine.manifest.get("processor"):
        raise ZipVLError(f"{args.engine} has no processor/tokenizer (the model directory had none); use the "
                         f"Python API (zipvl.runtime.Engine) with token ids")
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(engine.dir / engine.manifest["processor"])
    images = [Image.open(p).convert("RGB") for p in args.image]
    if len(images) not in (0, 1, len(args.prompt)):
        raise ZipVLError("give one --image for all prompts or one per --prompt")
    prompts = [encode(engine, processor, text, images[i if len(images) > 1 else 0] if images else None,
                      not args.no_chat_template) for i, text in enumerate(args.prompt)]
    t0 = time.perf_counter()
    out = engine.generate(prompts, args.max_new_tokens, eos_token_id=engine.desc.get("eos_token_id"))
    seconds = time.perf_counter() - t0
    eos = engine.desc.get("eos_token_id")
    for row in out.tokens:
        ids = [int(t) for t in row]
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        print(processor.tokenizer.decode(ids, skip_special_tokens=True))
    if args.stats:
        stats = {"seconds": round(seconds, 3), "prefill": out.prefill_stats.to_dict(),
                 "cache_lengths": out.cache_lengths, "kv_bytes": out.kv_bytes, "reselections": len(out.decode_stats)}
        print(json.dumps(stats), file=sys.stderr)
    else:
        print(out.prefill_stats.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
