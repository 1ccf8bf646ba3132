# SPDX-License-Identifier: Apache-2.0
"""The runtime's evicted KV cache: per layer one preallocated capacity buffer pair, per (layer, sequence) a length
(per (layer, sequence, KV head) with one kept set per KV head).

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
    """One layer's buffers for a batch. ``sets``: 1 (one kept set per layer: a length per row) or H_kv (one set per
    KV head, ``head_reduce="kv"``: a length per row and KV head; the graphs see the same memory as
    (B * H_kv, 1, C, d) buffers and (B * H_kv,) lengths, so each KV head attends over and appends at its own length).
    ``lengths`` / ``positions`` are (B,) / (B, C) with one set, (B, H_kv) / (B, H_kv, C) with one per KV head."""

    def __init__(self, batch: int, kv_heads: int, capacity: int, head_dim: int, sets: int = 1):
        if sets not in (1, kv_heads):
            raise ValueError(f"a layer holds 1 or {kv_heads} (one per KV head) kept sets, not {sets}")
        self.sets = sets
        self.key = np.zeros((batch, kv_heads, capacity, head_dim), dtype=np.float32)
        self.value = np.zeros_like(self.key)
        per_set = (batch,) if sets == 1 else (batch, sets)
        self.lengths = np.zeros(per_set, dtype=np.int32)
        self.positions = np.full((*per_set, capacity), -1, dtype=np.int64)
        # (B, sets, ...) views of the same arrays, so every method below serves both layouts
        self._lengths = self.lengths.reshape(batch, sets)
        self._positions = self.positions.reshape(batch, sets, capacity)
        # OrtValues over the same memory (CPU): bound once, the graph sees and makes every in-place update.
        rows = (batch * sets, kv_heads // sets, capacity, head_dim)
        self.ort_key = ort.OrtValue.ortvalue_from_numpy(self.key.reshape(rows))
        self.ort_value = ort.OrtValue.ortvalue_from_numpy(self.value.reshape(rows))
        self.ort_lengths = ort.OrtValue.ortvalue_from_numpy(self.lengths.reshape(-1))

    @property
    def capacity(self) -> int:
        return self.key.shape[2]

    def _heads(self, s: int) -> slice:
        """The KV heads of set ``s``."""
        per = self.key.shape[1] // self.sets
        return slice(s * per, (s + 1) * per)

    def fill(self, row: int, key: np.ndarray, value: np.ndarray, count, positions=None) -> None:
        """Prefill: the row's compacted entries, key/value (H_kv, >= count, d): ``count`` entries (an int, or one per
        KV head), and their original positions (ascending; one array, or one per KV head) when given."""
        counts = np.broadcast_to(np.asarray(count, dtype=np.int64).reshape(-1), (self.sets,))
        for s in range(self.sets):
            c, heads = int(counts[s]), self._heads(s)
            self.key[row, heads, :c] = key[heads, :c]
            self.value[row, heads, :c] = value[heads, :c]
            self._lengths[row, s] = c
            if positions is not None:
                self._positions[row, s, :c] = (positions if self.sets == 1 else positions[s])[:c]

    def copy_row(self, row: int, src: "LayerCache", src_row: int) -> None:
        """Row ``src_row`` of ``src`` (same layout, capacity <= ours in use) into ``row``."""
        for s in range(self.sets):
            n, heads = int(src._lengths[src_row, s]), self._heads(s)
            self.key[row, heads, :n] = src.key[src_row, heads, :n]
            self.value[row, heads, :n] = src.value[src_row, heads, :n]
            self._positions[row, s, :n] = src._positions[src_row, s, :n]
            self._lengths[row, s] = n

    def row_length(self, row: int) -> int:
        """The most entries any KV set of ``row`` holds (what its buffer slots must fit)."""
        return int(self._lengths[row].max())

    def held(self) -> list:
        """Entries per row per KV head (one set: the row's length; one per KV head: their mean)."""
        return self.lengths.tolist() if self.sets == 1 else self._lengths.mean(axis=1).tolist()

    def check_room(self) -> None:
        """Raise before a step that would write past the buffer's end."""
        if int(self.lengths.max()) >= self.capacity:
            raise EngineLimitError(f"KV cache capacity {self.capacity} of a layer exhausted; lower max_new_tokens")

    def advance(self, positions: np.ndarray | None = None) -> None:
        """After a decode step: the graph wrote each row's new entry at slot length (of every KV set); count it (and
        record its original position (B,) when given)."""
        if positions is not None:
            b = np.arange(self._lengths.shape[0])[:, None]
            self._positions[b, np.arange(self.sets)[None, :], self._lengths] = np.asarray(positions)[:, None]
        self.lengths += 1

    def append(self, key: np.ndarray, value: np.ndarray) -> None:
        """One new entry per row, key/value (B, H_kv, 1, d), written at each row's (KV set's) length (for callers
        that hold the token's K/V outside the decode graph)."""
        self.check_room()
        b, h_kv = self.key.shape[:2]
        slot = np.repeat(self._lengths, h_kv // self.sets, axis=1)  # (B, H_kv): each head's set's length
        rows, heads = np.arange(b)[:, None], np.arange(h_kv)[None, :]
        self.key[rows, heads, slot] = key[:, :, 0]
        self.value[rows, heads, slot] = value[:, :, 0]
        self.advance()

    def attention(self, query: np.ndarray, scaling: float) -> torch.Tensor:
        """The current token's attention over each row's valid entries, summed over heads: (B, C) float32, or
        (B, H_kv, C) with one set per KV head.

        query (B, H, d) after RoPE (the decode graph's ``query.{i}``). The reference's own function
        (:func:`zipvl.reference.selection.token_attention_mass`): what a fused attention does not return. With one
        set per KV head, each head's mass is its own (slot l holds a different token in each head).
        """
        slots = torch.arange(self.capacity)[None, None, :]
        valid = slots < torch.from_numpy(self._lengths).long()[:, :, None]  # (B, sets, C)
        q, k = torch.from_numpy(query), torch.from_numpy(self.key)
        if self.sets == 1:
            return token_attention_mass(q, k, valid[:, 0], scaling)
        return token_attention_mass(q, k, valid, scaling, per_kv_head=True)

    def reselect(self, query: np.ndarray, window: int, tau: float, scaling: float,
                 rows: list[int] | None = None) -> list[int]:
        """Decode-time re-selection (method, "Decoding") after the step's token was written.

        query (B, H, d): the step's token. Its attention over the cache is recomputed here (O(H * C) per layer,
        once per ``decode_interval`` steps); the window is each row's newest ``window`` entries (contiguous at the
        end, the current token last; the same tokens in every KV set), its mass the sum over heads. ``rows``: only
        these rows re-select (in-flight batching: each request keeps its own interval); default all. Returns kept
        counts per selected row.
        """
        rows = list(range(self.key.shape[0])) if rows is None else list(rows)
        probs = self.attention(query, scaling).reshape(self._lengths.shape[0], self.sets, -1)  # (B, sets, C)
        ends = self._lengths.astype(np.int64)
        mass = torch.stack([sum(probs[r, s, int(ends[r, s]) - window: int(ends[r, s])] for s in range(self.sets))
                            for r in rows])  # (len(rows), window)
        kept = select_window(mass, tau, query.shape[1]).numpy()  # (len(rows), window)
        counts = []
        for j, r in enumerate(rows):
            for s in range(self.sets):
                start, heads = int(ends[r, s]) - window, self._heads(s)
                keep = start + np.flatnonzero(kept[j])
                k = len(keep)
                # Survivors move to the front of the window, order preserved; only the window is touched.
                self.key[r, heads, start: start + k] = self.key[r, heads][:, keep]
                self.value[r, heads, start: start + k] = self.value[r, heads][:, keep]
                self._positions[r, s, start: start + k] = self._positions[r, s, keep]
                self.key[r, heads, start + k: start + window] = 0
                self.value[r, heads, start + k: start + window] = 0
                self._positions[r, s, start + k: start + window] = -1
                self._lengths[r, s] = start + k
            counts.append(int(kept[j].sum()))
        return counts

    def retained(self, row: int):
        """Original positions of the entries ``row`` holds, in cache order (one array per KV head with one set per
        KV head)."""
        held = [self._positions[row, s, : int(self._lengths[row, s])].copy() for s in range(self.sets)]
        return held[0] if self.sets == 1 else held

    def nbytes_valid(self) -> int:
        """Bytes of the valid K/V entries (what the cache holds after eviction)."""
        per_set = self.key.shape[1] // self.sets
        return int(self.lengths.sum()) * 2 * per_set * self.key.shape[3] * self.key.itemsize


class KVCache:
    """All layers of a decoding batch; capacities sized from the prefill's kept counts plus the tokens to come."""

    def __init__(self, counts: list[list[int]], kv_heads: int, head_dim: int, new_tokens: int, limit: int,
                 sets: int = 1):
        self.layers = []
        for layer_counts in counts:  # counts[l][b]: the entries a row's (largest) KV set needs
            capacity = max(layer_counts) + max(1, new_tokens)
            if capacity > limit:
                raise EngineLimitError(f"a layer needs {capacity} KV entries per sequence, beyond the engine's KV "
                                       f"capacity of {limit}; shorten the prompt or max_new_tokens")
            self.layers.append(LayerCache(len(layer_counts), kv_heads, capacity, head_dim, sets))

    def lengths(self) -> list[list]:
        """Valid entries per layer per sequence (differ by layer after eviction; per KV head: one list per
        sequence)."""
        return [layer.lengths.tolist() for layer in self.layers]

    def nbytes(self) -> int:
        return sum(layer.nbytes_valid() for layer in self.layers)
