# SPDX-License-Identifier: Apache-2.0
"""A real processor for the tiny LLaVA (zipvl.testing.tiny_model): word-level tokenizer where "w<i>" is id i,
ids 0-2 pad / bos / eos, 999 the image token; CLIP image processor at 56 px = 16 image tokens. Lets the serving
tests drive the OpenAI endpoint (text + images) on a tiny engine."""

from __future__ import annotations


def make_processor():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    special = {0: "<pad>", 1: "<s>", 2: "</s>", 997: "<vs>", 998: "<ve>", 999: "<image>"}
    vocab = {special.get(i, f"w{i}"): i for i in range(1000)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<vs>", "<ve>"]})
    image = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>")
