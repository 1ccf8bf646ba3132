# SPDX-License-Identifier: Apache-2.0
"""The runtime's evicted KV cache: per layer one preallocated capacity buffer pair, per (layer, sequence) a length.

Layout per layer: key/value ``(B, H_kv, C_l, d)`` float32, mask ``(B, C_l)`` bool, lengths ``(B,)``. Entries
``[0, length)`` of a row are valid and in original order (prefill's kept tokens, then generated tokens); the rest is
zero and masked. The decode graph reads the buffers in place (wrapped once as OrtValues), so a step appends one
entry per sequence and never copies the cache; re-selection compacts only the newest window.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from ..reference.selection import select_window
from .errors import EngineLimitError


class LayerCache:
    """One layer's buffers for a batch."""

    def __init__(self, batch: int, kv_heads: int, capacity: int, head_dim: int):
        self.key = np.zeros((batch, kv_heads, capacity, head_dim), dtype=np.float32)
        self.value = np.zeros_like(self.key)
        self.mask = np.zeros((batch, capacity), dtype=bool)
        self.lengths = np.zeros(batch, dtype=np.int64)
        # OrtValues over the same memory (CPU): bound once, the graph sees every in-place update.
        self.ort_key = ort.OrtValue.ortvalue_from_numpy(self.key)
        self.ort_value = ort.OrtValue.ortvalue_from_numpy(self.value)
        self.ort_mask = ort.OrtValue.ortvalue_from_numpy(self.mask)

    @property
    def capacity(self) -> int:
        return self.key.shape[2]

    def fill(self, row: int, key: np.ndarray, value: np.ndarray, count: int) -> None:
        """Prefill: the row's first ``count`` compacted entries, key/value (H_kv, >= count, d)."""
        self.key[row, :, :count] = key[:, :count]
        self.value[row, :, :count] = value[:, :count]
        self.mask[row, :count] = True
        self.lengths[row] = count

    def append(self, key: np.ndarray, value: np.ndarray) -> None:
        """One new entry per row, key/value (B, H_kv, 1, d), written at each row's length."""
        if int(self.lengths.max()) >= self.capacity:
            raise EngineLimitError(f"KV cache capacity {self.capacity} of a layer exhausted; lower max_new_tokens")
        rows = np.arange(self.key.shape[0])
        self.key[rows, :, self.lengths] = key[:, :, 0]
        self.value[rows, :, self.lengths] = value[:, :, 0]
        self.mask[rows, self.lengths] = True
        self.lengths += 1

    def reselect(self, probs: np.ndarray, window: int, tau: float, num_heads: int) -> list[int]:
        """Decode-time re-selection (method, "Decoding") after the step's append.

        probs (B, C + 1): the step's attention of the current token over the buffer slots, then itself (already
        appended, at slot length - 1). The window is each row's newest ``window`` entries (contiguous at the end).
        Returns kept counts per row.
        """
        b, c = self.mask.shape
        rows = []
        for r in range(b):
            end = int(self.lengths[r])  # includes the current token
            older = probs[r, end - window: end - 1]  # window entries before the current token, by slot
            rows.append(np.concatenate([older, probs[r, c: c + 1]]))
        mass = torch.from_numpy(np.stack(rows).astype(np.float32))
        kept = select_window(mass, tau, num_heads).numpy()  # (B, window)
        counts = []
        for r in range(b):
            start = int(self.lengths[r]) - window
            keep = start + np.flatnonzero(kept[r])
            k = len(keep)
            # Survivors move to the front of the window, order preserved; only the window is touched.
            self.key[r, :, start: start + k] = self.key[r][:, keep]
            self.value[r, :, start: start + k] = self.value[r][:, keep]
            self.key[r, :, start + k: start + window] = 0
            self.value[r, :, start + k: start + window] = 0
            self.mask[r, start + k: start + window] = False
            self.lengths[r] = start + k
            counts.append(k)
        return counts

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
