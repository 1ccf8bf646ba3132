# SPDX-License-Identifier: Apache-2.0
"""The runtime's evicted KV cache: per layer one preallocated capacity buffer pair, per (layer, sequence) a length.

Layout per layer: key/value ``(B, H_kv, C_l, d)`` float32, lengths ``(B,)`` int32, and the original token position of
every entry ``(B, C_l)`` int64 (-1 where unknown or free: bookkeeping, never read by a graph). Entries ``[0, length)``
of a row are valid and in original order (prefill's kept tokens, then generated tokens); the rest is zero and never read.
The decode graph takes the buffers as ``past.{i}.key/value`` and ``past.{i}.length`` and writes the step's token at
slot length as ``present.{i}.key/value``, bound to the same buffers (wrapped once as OrtValues): a step writes one
entry per sequence in place and nothing copies the cache; re-selection compacts only the newest window.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from ..reference.selection import select_window, token_attention_mass
from .errors import EngineLimitError


class LayerCache:
    """One layer's buffers for a batch."""

    def __init__(self, batch: int, kv_heads: int, capacity: int, head_dim: int):
        self.key = np.zeros((batch, kv_heads, capacity, head_dim), dtype=np.float32)
        self.value = np.zeros_like(self.key)
        self.lengths = np.zeros(batch, dtype=np.int32)
        self.positions = np.full((batch, capacity), -1, dtype=np.int64)
        # OrtValues over the same memory (CPU): bound once, the graph sees and makes every in-place update.
        self.ort_key = ort.OrtValue.ortvalue_from_numpy(self.key)
        self.ort_value = ort.OrtValue.ortvalue_from_numpy(self.value)
        self.ort_lengths = ort.OrtValue.ortvalue_from_numpy(self.lengths)

    @property
    def capacity(self) -> int:
        return self.key.shape[2]

    def fill(self, row: int, key: np.ndarray, value: np.ndarray, count: int, positions: np.ndarray | None = None) -> None:
        """Prefill: the row's first ``count`` compacted entries, key/value (H_kv, >= count, d), and their original
        positions (the kept indices, ascending) when given."""
        self.key[row, :, :count] = key[:, :count]
        self.value[row, :, :count] = value[:, :count]
        self.lengths[row] = count
        if positions is not None:
            self.positions[row, :count] = positions[:count]

    def check_room(self) -> None:
        """Raise before a step that would write past the buffer's end."""
        if int(self.lengths.max()) >= self.capacity:
            raise EngineLimitError(f"KV cache capacity {self.capacity} of a layer exhausted; lower max_new_tokens")

    def advance(self, positions: np.ndarray | None = None) -> None:
        """After a decode step: the graph wrote each row's new entry at slot length; count it (and record its
        original position (B,) when given)."""
        if positions is not None:
            self.positions[np.arange(len(self.lengths)), self.lengths] = positions
        self.lengths += 1

    def append(self, key: np.ndarray, value: np.ndarray) -> None:
        """One new entry per row, key/value (B, H_kv, 1, d), written at each row's length (for callers that hold
        the token's K/V outside the decode graph)."""
        self.check_room()
        rows = np.arange(self.key.shape[0])
        self.key[rows, :, self.lengths] = key[:, :, 0]
        self.value[rows, :, self.lengths] = value[:, :, 0]
        self.advance()

    def attention(self, query: np.ndarray, scaling: float) -> torch.Tensor:
        """The current token's attention over each row's valid entries, summed over heads: (B, C) float32.

        query (B, H, d) after RoPE (the decode graph's ``query.{i}``). The reference's own function
        (:func:`zipvl.reference.selection.token_attention_mass`): what a fused attention does not return.
        """
        valid = torch.arange(self.capacity)[None, :] < torch.from_numpy(self.lengths).long()[:, None]  # (B, C)
        return token_attention_mass(torch.from_numpy(query), torch.from_numpy(self.key), valid, scaling)

    def reselect(self, query: np.ndarray, window: int, tau: float, scaling: float,
                 rows: list[int] | None = None) -> list[int]:
        """Decode-time re-selection (method, "Decoding") after the step's token was written.

        query (B, H, d): the step's token. Its attention over the cache is recomputed here (O(H * C) per layer,
        once per ``decode_interval`` steps); the window is each row's newest ``window`` entries (contiguous at the
        end, the current token last). ``rows``: only these rows re-select (in-flight batching: each request keeps
        its own interval); default all. Returns kept counts per selected row.
        """
        rows = list(range(self.key.shape[0])) if rows is None else list(rows)
        probs = self.attention(query, scaling)
        ends = self.lengths.astype(np.int64)
        mass = torch.stack([probs[r, int(ends[r]) - window: int(ends[r])] for r in rows])  # (len(rows), window)
        kept = select_window(mass, tau, query.shape[1]).numpy()  # (len(rows), window)
        counts = []
        for j, r in enumerate(rows):
            start = int(ends[r]) - window
            keep = start + np.flatnonzero(kept[j])
            k = len(keep)
            # Survivors move to the front of the window, order preserved; only the window is touched.
            self.key[r, :, start: start + k] = self.key[r][:, keep]
            self.value[r, :, start: start + k] = self.value[r][:, keep]
            self.positions[r, start: start + k] = self.positions[r, keep]
            self.key[r, :, start + k: start + window] = 0
            self.value[r, :, start + k: start + window] = 0
            self.positions[r, start + k: start + window] = -1
            self.lengths[r] = start + k
            counts.append(k)
        return counts

    def retained(self, row: int) -> np.ndarray:
        """Original positions of the entries ``row`` holds, in cache order."""
        return self.positions[row, : int(self.lengths[row])].copy()

    def nbytes_valid(self) -> int:
        """Bytes of the valid K/V entries (what the cache holds after eviction)."""
        return int(self.lengths.sum()) * 2 * self.key.shape[1] * self.key.shape[3] * self.key.itemsize


class KVCache:
    """All layers of a decoding batch; capacities sized from the prefill's kept counts plus the tokens to come."""

    def __init__(self, counts: list[list[int]], kv_heads: int, head_dim: int, new_tokens: int, limit: int):
        self.layers = []
        for layer_counts in counts:  # counts[l][b]
            capacity = max(layer_counts) + max(1, new_tokens)
            if capacity > limit:
                raise EngineLimitError(f"a layer needs {capacity} KV entries per sequence, beyond the engine's KV "
                                       f"capacity of {limit}; shorten the prompt or max_new_tokens")
            self.layers.append(LayerCache(len(layer_counts), kv_heads, capacity, head_dim))

    def lengths(self) -> list[list[int]]:
        """Valid entries per layer per sequence (differ by layer after eviction)."""
        return [layer.lengths.tolist() for layer in self.layers]

    def nbytes(self) -> int:
        return sum(layer.nbytes_valid() for layer in self.layers)
