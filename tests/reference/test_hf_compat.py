# SPDX-License-Identifier: Apache-2.0
"""The transformers integration cannot silently fall back to dense: a cache that transformers replaces or ignores,
or an attention function that is not zipvl's, is a ZipVLIntegrationError naming the release -- on every release in
the declared range (scripts/test-compat.sh runs this file on the floor, the locked and the newest one)."""

import inspect

import pytest
import torch
import transformers
from transformers import DynamicCache

import zipvl
from zipvl.errors import ZipVLInputError, ZipVLIntegrationError
from zipvl.reference.hf_compat import CACHE_ARGUMENTS, cache_argument, cache_kwargs, output_cache, pop_cache
from zipvl.testing import tiny_inputs, tiny_model

CONFIG = zipvl.ZipVLConfig(tau=0.9)


def _inner(model):
    return getattr(model.model, "language_model", model.model)


@pytest.mark.parametrize("arch", ["llama", "llava"])
def test_cache_argument_is_the_one_forward_declares(arch):
    model = tiny_model(arch)
    name = cache_argument(model)
    assert name in CACHE_ARGUMENTS
    assert name in inspect.signature(type(model).forward).parameters
    assert list(cache_kwargs(model, "c")) == [name]


def test_pop_cache_takes_either_name_and_rejects_two_caches():
    a, b = DynamicCache(), DynamicCache()
    for name in CACHE_ARGUMENTS:
        kwargs = {name: a, "x": 1}
        assert pop_cache(kwargs) is a and kwargs == {"x": 1}
    assert pop_cache({"cache": a, "past_key_values": a}) is a
    with pytest.raises(ZipVLInputError, match="two different caches"):
        pop_cache({"cache": a, "past_key_values": b})


@torch.no_grad()
def test_generate_evicts_under_the_current_and_the_legacy_cache_name():
    model = tiny_model("llama")
    inputs = tiny_inputs("llama", text_len=120).kwargs
    zipvl.enable(model, CONFIG)
    # past_key_values is the name up to 5.23 and a deprecated alias after: users pass both.
    for name in sorted({cache_argument(model), "past_key_values"}):
        cache = zipvl.ZipVLCache()
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=0, **{name: cache})
        assert output_cache(out) is cache, name
        prompt = inputs["input_ids"].shape[1]
        assert cache.stats and cache.stats[0].phase == "prefill"
        kept = cache.stats[0].layers[0].kept[0]
        assert kept < prompt  # tau 0.9 on random weights evicts something
        assert cache.physical_lengths()[0] == [kept + 3]  # 4 new tokens, the last one never fed


@torch.no_grad()
def test_replaced_cache_raises_naming_the_release():
    # Simulate the transformers 5.24 failure: the model's inner forward runs on a DynamicCache of its own instead
    # of the ZipVLCache zipvl passed.
    model = tiny_model("llama")
    inputs = tiny_inputs("llama", text_len=60).kwargs
    zipvl.enable(model, CONFIG)

    def substitute(module, args, kwargs):
        pop_cache(kwargs)
        kwargs[cache_argument(module)] = DynamicCache()
        return args, kwargs

    _inner(model).register_forward_pre_hook(substitute, with_kwargs=True)
    with pytest.raises(ZipVLIntegrationError, match=rf"transformers {transformers.__version__}.*replaced or ignored"):
        model(**inputs, use_cache=True)


@torch.no_grad()
def test_attention_not_called_raises_instead_of_running_dense():
    model = tiny_model("llava")
    inputs = tiny_inputs("llava", text_len=60).kwargs
    zipvl.enable(model, CONFIG)
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})  # something re-routes attention
    with pytest.raises(ZipVLIntegrationError, match=r"zipvl attention in 0 of \d+ text layers"):
        model(**inputs, use_cache=True)
    zipvl.disable(model)
    model(**inputs, use_cache=True)  # dense again, no error: the guard is zipvl's, not a broken model


@torch.no_grad()
def test_returned_cache_must_be_zipvls():
    model = tiny_model("llama")
    inputs = tiny_inputs("llama", text_len=40).kwargs
    zipvl.enable(model, CONFIG)

    def swap_output(module, args, kwargs, output):
        for name in CACHE_ARGUMENTS:
            if name in output:
                output[name] = DynamicCache()
        return output

    model.register_forward_hook(swap_output, with_kwargs=True, prepend=True)
    with pytest.raises(ZipVLIntegrationError, match="replaced zipvl's cache with a DynamicCache"):
        model(**inputs, use_cache=True)


def test_retained_fraction_reads_original_slots():
    cache = zipvl.ZipVLCache()
    n, keep_sets = 10, [{0, 3, 4, 9}, {1, 2, 3}]
    for idx, keep in enumerate(keep_sets):
        k = torch.randn(1, 2, n, 4)
        cache.update(k, k.clone(), idx)
        cache.layers[idx].keep(torch.tensor([[i in keep for i in range(n)]]))
    cache.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), 0)  # a decoded token: not a prompt position
    visual = torch.tensor([i in (2, 3, 4, 5) for i in range(n)])
    expected = [len(keep & {2, 3, 4, 5}) / 4 for keep in keep_sets]
    assert cache.retained_fraction(visual) == expected
    assert cache.retained_fraction(torch.tensor([2, 3, 4, 5])) == expected
    assert cache.retained_fraction(~visual) == [len(keep - {2, 3, 4, 5}) / 6 for keep in keep_sets]
