# SPDX-License-Identifier: Apache-2.0
"""ZipVLCache: a transformers Cache whose layers are physically compacted to their kept tokens.

Each layer keeps, next to its K/V ``(B, H_kv, L_phys, d)``, the original slot of every physical entry (index into
the logical sequence, i.e. into the 2D attention mask) and a validity flag (padding and right-padding after
compaction are invalid). ``get_seq_length`` is the *logical* length, so transformers keeps computing positions as
if nothing was evicted: retained keys carry their original rotary phase, new tokens get their original positions.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..errors import ZipVLInputError
from .sparse import compact


class ZipVLLayer(DynamicLayer):
    """One layer's evicting cache: K/V + slots + validity, logical length separate from physical length."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.slots: torch.Tensor | None = None  # (B, L_phys) long, -1 for padding entries
        self.valid: torch.Tensor | None = None  # (B, L_phys) bool
        self.logical = 0  # tokens ever appended (positions continue from here)
        self.pending = 0  # tokens appended since prefill or the last decode-time re-selection
        self.prefilled = False
        self.max_length: int | None = None  # optional capacity (tokens per sequence); exceeding it is an error

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        b = key_states.shape[0]
        self.slots = torch.empty(b, 0, dtype=torch.long, device=self.device)
        self.valid = torch.empty(b, 0, dtype=torch.bool, device=self.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, _, q, _ = key_states.shape
        if self.max_length is not None and self.physical_length + q > self.max_length:
            raise ZipVLInputError(
                f"KV cache overflow: layer holds {self.physical_length} entries, adding {q} exceeds its capacity "
                f"of {self.max_length}"
            )
        new_slots = torch.arange(self.logical, self.logical + q, device=self.device).expand(b, q)
        self.slots = torch.cat([self.slots, new_slots], dim=1)
        self.valid = torch.cat([self.valid, torch.ones(b, q, dtype=torch.bool, device=self.device)], dim=1)
        self.logical += q
        if self.prefilled:
            self.pending += q
        return super().update(key_states, value_states)

    @property
    def physical_length(self) -> int:
        return 0 if not self.is_initialized or self.keys.numel() == 0 else self.keys.shape[-2]

    def get_seq_length(self) -> int:
        return self.logical

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.physical_length + query_length, 0

    def lengths(self) -> list[int]:
        """Valid physical entries per sequence."""
        return self.valid.sum(dim=-1).tolist() if self.valid is not None else []

    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def keep(self, keep: torch.Tensor) -> None:
        """Evict every entry where ``keep`` (B, L_phys) is False; survivors keep their order, slots and phase."""
        keep = keep & self.valid
        (self.keys, self.values, self.slots), self.valid = compact([self.keys, self.values, self.slots], keep, -1)

    def reset(self) -> None:
        super().reset()
        self.slots = self.valid = None
        self.logical = self.pending = 0
        self.prefilled = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ZipVLInputError("ZipVLLayer.crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.logical -= abs(tokens_to_remove)
        self.pending = max(0, self.pending - abs(tokens_to_remove))
        self.keep(self.slots < self.logical)

    def _index_batch(self, fn) -> None:
        if self.is_initialized:
            self.keys, self.values, self.slots, self.valid = (fn(t) for t in (self.keys, self.values, self.slots,
                                                                              self.valid))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._index_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._index_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._index_batch(lambda t: t[indices])


class ZipVLCache(DynamicCache):
    """A DynamicCache made of :class:`ZipVLLayer` s (created lazily, one per attention layer).

    ``stats`` lists the :class:`~zipvl.reference.stats.ForwardStats` of the forwards that used this cache
    (prefill first, then decode steps that re-selected).
    """

    def __init__(self, max_length: int | None = None):
        super(DynamicCache, self).__init__(layer_class_to_replicate=self._make_layer)
        self.max_length = max_length
        self.stats: list = []

    def _make_layer(self) -> ZipVLLayer:
        layer = ZipVLLayer()
        layer.max_length = self.max_length
        return layer

    def get_query_offset(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].physical_length

    def physical_lengths(self) -> list[list[int]]:
        """Valid entries per layer per sequence: differs by layer after eviction."""
        return [layer.lengths() for layer in self.layers]

    def retained_fraction(self, positions: torch.Tensor, row: int = 0) -> list[float]:
        """Per layer: the fraction of the original ``positions`` (a bool mask over the prompt, or indices) that
        sequence ``row`` still holds, read from the entries' original slots."""
        if positions.dtype != torch.bool:
            mask = torch.zeros(int(positions.max()) + 1 if positions.numel() else 0, dtype=torch.bool)
            mask[positions] = True
            positions = mask
        positions = positions.cpu()
        want = int(positions.sum())
        out = []
        for layer in self.layers:
            slots = layer.slots[row][layer.valid[row]].cpu()
            slots = slots[slots < positions.shape[0]]
            out.append(float(positions[slots].sum()) / want if want else 1.0)
        return out

    def nbytes(self) -> int:
        """Bytes held by K/V tensors now (after eviction)."""
        return sum(layer.nbytes() for layer in self.layers)
