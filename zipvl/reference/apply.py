# SPDX-License-Identifier: Apache-2.0
"""zipvl.enable / zipvl.disable: switch a transformers model to ZipVL attention without forking modeling files.

``enable`` registers the "zipvl" attention (and its mask) in transformers' AttentionInterface, routes the text
tower to it (vision towers stay on SDPA), wires each text attention module to a shared :class:`ZipVLState`, and
installs a forward pre-hook that swaps an empty default cache for a :class:`ZipVLCache`.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..config import ZipVLConfig
from ..errors import UnsupportedModelError, ZipVLInputError, ZipVLIntegrationError
from .attention import ATTENTION_NAME, zipvl_attention
from .cache import ZipVLCache
from .hf_compat import TRANSFORMERS_VERSION, cache_argument, image_token_id, output_cache, pop_cache
from .policy import NullTimer, SectionTimer, TokenPolicy, ZipVLPolicy
from .stats import ForwardStats, LayerStats

# Architecture -> whether it is a vision-language model (text tower routed separately).
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": False,
    "Qwen2ForCausalLM": False,
    "LlavaForConditionalGeneration": True,
    "LlavaNextForConditionalGeneration": True,
    "Qwen2VLForConditionalGeneration": True,
    "Qwen2_5_VLForConditionalGeneration": True,
}

AttentionInterface.register(ATTENTION_NAME, zipvl_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


class ZipVLState:
    """Shared by every wired attention module of one model: the policy, the current cache, and the statistics.

    ``last_stats`` is the :class:`ForwardStats` of the latest forward, ``prefill_stats`` of the latest prefill;
    ``extras`` holds per-token tensors a policy may need for the next forward (e.g. ``image_mask``).
    """

    def __init__(self, model, policy: TokenPolicy, text_layers: list):
        self.model = model
        self.policy = policy
        self.attention_modules = [layer.self_attn for layer in text_layers]
        self.num_layers = len(text_layers)
        self.cache: Cache | None = None
        self.cache_argument = cache_argument(model)  # "cache" (transformers >= 5.24) or "past_key_values"
        self.attention_calls = 0  # zipvl attention calls in the current forward (one per text layer expected)
        self.extras: dict[str, torch.Tensor] = {}
        self.timer: SectionTimer | NullTimer = NullTimer()  # set a SectionTimer to get a time breakdown
        self.last_stats: ForwardStats | None = None
        self.prefill_stats: ForwardStats | None = None
        self._current: ForwardStats | None = None
        self._hooks: list = []
        self._saved_attn: dict = {}

    @property
    def config(self) -> ZipVLConfig:
        return self.policy.config

    def mark_images(self, input_ids: torch.Tensor) -> None:
        """``extras["image_mask"]`` for the next forward: which of ``input_ids`` (B, n) are image tokens (all False
        for a text-only model). The question-span probes and ``protect_text`` read it."""
        image = image_token_id(self.model)
        self.extras["image_mask"] = input_ids == (-1 if image is None else image)

    def record(self, stats: LayerStats) -> None:
        if self._current is not None:
            self._current.layers.append(stats)

    # context-manager sugar: `with zipvl.enable(model) as state: ...`
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        disable(self.model)
        return False


def _text_layers(model) -> list:
    inner = getattr(model, "model", None)
    text = getattr(inner, "language_model", inner)
    layers = getattr(text, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise UnsupportedModelError(f"could not find the decoder layers of {type(model).__name__}")
    return list(layers)


def _check_supported(model) -> bool:
    name = type(model).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"zipvl does not support {name}; supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return SUPPORTED_ARCHITECTURES[name]


def _pre_forward(state: ZipVLState):
    def hook(module, args, kwargs):
        cache = pop_cache(kwargs)
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(module.config.get_text_config(decoder=True), "use_cache", True)
        if cache is None and use_cache:
            cache = ZipVLCache()
        elif isinstance(cache, DynamicCache) and not isinstance(cache, ZipVLCache):
            if cache.get_seq_length() > 0:
                raise ZipVLInputError(
                    f"ZipVL needs to run the prefill itself: pass {state.cache_argument}=zipvl.ZipVLCache() or an "
                    "empty cache"
                )
            cache = ZipVLCache()
        elif cache is not None and not isinstance(cache, ZipVLCache):
            raise ZipVLInputError(f"ZipVL cannot evict into a {type(cache).__name__}; use zipvl.ZipVLCache")
        if cache is not None:
            kwargs[state.cache_argument] = cache  # under the name this transformers release reads
        state.cache = cache
        state.attention_calls = 0
        prefill = not isinstance(cache, ZipVLCache) or not cache.layers or not cache.layers[0].prefilled
        state._current = ForwardStats(phase="prefill" if prefill else "decode")
        return args, kwargs

    return hook


def _check_forward(state: ZipVLState, output) -> None:
    """A forward that bypassed ZipVL is an error, never a silent dense run."""
    if state.attention_calls != state.num_layers:
        raise ZipVLIntegrationError(
            f"transformers {TRANSFORMERS_VERSION} called the zipvl attention in {state.attention_calls} of "
            f"{state.num_layers} text layers (attn_implementation is "
            f"{state.model.config.get_text_config(decoder=True)._attn_implementation!r}): ZipVL did not run"
        )
    returned = output_cache(output)
    if returned is not None and returned is not state.cache:
        raise ZipVLIntegrationError(
            f"transformers {TRANSFORMERS_VERSION} replaced zipvl's cache with a {type(returned).__name__} "
            f"(zipvl passed it as `{state.cache_argument}=`): nothing was evicted"
        )


def _post_forward(state: ZipVLState):
    def hook(module, args, kwargs, output):
        stats, state._current = state._current, None
        try:
            _check_forward(state, output)
        finally:
            cache, state.cache = state.cache, None
        state.last_stats = stats
        if stats is not None and stats.layers:
            if stats.phase == "prefill":
                state.prefill_stats = stats
            if isinstance(cache, ZipVLCache):
                cache.stats.append(stats)
        return output

    return hook


def enable(model, config: ZipVLConfig | None = None, policy: TokenPolicy | None = None) -> ZipVLState:
    """Run ZipVL in ``model`` from now on (``model(...)`` and ``model.generate(...)``).

    Parameters
    ----------
    model : one of :data:`SUPPORTED_ARCHITECTURES` (transformers 5.x)
    config : ZipVLConfig, default ``ZipVLConfig()``
    policy : TokenPolicy, default ``ZipVLPolicy(config)``; baselines plug in here

    Returns the :class:`ZipVLState` (also ``model.zipvl``) holding ``last_stats`` / ``prefill_stats``.
    """
    is_vlm = _check_supported(model)
    if getattr(model, "zipvl", None) is not None:
        disable(model)
    if policy is None:
        policy = ZipVLPolicy(config or ZipVLConfig())
    elif config is not None and config is not policy.config:
        raise ZipVLInputError("pass either a config or a policy carrying its own config, not both")
    layers = _text_layers(model)
    bad = [i for i in policy.config.dense_layers if i >= len(layers)]
    if bad:
        raise ZipVLInputError(f"dense_layers {bad} out of range: the model has {len(layers)} layers")
    policy.config.layer_floor(0, len(layers))  # a per-layer min_ratio must match the depth: fail here, not mid-forward
    state = ZipVLState(model, policy, layers)
    text_cfg = model.config.get_text_config(decoder=True)
    state._saved_attn = {"text": text_cfg._attn_implementation,
                         "vision": getattr(getattr(model.config, "vision_config", None), "_attn_implementation", None)}
    if is_vlm:
        model.set_attn_implementation({"text_config": ATTENTION_NAME, "vision_config": "sdpa"})
    else:
        model.set_attn_implementation(ATTENTION_NAME)
    for module in state.attention_modules:
        module._zipvl_state = state
    state._hooks = [
        model.register_forward_pre_hook(_pre_forward(state), with_kwargs=True),
        model.register_forward_hook(_post_forward(state), with_kwargs=True),
    ]
    model.zipvl = state
    return state


def disable(model) -> None:
    """Undo :func:`enable`: restore the previous attention implementation, remove hooks and wiring."""
    state = getattr(model, "zipvl", None)
    if state is None:
        return
    for h in state._hooks:
        h.remove()
    for module in state.attention_modules:
        module.__dict__.pop("_zipvl_state", None)
    text, vision = state._saved_attn["text"] or "sdpa", state._saved_attn["vision"]
    if SUPPORTED_ARCHITECTURES.get(type(model).__name__):
        model.set_attn_implementation({"text_config": text, "vision_config": vision or "sdpa"})
    else:
        model.set_attn_implementation(text)
    model.zipvl = None
