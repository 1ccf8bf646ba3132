# SPDX-License-Identifier: Apache-2.0
"""Engine vs PyTorch reference on the same prompts: per-layer kept sets, cache lengths, logits (compared with
polygraphy's Comparator), greedy tokens. Produces a JSON-able report with a pass/fail verdict."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass

import numpy as np

from ..runtime import ort_plugins
from ..runtime.engine import Engine
from ..runtime.multimodal import Prompt
from .reference import run_reference

log = logging.getLogger(__name__)


@dataclass
class Tolerance:
    """Logits: |engine - reference| <= atol + rtol * |reference| elementwise (polygraphy's simple compare);
    kept sets and greedy tokens must be identical."""

    atol: float = 1e-3
    rtol: float = 1e-3
    tie_rtol: float = 1e-5  # a kept-set difference is an fp32 near-tie when every swapped token's reference score
    #                         lies within tie_rtol (relative) of the selection boundary


def classify(engine_kept: np.ndarray, ref_kept: np.ndarray, score: np.ndarray | None, tie_rtol: float) -> str:
    """"identical", "near_tie" (only tokens at the boundary, in the reference's own scores, differ) or "mismatch"."""
    a, b = set(engine_kept.tolist()), set(ref_kept.tolist())
    if a == b:
        return "identical"
    if score is None or abs(len(a) - len(b)) > 1:
        return "mismatch"
    boundary = np.sort(score)[::-1][len(b) - 1]
    swapped = np.array(sorted(a ^ b))
    near = np.abs(score[swapped] - boundary) <= tie_rtol * abs(boundary)
    return "near_tie" if near.all() else "mismatch"


VERDICTS = ("identical", "near_tie", "mismatch")  # best to worst


def _heads(kept):
    """A kept set as a list of per-KV-head position arrays (one set per layer: a list of one)."""
    return list(kept) if isinstance(kept, list) else [kept]


def same_sets(a, b) -> bool:
    """Equal kept sets, one per layer or one per KV head."""
    a, b = _heads(a), _heads(b)
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def classify_sets(engine_kept, ref_kept, score, tie_rtol: float) -> str:
    """:func:`classify` per KV head (score (H_kv, n) then): the worst verdict over the heads."""
    engine_kept, ref_kept = _heads(engine_kept), _heads(ref_kept)
    if len(engine_kept) != len(ref_kept):
        return "mismatch"
    scores = [None] * len(ref_kept) if score is None else (list(score) if np.ndim(score) == 2 else [score])
    kinds = {classify(a, b, s, tie_rtol) for a, b, s in zip(engine_kept, ref_kept, scores)}
    return max(kinds, key=VERDICTS.index)


def _jaccard(a, b) -> float:
    pairs = [{(j, int(p)) for j, head in enumerate(_heads(x)) for p in head} for x in (a, b)]
    return len(pairs[0] & pairs[1]) / max(1, len(pairs[0] | pairs[1]))


def compare_logits(engine_logits: list[np.ndarray], ref_logits: list[np.ndarray], tol: Tolerance) -> dict:
    """polygraphy Comparator.compare_accuracy over the steps (one IterationResult per step, output "logits")."""
    from polygraphy.comparator import Comparator, CompareFunc, RunResults
    from polygraphy.comparator.struct import IterationResult

    results = RunResults()
    for name, steps in (("reference", ref_logits), ("engine", engine_logits)):
        results.append((name, [IterationResult({"logits": s.astype(np.float32)}, runner_name=name) for s in steps]))
    with redirect_stdout(io.StringIO()):
        accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=tol.atol, rtol=tol.rtol))
    err = [np.abs(a.astype(np.float64) - b) for a, b in zip(engine_logits, ref_logits)]
    return {"passed": bool(accuracy), "max_abs_error": float(max(e.max() for e in err)) if err else 0.0,
            "mean_abs_error": float(np.mean([e.mean() for e in err])) if err else 0.0, "steps": len(err)}


def compare_batch(engine: Engine, model, prompts: list[Prompt], max_new_tokens: int, tol: Tolerance) -> dict:
    """One batch: engine generate vs reference generate (same config, same probes)."""
    gen = engine.generate(prompts, max_new_tokens=max_new_tokens)
    ref = run_reference(model, prompts, engine.desc, engine.config, max_new_tokens)
    both = gen.prefills[0].attended is not None  # tau_evict: the attention's own set is checked too
    strict = all(same_sets(p.indices[i], ref.kept[i][r]) and (not both or same_sets(p.attended[i], ref.attended[i][r]))
                 for i in range(engine.num_layers) for r, p in enumerate(gen.prefills))
    followed = False
    if not strict:
        # fp32 near-ties can make ORT and torch pick different tokens at the boundary; re-run the reference on the
        # engine's kept sets (still recording the reference's own choice at every layer on those same inputs), so
        # every layer is judged on identical inputs and the logits/tokens compare the same computation.
        forced = {i: [p.indices[i] for p in gen.prefills] for i in range(engine.num_layers)}
        attention = {i: [p.attended[i] for p in gen.prefills] for i in range(engine.num_layers)} if both else None
        ref = run_reference(model, prompts, engine.desc, engine.config, max_new_tokens, forced=forced,
                            forced_attention=attention)
        followed = True
    layers = []
    for i in range(engine.num_layers):
        rows, kinds = [], []
        for r, pre in enumerate(gen.prefills):
            rows.append(_jaccard(pre.indices[i], ref.kept[i][r]))
            kinds.append(classify_sets(pre.indices[i], ref.kept[i][r], ref.scores[i][r], tol.tie_rtol))
            if both:  # the worse of the cache set's and the attention set's verdicts
                kinds[-1] = max(kinds[-1], classify_sets(pre.attended[i], ref.attended[i][r], ref.scores[i][r],
                                                         tol.tie_rtol), key=VERDICTS.index)
        layers.append({"layer": i, "identical": all(k == "identical" for k in kinds), "agreement": kinds,
                       "jaccard": rows, "engine_kept": [p.held(i) for p in gen.prefills],
                       "reference_kept": [float(np.mean([len(h) for h in _heads(x)])) for x in ref.kept[i]]})
    if ref.tokens.shape != gen.tokens.shape:
        raise AssertionError(f"reference generated {ref.tokens.shape[1]} tokens, engine {gen.tokens.shape[1]}")
    same = gen.tokens == ref.tokens
    diverge = [int(np.argmin(row)) if not row.all() else None for row in same]
    # Logits are compared while the greedy paths agree (after a divergence they see different inputs).
    upto = min([d + 1 for d in diverge if d is not None] + [len(gen.logits)])
    logits = compare_logits(gen.logits[:upto], ref.logits[:upto], tol)
    report = {
        "lengths": [len(p.input_ids) for p in prompts],
        "layers": layers,
        "kept_sets_identical": strict,
        "kept_sets_identical_up_to_ties": all(k != "mismatch" for x in layers for k in x["agreement"]),
        "near_ties": [(x["layer"], r) for x in layers for r, k in enumerate(x["agreement"]) if k == "near_tie"],
        "reference_followed_engine": followed,
        "cache_lengths_prefill": {"engine": gen.cache_lengths_prefill, "reference": ref.prefill_counts,
                                  "equal": gen.cache_lengths_prefill == _ints(ref.prefill_counts)},
        "cache_lengths_final": {"engine": gen.cache_lengths, "reference": ref.cache_lengths,
                                "equal": gen.cache_lengths == ref.cache_lengths},
        # what each layer's cache holds at the end, by original position: the decode re-selections' kept sets
        "retained_identical": all(same_sets(e, r) for el, rl in zip(gen.retained, ref.retained)
                                  for e, r in zip(el, rl)),
        "reselections": len(gen.decode_stats),
        "logits": logits,
        "tokens": {"generated": int(gen.tokens.shape[1]), "agreement": float(same.mean()),
                   "identical": bool(same.all()), "first_divergence": diverge,
                   "engine": gen.tokens.tolist(), "reference": ref.tokens.tolist()},
        "engine_layer_ratios": gen.prefill_stats.layer_ratios(),
        "reference_layer_ratios": ref.prefill_stats.layer_ratios(),
        "kv_bytes": {"engine_after_prefill": gen.prefill_stats.kv_bytes_after,
                     "reference_after_prefill": ref.prefill_stats.kv_bytes_after},
    }
    report["passed"] = bool(report["kept_sets_identical_up_to_ties"] and report["cache_lengths_prefill"]["equal"]
                            and report["cache_lengths_final"]["equal"] and logits["passed"]
                            and report["tokens"]["identical"])
    return report


def _ints(x):
    """Nested lists of numbers as ints (the reference's stats may hold floats or tensors' items)."""
    return [_ints(v) for v in x] if isinstance(x, (list, tuple)) else int(x)


def validate(engine: Engine, model, prompts: list[Prompt], max_new_tokens: int = 32, batch: int = 2,
             tol: Tolerance | None = None) -> dict:
    """All prompts in batches of ``batch``; the report's ``passed`` is the AND of every batch."""
    tol = tol or Tolerance()
    batches = [compare_batch(engine, model, prompts[i: i + batch], max_new_tokens, tol)
               for i in range(0, len(prompts), batch)]
    return {
        "engine": str(engine.dir), "ops": engine.manifest["ops"], "model": engine.desc["type"],
        "plugin_implementation": ort_plugins.implementation() if engine.manifest["ops"] == "plugin" else None,
        "zipvl": engine.config.to_dict(), "tolerance": asdict(tol), "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "summary": {
            "kept_sets_identical": all(b["kept_sets_identical"] for b in batches),
            "kept_sets_identical_up_to_ties": all(b["kept_sets_identical_up_to_ties"] for b in batches),
            "near_ties": sum(len(b["near_ties"]) for b in batches),
            "cache_lengths_equal": all(b["cache_lengths_prefill"]["equal"] and b["cache_lengths_final"]["equal"]
                                       for b in batches),
            "retained_identical": all(b["retained_identical"] for b in batches),
            "max_abs_logit_error": max(b["logits"]["max_abs_error"] for b in batches),
            "mean_abs_logit_error": float(np.mean([b["logits"]["mean_abs_error"] for b in batches])),
            "token_agreement": float(np.mean([b["tokens"]["agreement"] for b in batches])),
            "tokens_identical": all(b["tokens"]["identical"] for b in batches),
            "reselections": sum(b["reselections"] for b in batches),
            "mean_kept_ratio": float(np.mean([np.mean(b["engine_layer_ratios"]) for b in batches])),
        },
        "batches": batches,
        "passed": all(b["passed"] for b in batches),
    }
