# SPDX-License-Identifier: Apache-2.0
"""The evaluation loop: every item dense first (the reference), ZipVL at each tau, then the baselines at the kept
ratio ZipVL measured ("matched ratio"), all on the same harness. Returns plain dicts (JSON-ready)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from ..baselines.registry import RATIO_BASELINES, make_policy
from ..config import ZipVLConfig
from ..errors import ZipVLInputError
from .metrics import score
from .runner import Trace, eos_ids, prepare, run_prompt
from .tasks import Item, build_inputs

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """What to run. ``fixed`` is matched at every tau (the adaptive-vs-fixed curve); the other baselines at
    ``match_taus``. ``match``: "task" gives a baseline one ratio per task (the mean of ZipVL's measured ratios over the
    task's items, what a user would set); "item" gives each item ZipVL's ratio on that item."""

    taus: tuple[float, ...] = (0.96, 0.975, 0.99)
    baselines: tuple[str, ...] = RATIO_BASELINES
    match_taus: tuple[float, ...] = (0.975,)
    match: str = "task"
    max_new_tokens: int = 16
    seed: int = 0
    zipvl: ZipVLConfig = field(default_factory=ZipVLConfig)
    # ZipVLConfig presets run beside ``zipvl`` at every tau (the selection study); keyed "<preset>@<tau>"
    variants: tuple[str, ...] = ()

    def __post_init__(self):
        if self.match not in ("task", "item"):
            raise ZipVLInputError(f"match must be 'task' or 'item', got {self.match!r}")
        unknown = [b for b in self.baselines if b not in RATIO_BASELINES]
        if unknown:
            raise ZipVLInputError(f"unknown baselines {unknown}; choose from {', '.join(RATIO_BASELINES)}")
        missing = [t for t in self.match_taus if t not in self.taus]
        if missing and any(b != "fixed" for b in self.baselines):
            raise ZipVLInputError(f"match taus {missing} are not among the ZipVL taus {list(self.taus)}")
        for name in self.variants:
            ZipVLConfig.preset(name)  # unknown names fail here, naming the presets, before any model runs

    def config_for(self, key: str, tau: float | None) -> ZipVLConfig:
        """The ZipVL configuration of one planned run: a variant's preset (same seed) or ``zipvl``, at ``tau``."""
        name = key.rsplit("@", 1)[0]
        base = ZipVLConfig.preset(name, seed=self.zipvl.seed) if name in self.variants else self.zipvl
        if tau is None:
            return base
        tau_evict = base.tau_evict if base.tau_evict is None or base.tau_evict >= tau else None
        return replace(base, tau=tau, tau_evict=tau_evict)

    def plan(self) -> list[tuple[str, str, float | None]]:
        """(key, method, tau) in run order; baselines are keyed by the tau whose ratio they match."""
        runs = [("dense", "dense", None)] + [(f"zipvl@{t:g}", "zipvl", t) for t in self.taus]
        runs += [(f"{name}@{t:g}", "variant", t) for name in self.variants for t in self.taus]
        for name in self.baselines:
            for t in (self.taus if name == "fixed" else self.match_taus):
                runs.append((f"{name}@{t:g}", name, t))
        return runs


def _prefill_cost(trace: Trace) -> tuple[float | None, float | None]:
    """(attention-FLOPs reduction, KV reduction) of the prefill. The reference's stats already bill a dense-prefill
    policy (SnapKV, mode "evict_only") for the dense attention plus its scoring."""
    stats = trace.stats
    if stats is None:
        return 0.0, 0.0
    flops = stats.attn_flops_reduction
    kv = 1.0 - stats.kv_bytes_after / stats.kv_bytes_before if stats.kv_bytes_before else 0.0
    return flops, kv


def item_record(item: Item, trace: Trace, text: str, n_tokens: int) -> dict:
    flops, kv = _prefill_cost(trace)
    rec = {
        "id": item.id, "meta": item.meta, "prompt_tokens": n_tokens, "answer": text, "answers": item.answers,
        "score": score(item.scorer, text, item.answers),
        "mean_ratio": trace.stats.mean_ratio if trace.stats is not None else 1.0,
        "layer_ratios": trace.stats.layer_ratios() if trace.stats is not None else None,
        "attn_flops_reduction": flops, "kv_reduction": kv,
        "prefill_s": trace.prefill_s, "decode_s": trace.decode_s, "new_tokens": len(trace.tokens),
    }
    if trace.tf_agree:
        rec.update(first_top1=bool(trace.tf_agree[0]), first_kl=trace.tf_kl[0],
                   top1_agreement=sum(trace.tf_agree) / len(trace.tf_agree),
                   mean_kl=sum(trace.tf_kl) / len(trace.tf_kl), exact_match=all(trace.tf_agree))
    else:  # the dense reference itself
        rec.update(first_top1=True, first_kl=0.0, top1_agreement=1.0, mean_kl=0.0, exact_match=True)
    if trace.retention is not None and item.images:  # the focus of an image item is its image tokens
        rec["visual_kept"], rec["text_kept"] = trace.retention, trace.rest_retention
    elif trace.retention is not None:
        rec["focus_retention"] = trace.retention
    return rec


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(records: list[dict]) -> dict:
    """Aggregates of one method over a task's items."""
    out = {"n": len(records)}
    for key in ("score", "mean_ratio", "first_top1", "first_kl", "top1_agreement", "mean_kl", "exact_match",
                "attn_flops_reduction", "kv_reduction", "prefill_s"):
        out[key if key != "score" else "accuracy"] = _mean([float(r[key]) if r.get(key) is not None else None
                                                            for r in records])
    layers = [r["layer_ratios"] for r in records if r.get("layer_ratios")]
    out["layer_ratios"] = [sum(col) / len(col) for col in zip(*layers)] if layers else None
    for key in ("focus_retention", "visual_kept", "text_kept"):  # per layer, mean over items
        keep = [r[key] for r in records if r.get(key)]
        out[key] = [sum(col) / len(col) for col in zip(*keep)] if keep else None
    for key in ("visual_kept", "text_kept"):
        out[f"mean_{key}"] = sum(out[key]) / len(out[key]) if out[key] else None
    return out


def evaluate_items(model, processor, items: list[Item], settings: EvalSettings, task: str = "task",
                   progress: bool = True) -> dict:
    """Run the plan on ``items``; returns {"task", "settings", "matched_ratio", "methods": {key: {...}}}."""
    if not items:
        raise ZipVLInputError(f"task {task!r} has no items")
    torch.manual_seed(settings.seed)
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = eos_ids(model, tokenizer)
    prepared = []
    for item in items:
        inputs, focus = build_inputs(processor, item)
        prepared.append((item, prepare(model, inputs), focus))
    plan = settings.plan()
    methods: dict[str, dict] = {}
    dense: dict[str, Trace] = {}
    matched: dict[float, float] = {}
    matched_item: dict[float, dict[str, float]] = {}
    bar = tqdm(total=len(plan) * len(prepared), desc=task, unit="run", disable=not progress)
    for key, method, tau in plan:
        records = []
        for item, inputs, focus in prepared:
            bar.set_postfix_str(f"{key} {item.id}")
            config = settings.config_for(key, tau)
            ratio = None
            if method not in ("dense", "zipvl", "variant"):
                ratio = matched_item[tau][item.id] if settings.match == "item" else matched[tau]
                config = settings.zipvl
            policy = make_policy("zipvl" if method == "variant" else method, ratio=ratio, config=config,
                                 seed=settings.seed)
            trace = run_prompt(model, inputs, policy, settings.max_new_tokens, eos,
                               reference=dense.get(item.id), focus=focus)
            if method == "dense":
                dense[item.id] = trace
            text = tokenizer.decode(trace.tokens, skip_special_tokens=True)
            rec = item_record(item, trace, text, int(inputs["input_ids"].shape[1]))
            rec["target_ratio"] = ratio
            records.append(rec)
            bar.update(1)
        summary = summarize(records)
        if method == "zipvl":
            matched[tau] = summary["mean_ratio"]
            matched_item[tau] = {r["id"]: r["mean_ratio"] for r in records}
        methods[key] = {"method": method, "tau": tau, "config": config.variants() if method in ("zipvl", "variant") else None,
                        "target_ratio": None if method in ("dense", "zipvl", "variant") else
                        (matched[tau] if settings.match == "task" else "per item"),
                        "summary": summary, "items": records}
        log.info("%s %s: accuracy %s, kept ratio %.3f", task, key, summary["accuracy"], summary["mean_ratio"])
    bar.close()
    return {"task": task, "n_items": len(items), "matched_ratio": {f"{t:g}": r for t, r in matched.items()},
            "methods": methods}


def adaptive_vs_fixed(result: dict) -> list[dict]:
    """Per tau: ZipVL vs the fixed ratio matched to it (accuracy, exact match, top-1, KL); delta = ZipVL - fixed"""
    rows = []
    for entry in result["methods"].values():
        if entry["method"] != "zipvl":
            continue
        fixed = result["methods"].get(f"fixed@{entry['tau']:g}")
        if fixed is None:
            continue
        z, f = entry["summary"], fixed["summary"]
        row = {"tau": entry["tau"], "zipvl_ratio": z["mean_ratio"], "fixed_ratio": f["mean_ratio"]}
        for k in ("accuracy", "exact_match", "top1_agreement", "mean_kl"):
            row[f"zipvl_{k}"], row[f"fixed_{k}"] = z[k], f[k]
            row[f"delta_{k}"] = None if z[k] is None or f[k] is None or (isinstance(z[k], float) and math.isnan(z[k])) \
                else z[k] - f[k]
        rows.append(row)
    return rows


def pareto_front(result: dict, fidelity: str = "exact_match") -> list[dict]:
    """ZipVL and its variants as points (kept ratio, attention FLOPs saved, ``fidelity``), each marked whether it is on
    the front: no other point keeps fewer-or-equal tokens with higher-or-equal fidelity, one of them strictly."""
    points = []
    for key, entry in result["methods"].items():
        s = entry["summary"]
        if entry["method"] in ("zipvl", "variant") and s.get(fidelity) is not None:
            points.append({"key": key, "ratio": s["mean_ratio"], "flops_saved": s["attn_flops_reduction"],
                           "fidelity": s[fidelity], "accuracy": s["accuracy"], "mean_kl": s["mean_kl"],
                           "visual_kept": s.get("mean_visual_kept")})
    for p in points:
        p["front"] = not any(q["ratio"] <= p["ratio"] and q["fidelity"] >= p["fidelity"]
                             and (q["ratio"] < p["ratio"] or q["fidelity"] > p["fidelity"]) for q in points)
    return sorted(points, key=lambda p: p["ratio"])
