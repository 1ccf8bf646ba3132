# SPDX-License-Identifier: Apache-2.0
"""ZipVLCache: a transformers Cache whose layers are physically compacted to their kept tokens.

Each layer keeps, next to its K/V ``(B, H_kv, L_phys, d)``, the original slot of every physical entry (index into
the logical sequence, i.e. into the 2D attention mask) and a validity flag (padding and right-padding after
compaction are invalid). With one kept set per KV head (``head_reduce="kv"``) the layer compacts to the union of
the heads' sets and ``heads`` (B, H_kv, L_phys) says which KV head holds which entry: attention masks the rest, as
a per-head (paged) layout would not store them; ``nbytes`` stays the physical size, ``held_bytes`` counts what the
heads hold. ``get_seq_length`` is the *logical* length, so transformers keeps computing positions as
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
        self.heads: torch.Tensor | None = None  # (B, H_kv, L_phys) bool when KV heads keep different sets, else None
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
        if self.heads is not None:  # every KV head holds the new tokens
            self.heads = torch.cat([self.heads, self.heads.new_ones(b, self.heads.shape[1], q)], dim=2)
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

    def held_bytes(self) -> int:
        """K/V bytes of the entries the KV heads hold (= :meth:`nbytes` minus padding and per-head masked entries)."""
        if not self.is_initialized:
            return 0
        per_entry = 2 * self.keys.shape[-1] * self.keys.element_size()  # one head's K + V of one token
        held = self.valid[:, None] if self.heads is None else self.heads & self.valid[:, None]
        return per_entry * int(held.expand(-1, self.keys.shape[1], -1).sum())

    def visible_heads(self, num_heads: int) -> torch.Tensor | None:
        """(B, num_heads, 1, L_phys) bool: the entries each query head's KV head holds; None when all hold all."""
        if self.heads is None:
            return None
        return self.heads.repeat_interleave(num_heads // self.heads.shape[1], dim=1)[:, :, None, :]

    def keep(self, keep: torch.Tensor) -> None:
        """Evict every entry where ``keep`` (B, L_phys) is False; survivors keep their order, slots and phase.
        ``keep`` (B, H_kv, L_phys): each KV head's own set; the layer keeps their union and masks per head."""
        heads = self.heads
        if keep.dim() == 3:
            heads = keep if heads is None else heads & keep
            keep = keep.any(dim=1)
        keep = keep & self.valid
        tensors = [self.keys, self.values, self.slots] + ([] if heads is None else [heads[..., None]])
        out, self.valid = compact(tensors, keep, -1)
        self.keys, self.values, self.slots = out[:3]
        self.heads = None if heads is None else out[3][..., 0] & self.valid[:, None]

    def reset(self) -> None:
        super().reset()
        self.slots = self.valid = self.heads = None
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
            if self.heads is not None:
                self.heads = fn(self.heads)

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
        sequence ``row`` still holds, read from the entries' original slots (with per-KV-head sets: averaged over
        the KV heads)."""
        if positions.dtype != torch.bool:
            mask = torch.zeros(int(positions.max()) + 1 if positions.numel() else 0, dtype=torch.bool)
            mask[positions] = True
            positions = mask
        positions = positions.cpu()
        want = int(positions.sum())
        out = []
        for layer in self.layers:
            valid = layer.valid[row]
            slots = layer.slots[row][valid].cpu()
            share = (torch.ones(slots.shape[0]) if layer.heads is None
                     else layer.heads[row][:, valid].float().mean(dim=0).cpu())  # fraction of KV heads holding it
            inside = slots < positions.shape[0]
            held = share[inside][positions[slots[inside]]]
            out.append(float(held.sum()) / want if want else 1.0)
        return out

    def nbytes(self) -> int:
        """Bytes held by K/V tensors now (after eviction)."""
        return sum(layer.nbytes() for layer in self.layers)

    def held_bytes(self) -> int:
        """K/V bytes of the entries the layers' KV heads hold (what a per-head layout would store)."""
        return sum(layer.held_bytes() for layer in self.layers)
