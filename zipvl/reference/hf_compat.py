# SPDX-License-Identifier: Apache-2.0
"""The one place that knows how each transformers release names the KV cache.

transformers <= 5.23 takes and returns the cache as ``past_key_values``; 5.24 renamed it ``cache`` (the old name is
still accepted with a warning, but when both are set the new one wins and the old one is dropped). Every zipvl
module that hands a cache to a model or reads one back goes through these helpers, so a rename is fixed here once.
"""

from __future__ import annotations

import inspect

import transformers

from ..errors import UnsupportedModelError, ZipVLInputError

TRANSFORMERS_VERSION = transformers.__version__
CACHE_ARGUMENTS = ("cache", "past_key_values")  # newest name first


def cache_argument(model) -> str:
    """The keyword ``model.forward`` takes the KV cache under, read from its signature."""
    params = inspect.signature(type(model).forward).parameters
    for name in CACHE_ARGUMENTS:
        if name in params:
            return name
    raise UnsupportedModelError(
        f"{type(model).__name__}.forward (transformers {TRANSFORMERS_VERSION}) takes none of {CACHE_ARGUMENTS}"
    )


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` for ``model(**inputs, **cache_kwargs(model, cache))`` on any supported release."""
    return {cache_argument(model): cache}


def pop_cache(kwargs: dict):
    """Remove and return the cache given under any of its names; two different caches at once is an error."""
    given = {name: kwargs.pop(name) for name in CACHE_ARGUMENTS if kwargs.get(name) is not None}
    for name in CACHE_ARGUMENTS:
        kwargs.pop(name, None)
    caches = {id(c): c for c in given.values()}
    if len(caches) > 1:
        listing = ", ".join(f"{k}={type(v).__name__}" for k, v in given.items())
        raise ZipVLInputError(f"two different caches were passed ({listing}); pass one")
    return next(iter(caches.values()), None)


def output_cache(output):
    """The cache a forward or ``generate`` returned (``.cache`` on 5.24+, ``.past_key_values`` before)."""
    for name in CACHE_ARGUMENTS:
        cache = getattr(output, name, None) if not isinstance(output, dict) else output.get(name)
        if cache is not None:
            return cache
    return None


def image_token_id(model) -> int | None:
    """The image placeholder token of a VLM config (``image_token_index`` or ``image_token_id`` by architecture)."""
    cfg = model.config
    for name in ("image_token_index", "image_token_id"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    return None
