# SPDX-License-Identifier: Apache-2.0
"""The engine runtime: load an engine directory, run vision -> prefill (per prompt) -> batched decode with the
evicted per-layer KV cache and the every-``decode_interval`` re-selection, and report the reference's statistics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ZipVLConfig
from ..errors import ZipVLInputError
from ..reference.selection import probe_positions
from ..reference.stats import ForwardStats, LayerStats, causal_attention_flops, probe_flops
from ..reference.variants import span_probes
from .errors import EngineLimitError
from .kv_cache import KVCache
from .manifest import load_manifest
from .multimodal import Prompt, prepare
from .session import SharedWeights, create_session

log = logging.getLogger(__name__)


@dataclass
class PrefillResult:
    """One prompt's prefill: logits (vocab,), per layer kept counts / indices (ascending) and compacted K/V."""

    length: int
    logits: np.ndarray
    counts: list[int]  # per layer: what the cache keeps (one set per KV head: the largest head's count)
    indices: list  # per layer: kept positions ascending (one set per KV head: one array per KV head)
    keys: list[np.ndarray]  # (H_kv, n, d), first count valid (per KV head: its own count)
    values: list[np.ndarray]
    rope_delta: int = 0
    attended: list[np.ndarray] | None = None  # per layer: the sparse attention's set when it differs (tau_evict)
    head_counts: list[np.ndarray] | None = None  # per layer (H_kv,): each KV head's count (head_reduce="kv")

    @property
    def attended_counts(self) -> list[int]:
        return self.counts if self.attended is None else [len(a) for a in self.attended]

    def cache_counts(self, layer: int):
        """What :meth:`LayerCache.fill` takes: the layer's count, or one per KV head."""
        return self.counts[layer] if self.head_counts is None else self.head_counts[layer]

    def held(self, layer: int) -> float:
        """Entries the layer keeps per KV head (one set per KV head: their mean, as the reference counts it)."""
        return self.counts[layer] if self.head_counts is None else float(np.mean(self.head_counts[layer]))

    @property
    def held_counts(self) -> list[float]:
        """:meth:`held` of every layer."""
        return [self.held(i) for i in range(len(self.counts))]


@dataclass
class DecodeStep:
    """One decode step's outputs: logits (B, vocab) and per layer the token's query (B, H, d) after RoPE."""

    logits: np.ndarray
    queries: list[np.ndarray]


@dataclass
class Generation:
    """Result of :meth:`Engine.generate` for a batch of B prompts."""

    tokens: np.ndarray  # (B, T) greedy tokens
    logits: list[np.ndarray]  # T arrays (B, vocab): prefill's last logits, then one per decode step
    prefills: list[PrefillResult]
    prefill_stats: ForwardStats
    decode_stats: list[ForwardStats] = field(default_factory=list)  # one per re-selection step
    cache_lengths_prefill: list[list[int]] = field(default_factory=list)  # [layer][sequence]
    cache_lengths: list[list[int]] = field(default_factory=list)  # after the last step
    retained: list[list[np.ndarray]] = field(default_factory=list)  # [layer][sequence] original positions held
    kv_bytes: int = 0  # valid K/V bytes held at the end


class Engine:
    """A built engine directory, ready to generate. ``verify``: check every file's sha256 on load.

    ``decode_interval`` overrides the built config's: decode-time re-selection runs in the runtime, so it needs no
    rebuild (tau, probes and dense layers are baked into the prefill graph and are not overridable).

    ``share_weights``: every graph reads one memory-mapped copy of the weights file instead of ONNX Runtime's private
    copy per session (the default model: +55 MiB loaded instead of +1,190 MiB). It costs speed, because shared
    buffers cannot be pre-packed for MLAS' GEMMs: measured on one core, 2K prefill 3.6 → 3.9-4.0 s, decode at B = 4
    171 → 220 ms per step (B = 1 unchanged). For memory-bound hosts (several instances of one engine share the pages).
    """

    def __init__(self, engine_dir: str | Path, verify: bool = True, threads: int | None = None,
                 decode_interval: int | None = None, share_weights: bool = False):
        self.dir = Path(engine_dir)
        self.manifest = load_manifest(self.dir, verify_hashes=verify)
        self.desc = self.manifest["model"]
        config = dict(self.manifest["zipvl"])
        if decode_interval is not None:
            config["decode_interval"] = decode_interval
        self.config = ZipVLConfig.from_dict(config)
        self.limits = self.manifest["limits"]
        graphs = self.manifest["graphs"]
        plugin = self.manifest["ops"] == "plugin"
        # The sessions read the map's buffers for their whole life: the engine holds it.
        self.weights = shared = SharedWeights(self.dir) if share_weights else None
        self.embed = create_session(self.dir / graphs["embed"], threads=threads, weights=shared)
        self.vision = (create_session(self.dir / graphs["vision"], threads=threads, weights=shared)
                       if "vision" in graphs else None)
        self.prefill_session = create_session(self.dir / graphs["prefill"], plugin=plugin, threads=threads,
                                              weights=shared)
        self.decode_session = create_session(self.dir / graphs["decode"], threads=threads, weights=shared)
        extras = self.manifest.get("extras", {})
        self.newline = np.load(self.dir / extras["image_newline"]) if "image_newline" in extras else None
        self.num_layers = self.desc["num_layers"]
        # one KV set per layer, or one per KV head (head_reduce="kv": the cache's layout follows)
        self.kv_sets = self.desc["num_kv_heads"] if self.config.head_reduce == "kv" else 1
        self.scaling = float(self.desc["scaling"])  # the attention's softmax scale (re-selection recomputes it)

    # ---------------------------------------------------------------- prefill
    def prefill(self, prompt: Prompt) -> PrefillResult:
        """Sparse prefill of one prompt (no padding): vision, embedding merge, the prefill graph."""
        n = len(prompt.input_ids)
        if n < 1:
            raise ZipVLInputError("empty prompt")
        embeds, positions, delta = prepare(self.desc, self.embed, self.vision, prompt, self.newline)
        probes = self.probes(prompt).numpy().astype(np.int32)[None]
        feed = {"inputs_embeds": embeds, "position_ids": positions, "probes": probes}
        if self.config.protect_text:  # the graph keeps every token outside the mask
            feed["image_mask"] = self.image_mask(prompt)[None]
        outs = self.prefill_session.run(None, feed)
        per_layer = 5 if self.config.tau_evict is not None else 4  # + attended_indices.{i}
        counts, indices, keys, values, attended, heads = [], [], [], [], [], []
        for i in range(self.num_layers):
            k, v, c, idx, *att = outs[1 + per_layer * i: 1 + per_layer * (i + 1)]
            if self.kv_sets > 1:  # kept_count (1, H_kv), kept_indices (1, H_kv, n): a set per KV head
                heads.append(c[0].astype(np.int64))
                counts.append(int(c[0].max()))
                indices.append([row[:count].astype(np.int64) for row, count in zip(idx[0], c[0])])
            else:
                counts.append(int(c[0]))
                indices.append(idx[0, : int(c[0])].astype(np.int64))
            keys.append(k[0])
            values.append(v[0])
            attended += [a[0][a[0] >= 0].astype(np.int64) for a in att]
        return PrefillResult(n, outs[0][0], counts, indices, keys, values, delta, attended or None, heads or None)

    def image_mask(self, prompt: Prompt) -> np.ndarray:
        """(n,) bool: the prompt's visual tokens (its image-token placeholders); all False for a text model."""
        image = self.desc.get("image_token_id")
        return np.asarray(prompt.input_ids) == (-1 if image is None else image)

    def probes(self, prompt: Prompt):
        """The prompt's probe positions, as the reference policy picks them (the prefill graph takes them as input):
        the paper's seeded recent + random set, or a trailing span (probe_set "recent" / "question", the question
        being the text after the last image token)."""
        n = len(prompt.input_ids)
        if self.config.probe_set == "paper":
            return probe_positions(n, self.config)
        import torch

        return span_probes(n, self.config, torch.from_numpy(self.image_mask(prompt))[None])

    @property
    def reselect_interval(self) -> int:
        """Generated tokens between decode re-selections; 0 = none (protect_text: generated tokens are text, and
        text is never evicted, as in the reference policy)."""
        return 0 if self.config.protect_text else self.config.decode_interval

    # ---------------------------------------------------------------- generate
    def check_request(self, prompts: list[Prompt], max_new_tokens: int) -> None:
        if not prompts:
            raise ZipVLInputError("no prompts given")
        if len(prompts) > self.limits["max_batch"]:
            raise EngineLimitError(f"batch of {len(prompts)} prompts exceeds the engine's max_batch of "
                                   f"{self.limits['max_batch']}")
        for i, p in enumerate(prompts):
            total = len(p.input_ids) + max_new_tokens
            if total > self.limits["max_sequence"]:
                raise EngineLimitError(
                    f"prompt {i} has {len(p.input_ids)} tokens; with {max_new_tokens} new tokens that is {total}, "
                    f"beyond the engine's max_sequence of {self.limits['max_sequence']} (rebuild with a larger "
                    f"--max-sequence or shorten the prompt)")

    def generate(self, prompts: list[Prompt], max_new_tokens: int = 32, eos_token_id: int | None = None) -> Generation:
        """Greedy generation for a batch of prompts of any lengths (prefilled one by one, decoded together).

        ``eos_token_id``: finished rows keep decoding but their later tokens are replaced by it (None: no stop).
        """
        if max_new_tokens < 1:
            raise ZipVLInputError("max_new_tokens must be >= 1")
        self.check_request(prompts, max_new_tokens)
        prefills = [self.prefill(p) for p in prompts]
        b = len(prompts)
        counts = [[pre.counts[i] for pre in prefills] for i in range(self.num_layers)]
        cache = self.new_cache(counts, max_new_tokens - 1)
        for i, layer in enumerate(cache.layers):
            for r, pre in enumerate(prefills):
                layer.fill(r, pre.keys[i], pre.values[i], pre.cache_counts(i), pre.indices[i])
        result = Generation(tokens=np.zeros((b, 0), dtype=np.int64), logits=[], prefills=prefills,
                            prefill_stats=self._prefill_stats(prefills), cache_lengths_prefill=cache.lengths())
        logits = np.stack([pre.logits for pre in prefills])
        tokens = [logits.argmax(-1)]
        result.logits.append(logits)
        done = np.zeros(b, dtype=bool)
        io = self.bind_cache(cache)
        lengths = np.array([pre.length for pre in prefills], dtype=np.int64)
        deltas = np.array([pre.rope_delta for pre in prefills], dtype=np.int64)
        pending = 0
        for t in range(max_new_tokens - 1):
            if eos_token_id is not None:
                done |= tokens[-1] == eos_token_id
            step = self.decode_step(io, cache, tokens[-1], lengths + t + deltas, indices=lengths + t)
            pending += 1
            interval = self.reselect_interval
            if interval and pending >= interval:
                result.decode_stats.append(self._reselect(cache, step, pending))
                pending = 0
            nxt = step.logits.argmax(-1)
            if eos_token_id is not None:
                nxt = np.where(done, eos_token_id, nxt)
            result.logits.append(step.logits)
            tokens.append(nxt)
        result.tokens = np.stack(tokens, axis=1)
        result.cache_lengths = cache.lengths()
        result.retained = [[layer.retained(r) for r in range(b)] for layer in cache.layers]
        result.kv_bytes = cache.nbytes()
        return result

    def new_cache(self, counts: list[list[int]], new_tokens: int) -> KVCache:
        """An empty cache in this engine's layout for entries ``counts[layer][row]`` (+ ``new_tokens``)."""
        return KVCache(counts, self.desc["num_kv_heads"], self.desc["head_dim"], new_tokens,
                       self.limits["kv_capacity"], self.kv_sets)

    def bind_cache(self, cache: KVCache):
        """Bind a cache's per-layer buffers (OrtValues, no copy) as the decode graph's inputs and as its present
        outputs (the graph writes each step's token into them in place); reuse the returned binding for every
        :meth:`decode_step` over that cache."""
        io = self.decode_session.io_binding()
        # Output order = binding order (what decode_step reads): logits, the L queries, then the cache buffers.
        io.bind_output("logits", "cpu")
        for i in range(self.num_layers):
            io.bind_output(f"query.{i}", "cpu")
        for i, layer in enumerate(cache.layers):
            io.bind_ortvalue_input(f"past.{i}.key", layer.ort_key)
            io.bind_ortvalue_input(f"past.{i}.value", layer.ort_value)
            io.bind_ortvalue_input(f"past.{i}.length", layer.ort_lengths)
            io.bind_ortvalue_output(f"present.{i}.key", layer.ort_key)
            io.bind_ortvalue_output(f"present.{i}.value", layer.ort_value)
        return io

    def decode_step(self, io, cache: KVCache, tokens: np.ndarray, positions: np.ndarray,
                    indices: np.ndarray | None = None) -> DecodeStep:
        """One decode step of the batch over ``cache`` (bound as ``io`` by :meth:`bind_cache`): tokens (B,) int,
        rotary positions (B,) (original position + rope delta). The graph writes the tokens' K/V into the cache; the
        lengths advance here, and ``indices`` (the tokens' original positions, optional) are recorded."""
        for layer in cache.layers:
            layer.check_room()
        pos = positions[:, None].astype(np.int64)
        if self.desc["mrope"]:
            pos = np.ascontiguousarray(np.broadcast_to(pos[None], (3, *pos.shape)))
        io.bind_cpu_input("input_ids", np.ascontiguousarray(tokens[:, None], dtype=np.int64))
        io.bind_cpu_input("position_ids", pos)
        self.decode_session.run_with_iobinding(io)
        for layer in cache.layers:
            layer.advance(indices)
        # Copies (numpy() of an output may alias ORT's buffers, which the next run reuses): logits + L queries,
        # never the cache (its outputs are the bound buffers themselves).
        outs = io.get_outputs()
        return DecodeStep(outs[0].numpy().copy(), [outs[1 + i].numpy().copy() for i in range(self.num_layers)])

    def _reselect(self, cache: KVCache, step: DecodeStep, window: int) -> ForwardStats:
        stats = ForwardStats(phase="decode")
        for i, layer in enumerate(cache.layers):
            before = layer.nbytes_valid()
            kept = layer.reselect(step.queries[i], window, self.config.evict_tau, self.scaling)
            stats.layers.append(LayerStats(layer=i, phase="decode", mode="reselect", length=[window] * len(kept),
                                           kept=kept, kv_bytes_before=before, kv_bytes_after=layer.nbytes_valid(),
                                           cache_length=layer.held()))
        return stats

    def _prefill_stats(self, prefills: list[PrefillResult]) -> ForwardStats:
        """The reference's per-layer statistics (zipvl.reference.stats) for the prefills."""
        d = self.desc
        h, hd, kv_entry = d["num_heads"], d["head_dim"], 2 * d["num_kv_heads"] * d["head_dim"] * 4
        stats = ForwardStats(phase="prefill")
        lengths = [p.length for p in prefills]
        for i in range(self.num_layers):
            cached = [p.held(i) for p in prefills]
            dense = i in self.config.dense_layers
            probe = 0 if dense else sum(probe_flops(n, min(n, self.config.n_probes), h, hd) for n in lengths)
            # a dense-prefill engine (sparse_prefill False) attends over all n and pays the probe on top, as the
            # reference bills its evict-only mode
            sparse = self.config.sparse_prefill or dense
            # the reference's billing: a sparse layer counts what its attention kept (tau_evict: fewer than the
            # cache holds), an evict-only layer what the cache kept
            kept = [p.attended_counts[i] for p in prefills] if sparse else cached
            attended = kept if sparse else lengths
            stats.layers.append(LayerStats(
                layer=i, phase="prefill", mode="dense_layer" if dense else ("sparse" if sparse else "evict_only"),
                length=list(lengths), kept=kept,
                attn_flops_dense=sum(causal_attention_flops(n, h, hd) for n in lengths),
                attn_flops_zipvl=sum(causal_attention_flops(p, h, hd) for p in attended) + probe, probe_flops=probe,
                kv_bytes_before=kv_entry * sum(lengths), kv_bytes_after=kv_entry * sum(cached), cache_length=cached))
        return stats
