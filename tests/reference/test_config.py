# SPDX-License-Identifier: Apache-2.0
import pytest

import zipvl
from zipvl import ZipVLConfig, ZipVLConfigError


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"tau": 0.0}, "tau must be in (0, 1]"),
        ({"tau": 1.5}, "tau must be in (0, 1]"),
        ({"tau": float("nan")}, "tau must be in (0, 1]"),
        ({"tau": "0.9"}, "tau must be a number"),
        ({"tau": True}, "tau must be a number"),
        ({"n_recent": -1}, "n_recent must be >= 0"),
        ({"n_random": 2.5}, "n_random must be an integer"),
        ({"n_recent": 0, "n_random": 0}, "at least one probe"),
        ({"decode_interval": -3}, "decode_interval must be >= 0"),
        ({"min_length": -1}, "min_length must be >= 0"),
        ({"dense_layers": (0, -2)}, "dense_layers must be non-negative"),
    ],
)
def test_bad_config_raises_one_clear_error(kwargs, needle):
    with pytest.raises(ZipVLConfigError) as err:
        ZipVLConfig(**kwargs)
    assert needle in str(err.value)


def test_config_roundtrip_and_normalisation():
    cfg = ZipVLConfig(tau=1, dense_layers=[3, 1, 3])
    assert cfg.tau == 1.0 and isinstance(cfg.tau, float)
    assert cfg.dense_layers == (1, 3)
    assert ZipVLConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ZipVLConfigError, match="unknown ZipVLConfig fields"):
        ZipVLConfig.from_dict({"tau": 0.9, "ratio": 0.5})


def test_unsupported_model_is_named_with_the_supported_list():
    import transformers as tf

    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(zipvl.UnsupportedModelError) as err:
        zipvl.enable(model)
    msg = str(err.value)
    assert "GPT2LMHeadModel" in msg and "LlavaForConditionalGeneration" in msg and "Qwen2VLForConditionalGeneration" in msg


def test_dense_layers_out_of_range():
    from zipvl.testing import tiny_model

    with pytest.raises(zipvl.ZipVLInputError, match="out of range"):
        zipvl.enable(tiny_model("llama"), ZipVLConfig(dense_layers=(7,)))


def test_kept_budget_is_ceil_without_float_noise():
    from zipvl.reference.policy import check_ratio, kept_budget

    assert 0.07 * 100 > 7  # the float product the rule must not round up
    assert [kept_budget(100, r) for r in (0.07, 0.071, 0.29, 0.001, 1.0)] == [7, 8, 29, 1, 100]
    with pytest.raises(ZipVLConfigError):
        check_ratio(True)
