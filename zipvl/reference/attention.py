# SPDX-License-Identifier: Apache-2.0
"""The "zipvl" attention function registered in transformers' AttentionInterface.

Prefill (the layer's cache is still empty): ask the policy for the kept set T, run attention on Q[T], K[T], V[T]
only (rows outside T output 0), evict the rest from the layer's cache. Decode: attend over the layer's retained
entries with a mask built from the cache's own slots (the HF mask indexes logical slots, not compacted entries),
and every ``decode_interval`` tokens re-select inside the newest window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..errors import ZipVLIntegrationError
from .cache import ZipVLCache, ZipVLLayer
from .hf_compat import TRANSFORMERS_VERSION
from .policy import LayerContext
from .selection import select_window, token_attention_mass
from .sparse import sparse_attention
from .stats import LayerStats, causal_attention_flops, probe_flops

ATTENTION_NAME = "zipvl"


def _key_validity(attention_mask: torch.Tensor | None, batch: int, n: int, device) -> torch.Tensor | None:
    """Which keys are real tokens, from the 4D mask HF built (last query row sees every valid key)."""
    if attention_mask is None:
        return None
    row = attention_mask[:, 0, -1, -n:]
    valid = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
    valid = valid.expand(batch, n)
    return None if bool(valid.all()) else valid


def zipvl_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention signature: query (B, H, q, d), key/value (B, H_kv, L, d) -> ((B, q, H, d), None)."""
    state = getattr(module, "_zipvl_state", None)
    if state is None:  # enabled model config, but this module was not wired (e.g. a copy): behave like SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    state.attention_calls += 1
    layer = _own_layer(state, module.layer_idx, key)
    if layer is None or not layer.prefilled:
        out = _prefill(module, state, layer, query, key, value, attention_mask, scaling)
    else:
        out = _decode(module, state, layer, query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def _own_layer(state, idx: int, key: torch.Tensor) -> ZipVLLayer | None:
    """This layer's ZipVLCache entry, after checking that ``key`` is what that entry holds: if transformers updated
    another cache (a renamed or ignored cache argument), evicting ours would silently do nothing."""
    cache = state.cache
    if cache is None:
        return None
    layer = cache.layers[idx] if isinstance(cache, ZipVLCache) and idx < len(cache.layers) else None
    if layer is None or layer.keys is not key:
        raise ZipVLIntegrationError(
            f"transformers {TRANSFORMERS_VERSION} gave layer {idx} key/value states that are not in zipvl's "
            f"ZipVLCache: the cache passed as `{state.cache_argument}=` was replaced or ignored"
        )
    return layer


def _prefill(module, state, layer: ZipVLLayer | None, query, key, value, attention_mask, scaling):
    b, h, n, d = query.shape
    h_kv = key.shape[1]
    idx = module.layer_idx
    policy, config = state.policy, state.policy.config
    valid = _key_validity(attention_mask, b, n, query.device)
    lengths = [n] * b if valid is None else valid.sum(-1).tolist()
    if idx in config.dense_layers or max(lengths) < config.min_length:
        mode = "dense_layer" if idx in config.dense_layers else "short"
        out = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling)[0].transpose(1, 2)
        kept = torch.ones(b, n, dtype=torch.bool, device=query.device) if valid is None else valid
        counts, probe_cost = lengths, 0
    else:
        mode = "sparse" if policy.sparse_prefill else "evict_only"
        kept, out, counts, probe_cost = _select_and_attend(policy, state, idx, query, key, value, valid, scaling)
    # The cache may keep more than the sparse attention used (tau_evict): stats count both, the cache by its own set.
    # One set per KV head: a sequence's count is the mean over its KV heads (the KV bytes it holds stay exact).
    cached = kept.sum(dim=-1).tolist() if kept.dim() == 2 else kept.sum(dim=-1).double().mean(dim=-1).tolist()
    if layer is not None:
        with state.timer.section("evict", query.device):
            layer.keep(kept)
        layer.prefilled = True
        layer.pending = 0
    sparse = mode == "sparse"  # evict-only policies (H2O/SnapKV-style) still pay dense prefill attention
    kv_entry = 2 * h_kv * d * key.element_size()
    state.record(
        LayerStats(
            layer=idx, phase="prefill", mode=mode, length=lengths, kept=counts if sparse else cached,
            attn_flops_dense=sum(causal_attention_flops(x, h, d) for x in lengths),
            attn_flops_zipvl=sum(causal_attention_flops(p, h, d) for p in (counts if sparse else lengths)) + probe_cost,
            probe_flops=probe_cost,
            kv_bytes_before=kv_entry * sum(lengths), kv_bytes_after=kv_entry * sum(cached),
            cache_length=layer.lengths() if layer is not None else cached,
        )
    )
    return out


def _select_and_attend(policy, state, idx, query, key, value, valid, scaling):
    """Run the policy and the sparse attention; with padding, each row works on its valid tokens only.
    -> (the cache's kept set (B, n), attention output, the attention's kept counts, probe FLOPs)."""
    b, h, n, d = query.shape
    if valid is None:  # the whole batch at once; outputs come straight from the policy and sparse_attention
        groups = [(slice(None), None)]
    else:
        groups = [(slice(i, i + 1), valid[i].nonzero().squeeze(-1)) for i in range(b)]
        sets = (key.shape[1],) if policy.config.head_reduce == "kv" else ()  # one kept set per KV head
        kept = torch.zeros(b, *sets, n, dtype=torch.bool, device=query.device)
        out = query.new_zeros(b, n, h, d).transpose(1, 2)  # (B, H, n, d) view of transformers' layout
    counts, probe_cost = [0] * b, 0
    for sl, cols in groups:
        q, k, v = (query[sl], key[sl], value[sl]) if cols is None else (t[sl][:, :, cols] for t in (query, key, value))
        extras = {name: (t[sl] if cols is None else t[sl][:, cols]) for name, t in state.extras.items()}
        ctx = LayerContext(layer_idx=idx, num_layers=state.num_layers, extras=extras, timer=state.timer)
        sel = policy.select(q, k, scaling, ctx)
        probe_cost += q.shape[0] * probe_flops(q.shape[2], sel.probes.shape[-1], h, d) if sel.probes is not None else 0
        with state.timer.section("sparse_attention" if policy.sparse_prefill else "dense_attention", q.device):
            if policy.sparse_prefill:
                o = sparse_attention(q, k, v, sel.kept, scaling)
            else:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                   enable_gqa=h != k.shape[1])
        if cols is None:
            kept, out = sel.cache_kept, o
            counts = sel.count.tolist()
        else:
            i = sl.start
            kept[i][..., cols] = sel.cache_kept[0]
            out[i : i + 1, :, cols] = o
            counts[i] = int(sel.count[0].sum())  # per-KV-head sets run evict-only: this attention count is unused
    return kept, out, counts, probe_cost


def _decode(module, state, layer: ZipVLLayer, query, key, value, scaling):
    """Attend over the retained cache; re-select in the newest window every decode_interval tokens."""
    _, h, q, _ = query.shape
    q_slots = layer.logical - q + torch.arange(q, device=query.device)
    visible = layer.valid[:, None, None, :] & (layer.slots[:, None, None, :] <= q_slots[None, None, :, None])
    heads = layer.visible_heads(h)  # one kept set per KV head: each query head sees its KV head's entries
    if heads is not None:
        visible = visible & heads
    mask = None if q == 1 and bool(visible.all()) else visible
    gqa = h != key.shape[1]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=gqa)
    interval = state.policy.config.decode_interval
    if state.policy.decode_reselect and interval and layer.pending >= interval:
        _reselect_window(module, state, layer, query[:, :, -1:], key, visible[:, :, -1:], scaling)
    return out


def _reselect_window(module, state, layer: ZipVLLayer, query, key, visible, scaling):
    """Method, "Decoding": the current token's attention (softmax over the whole retained cache) on the newest
    ``pending`` entries; keep the smallest set reaching tau of the window's mass, evict the rest of the window."""
    b, h, _, d = query.shape
    w = layer.pending
    scale = d**-0.5 if scaling is None else scaling
    # visible (B, 1 | H, 1, L): per KV head when the heads hold different entries
    seen = visible[:, :: h // key.shape[1], 0] if visible.shape[1] > 1 else visible.reshape(b, -1)
    probs = token_attention_mass(query, key, seen, scale)  # (B, L)
    window = layer.valid & (layer.slots >= layer.logical - w)
    window_mass = probs[window].view(b, w)
    kept_window = select_window(window_mass, state.policy.config.evict_tau, h)
    keep = ~window
    keep[window] = kept_window.reshape(-1)
    kv_entry = 2 * key.shape[1] * d * key.element_size()
    before = kv_entry * sum(layer.lengths())
    layer.keep(keep)
    layer.pending = 0
    state.record(
        LayerStats(layer=module.layer_idx, phase="decode", mode="reselect", length=[w] * b,
                   kept=kept_window.sum(-1).tolist(), kv_bytes_before=before,
                   kv_bytes_after=kv_entry * sum(layer.lengths()), cache_length=layer.lengths())
    )
