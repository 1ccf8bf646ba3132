# SPDX-License-Identifier: Apache-2.0
"""What the benchmark runs on: the embedded default, a local HF checkpoint, a tiny test model, or a shape-only model.

Shape-only models are built from a preset config with random weights: timings are real, but random attention has no
real sparsity, so they must run with a forced kept ratio and every number they produce is labelled so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ZipVLConfigError, ZipVLError

log = logging.getLogger(__name__)

# LM shapes of the models the paper benchmarks (config.json of the public checkpoints; LM only, no vision tower).
SHAPE_PRESETS: dict[str, dict] = {
    "llava-next-7b": dict(arch="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32064),
    "llava-next-13b": dict(arch="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                           num_attention_heads=40, num_key_value_heads=40, vocab_size=32064),
    "longva-7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
    "smollm2-135m": dict(arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
}


@dataclass
class BenchModel:
    """A loaded model plus what the report must say about it."""

    model: torch.nn.Module
    tokenizer: object | None  # None: inputs are random token ids
    source: str  # "default", "tiny:<arch>", "shape:<preset>" or a checkpoint path
    weights: str  # "real" or "random"
    text_config: object
    layers_used: int
    layers_total: int
    notes: list[str] = field(default_factory=list)

    @property
    def shape_only(self) -> bool:
        return self.source.startswith("shape:")

    def describe(self) -> dict:
        return {"source": self.source, "weights": self.weights, "architecture": type(self.model).__name__,
                "layers_used": self.layers_used, "layers_total": self.layers_total,
                "hidden": self.text_config.hidden_size, "heads": self.text_config.num_attention_heads,
                "kv_heads": getattr(self.text_config, "num_key_value_heads", None),
                "intermediate": self.text_config.intermediate_size, "notes": list(self.notes)}


def _text_layers_module(model):
    inner = getattr(model, "model", None)
    return getattr(inner, "language_model", inner)


def _truncate(model, text_config, layers: int | None) -> int:
    """Keep the first ``layers`` decoder layers (shape-only depth cut on small machines)."""
    total = text_config.num_hidden_layers
    if not layers or layers >= total:
        return total
    lm = _text_layers_module(model)
    lm.layers = lm.layers[:layers]
    text_config.num_hidden_layers = layers
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = text_config.layer_types[:layers]
    return total


def _shape_model(preset: str, layers: int | None, device, dtype) -> BenchModel:
    import transformers as tf

    if preset not in SHAPE_PRESETS:
        raise ZipVLConfigError(f"unknown shape preset {preset!r}; choose from {sorted(SHAPE_PRESETS)}")
    spec = dict(SHAPE_PRESETS[preset])
    arch = spec.pop("arch")
    total = spec["num_hidden_layers"]
    if layers:
        spec["num_hidden_layers"] = min(layers, total)
    cfg_cls, model_cls = (tf.LlamaConfig, tf.LlamaForCausalLM) if arch == "llama" else (tf.Qwen2Config,
                                                                                        tf.Qwen2ForCausalLM)
    cfg = cfg_cls(**spec, max_position_embeddings=262144, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the target device: a 7B model is 13 GB in bf16
        model = model_cls._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    used = cfg.num_hidden_layers
    notes = [f"shape-only: {preset} LM shapes, random weights; kept ratio is forced"]
    if used < total:
        notes.append(f"depth truncated to {used} of {total} layers (--layers): per-layer costs are real, totals "
                     f"are for {used} layers")
    return BenchModel(model.eval(), None, f"shape:{preset}", "random", model.config, used, total, notes)


def _checkpoint(path: Path, layers: int | None, device, dtype) -> BenchModel:
    import transformers as tf

    from ..reference.apply import SUPPORTED_ARCHITECTURES

    cfg = json.loads((path / "config.json").read_text())
    arch = (cfg.get("architectures") or [""])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ZipVLError(f"{path}: architecture {arch!r} is not supported by zipvl "
                         f"({', '.join(SUPPORTED_ARCHITECTURES)})")
    model = getattr(tf, arch).from_pretrained(path, dtype=dtype)
    impl = {"text_config": "sdpa", "vision_config": "sdpa"} if SUPPORTED_ARCHITECTURES[arch] else "sdpa"
    model.set_attn_implementation(impl)
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        log.warning("no tokenizer in %s (%s): using random token ids", path, e)
        tokenizer = None
    text_config = model.config.get_text_config(decoder=True)
    total = _truncate(model, text_config, layers)
    notes = [] if total == text_config.num_hidden_layers else [f"depth truncated to {layers} of {total} layers"]
    return BenchModel(model.to(device).eval(), tokenizer, str(path), "real", text_config,
                      text_config.num_hidden_layers, total, notes)


def load_bench_model(spec: str = "default", device="cpu", dtype: torch.dtype = torch.float32,
                     layers: int | None = None) -> BenchModel:
    """Load the model named by ``spec``: "default", "tiny:<arch>", "shape:<preset>" or a local checkpoint folder."""
    if spec.startswith("shape:"):
        return _shape_model(spec.split(":", 1)[1], layers, device, dtype)
    if spec.startswith("tiny:"):
        from ..testing import tiny_model

        arch = spec.split(":", 1)[1]
        model = tiny_model(arch, num_layers=layers or 3).to(device=device, dtype=dtype)
        text_config = model.config.get_text_config(decoder=True)
        return BenchModel(model, None, spec, "random", text_config, text_config.num_hidden_layers,
                          text_config.num_hidden_layers, ["tiny test model: random weights, timings meaningless"])
    if spec == "default":
        from ..models import load_default_model

        model, processor = load_default_model(dtype=dtype)
        text_config = model.config.get_text_config(decoder=True)
        total = _truncate(model, text_config, layers)
        notes = ["embedded default: SmolLM2-135M-Instruct (real weights) in a LLaVA shell; text-only prompts"]
        if total != text_config.num_hidden_layers:
            notes.append(f"depth truncated to {layers} of {total} layers")
        return BenchModel(model.to(device).eval(), processor.tokenizer, "default", "real", text_config,
                          text_config.num_hidden_layers, total, notes)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ZipVLError(f"model {spec!r} is neither 'default', 'tiny:<arch>', 'shape:<preset>' "
                         f"({', '.join(SHAPE_PRESETS)}) nor a folder with a config.json")
    return _checkpoint(path, layers, device, dtype)


_TOKEN_CACHE: dict[int, list[int]] = {}


def prompt_ids(bench: BenchModel, n: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """(1, n) token ids: real essay text for models with a tokenizer (real attention patterns), else seeded random
    ids. The text is tokenised once and tiled if a longer prompt is asked for."""
    if bench.tokenizer is not None:
        key = id(bench.tokenizer)
        if key not in _TOKEN_CACHE:
            try:
                from ..data.needle import essay_text

                text = essay_text()
            except ZipVLError as e:
                log.warning("%s: falling back to random token ids", e)
                text = None
            _TOKEN_CACHE[key] = bench.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids = _TOKEN_CACHE[key]
        if ids:
            reps = -(-n // len(ids))
            return torch.tensor((ids * reps)[:n], dtype=torch.long, device=device)[None]
    vocab = bench.text_config.vocab_size
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, max(4, vocab - 3), (1, n), generator=g).to(device)
