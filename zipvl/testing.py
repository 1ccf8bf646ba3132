# SPDX-License-Identifier: Apache-2.0
"""Tiny seeded models built from config (no hub) for every supported architecture, plus matching inputs.

Used by the tests, the exporter's tests and the benchmark harness's self-checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ARCHITECTURES = ("llama", "qwen2", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl")
VOCAB = 1000
IMAGE_TOKEN = 999
VISION_START, VISION_END = 997, 998


def _text_kwargs(**over) -> dict:
    d = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)
    d.update(over)
    return d


def tiny_model(arch: str, seed: int = 0, num_layers: int = 3):
    """A random fp32 model of ``arch`` in eval mode (hidden 64, 4 heads / 2 KV heads: GQA)."""
    import transformers as tf

    torch.manual_seed(seed)
    text = _text_kwargs(num_hidden_layers=num_layers)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**text))
    elif arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**text))
    elif arch in ("llava", "llava_next"):
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=56 if arch == "llava" else 28, patch_size=14)
        if arch == "llava":
            cfg = tf.LlavaConfig(vision_config=vision, text_config=tf.LlamaConfig(**text), image_token_index=IMAGE_TOKEN)
            model = tf.LlavaForConditionalGeneration(cfg)
        else:
            cfg = tf.LlavaNextConfig(vision_config=vision, text_config=tf.LlamaConfig(**text),
                                     image_token_index=IMAGE_TOKEN,
                                     image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]])
            model = tf.LlavaNextForConditionalGeneration(cfg)
    elif arch in ("qwen2_vl", "qwen2_5_vl"):
        rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        text.update(rope_parameters=rope)
        if arch == "qwen2_vl":
            vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                          temporal_patch_size=2)
            cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN,
                                   vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
            model = tf.Qwen2VLForConditionalGeneration(cfg)
        else:
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
                          window_size=56)
            cfg = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN,
                                      vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
            model = tf.Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}")
    model.set_attn_implementation("sdpa") if not hasattr(model.config, "vision_config") else \
        model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    return model.eval()


@dataclass
class TinyInputs:
    kwargs: dict  # model(**kwargs)
    length: int  # prompt tokens per sequence (incl. padding)


def tiny_inputs(arch: str, text_len: int = 40, batch: int = 1, pad: list[int] | None = None, seed: int = 1) -> TinyInputs:
    """Random prompt (with one image for VLMs) for :func:`tiny_model`. ``pad`` left-pads row i by pad[i] tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 900, (batch, text_len), generator=g)
    extra: dict = {}
    if arch == "llava":
        image = torch.full((batch, 16), IMAGE_TOKEN)
        ids = torch.cat([ids[:, :4], image, ids[:, 4:]], dim=1)
        extra["pixel_values"] = torch.randn(batch, 3, 56, 56, generator=g)
    elif arch == "llava_next":
        # One 28x56 image: base 28x28 (4 tokens) + 1x2 grid of 28x28 patches (2x4 tokens + 2 newline tokens).
        n_img = 4 + 2 * 4 + 2
        image = torch.full((batch, n_img), IMAGE_TOKEN)
        ids = torch.cat([ids[:, :4], image, ids[:, 4:]], dim=1)
        extra["pixel_values"] = torch.randn(batch, 3, 3, 28, 28, generator=g)
        extra["image_sizes"] = torch.tensor([[28, 56]] * batch)
    elif arch in ("qwen2_vl", "qwen2_5_vl"):
        grid = torch.tensor([[1, 4, 6]])  # 24 patches -> 6 merged tokens
        n_img = 6
        image = torch.full((batch, n_img), IMAGE_TOKEN)
        ids = torch.cat([ids[:, :4], torch.full((batch, 1), VISION_START), image, torch.full((batch, 1), VISION_END),
                         ids[:, 4:]], dim=1)
        extra["pixel_values"] = torch.randn(batch * 24, 3 * 2 * 14 * 14, generator=g)
        extra["image_grid_thw"] = grid.repeat(batch, 1)
        extra["mm_token_type_ids"] = (ids == IMAGE_TOKEN).long()
    mask = torch.ones_like(ids)
    if pad:
        for i, p in enumerate(pad):
            if p:
                ids[i, :p] = 0
                mask[i, :p] = 0
                if "mm_token_type_ids" in extra:
                    extra["mm_token_type_ids"][i, :p] = 0
    return TinyInputs(kwargs={"input_ids": ids, "attention_mask": mask, **extra}, length=ids.shape[1])


def tiny_tokenizer(vocab_size: int = VOCAB):
    """A word-level fast tokenizer over ``t0 .. t{vocab-1}`` (whitespace split) matching :func:`tiny_model`'s
    special ids: what tools that insist on a tokenizer folder (ORT GenAI's model builder) need, without the hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", bos_token="t1",
                                   eos_token="t2")
