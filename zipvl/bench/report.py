# SPDX-License-Identifier: Apache-2.0
"""The report's three faces: terminal tables (rich), a JSON file, and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .limits import TARGET_EFFICIENCY
from .memory import MiB

# The fields every report carries (the JSON contract; tests check it).
REQUIRED_FIELDS = ("schema", "created", "zipvl_version", "mode", "mode_detail", "environment", "dtype", "model",
                   "model_shape", "zipvl_config", "bench_config", "targets", "prefill", "attention", "crossover",
                   "decode", "memory", "notes")
PREFILL_FIELDS = ("n", "mode", "dense", "zipvl", "speedup", "speedup_min", "speedup_paired_median", "limit", "efficiency", "r_eff", "zipvl_stats",
                  "kv_bytes_dense", "kv_bytes_zipvl", "breakdown_zipvl_s", "breakdown_dense_s",
                  "selection_overhead_pct", "limit_from_time_split", "flops_split", "peak_memory")
ATTENTION_FIELDS = ("n", "mode", "ratio", "ms", "speedup", "speedup_sparse_only", "limit", "efficiency",
                    "selection_pct_of_dense")
DECODE_FIELDS = ("context", "mode", "kv_bytes_dense", "kv_bytes_zipvl", "kv_mib_saved", "rows", "best",
                 "throughput_ratio", "limit", "efficiency", "basis", "memory_fit")
CROSSOVER_FIELDS = ("lengths", "speedups", "recommended_min_length", "interpolated", "points", "how_to_apply")


def missing_fields(report: dict) -> list[str]:
    """Names of contract fields absent from ``report`` (dotted for nested sections); [] when complete."""
    missing = [k for k in REQUIRED_FIELDS if k not in report]
    for section, fields in (("prefill", PREFILL_FIELDS), ("attention", ATTENTION_FIELDS), ("decode", DECODE_FIELDS)):
        for i, point in enumerate(report.get(section) or []):
            if "skipped" not in point:
                missing += [f"{section}[{i}].{k}" for k in fields if k not in point]
    if report.get("crossover"):
        missing += [f"crossover.{k}" for k in CROSSOVER_FIELDS if k not in report["crossover"]]
    return missing


def _clean(obj):
    """JSON-safe copy: NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")
    return path


def _eff(e) -> str:
    if e is None or not math.isfinite(e):
        return "-"
    mark = "[green]✓[/]" if e >= TARGET_EFFICIENCY else "[red]✗[/]"
    return f"{100 * e:.0f}% {mark}"


def _ms(samples: dict) -> str:
    return f"{1e3 * samples['median_s']:.1f} ±{50 * samples['spread']:.0f}%"


def render(report: dict, console=None) -> None:
    """Print the report as tables (mode label on every table)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # pipes and CI logs: do not squeeze the tables to 80 columns
            console = Console(width=160)
    env, mode = report["environment"], report["mode"]
    where = env.get("gpu") or env.get("cpu", "")
    console.print(f"[bold]zipvl-bench[/] {report['model']['source']} ({report['model']['architecture']}) on "
                  f"{env['backend']} [{where}], {report['dtype']}, {env.get('threads')} threads — mode: [bold]{mode}[/]")
    load = env.get("load_avg")
    if load:
        console.print(f"  load average at start / end: {load['start']:.1f} / {load['end']:.1f} on "
                      f"{env.get('cpu_count')} CPUs")
    for note in report.get("notes", []):
        console.print(f"  note: {note}")
    if report["prefill"]:
        t = Table(title=f"Prefill, dense vs ZipVL ({mode}); limit = FLOPs bound, target ≥ {TARGET_EFFICIENCY:.0%}")
        for col in ("n", "dense ms", "zipvl ms", "speed-up", "best-of / paired", "limit", "of limit", "r_eff",
                    "KV MiB dense→zipvl"):
            t.add_column(col, justify="right")
        b_t = Table(title=f"Prefill time breakdown, ms ({mode}); selection = probe + select")
        for col in ("n", "probe", "select", "sparse attn", "evict", "rest", "selection % of dense",
                    "dense attn / rest", "time-split limit"):
            b_t.add_column(col, justify="right")
        for p in report["prefill"]:
            if "skipped" in p:
                t.add_row(str(p["n"]), f"skipped: {p['skipped']}", *[""] * 7)
                continue
            t.add_row(str(p["n"]), _ms(p["dense"]), _ms(p["zipvl"]), f"{p['speedup']:.2f}×",
                      f"{p['speedup_min']:.2f}× / {p['speedup_paired_median']:.2f}×", f"{p['limit']:.2f}×",
                      _eff(p["efficiency"]), f"{p['r_eff']:.3f}",
                      f"{p['kv_bytes_dense'] / MiB:.1f}→{p['kv_bytes_zipvl'] / MiB:.1f}")
            b, bd = p["breakdown_zipvl_s"], p["breakdown_dense_s"]
            if not b:
                continue
            bd = bd or {"attention": float("nan"), "rest": float("nan")}
            tsl = p.get("limit_from_time_split")
            b_t.add_row(str(p["n"]), *(f"{1e3 * b[k]:.0f}" for k in ("probe", "select", "sparse_attention", "evict",
                                                                          "rest")),
                        f"{p['selection_overhead_pct']:.1f}%" if p["selection_overhead_pct"] is not None else "-",
                        f"{1e3 * (bd['attention'] or float('nan')):.0f} / {1e3 * bd['rest']:.0f}",
                        f"{tsl:.2f}×" if tsl else "-")
        console.print(t)
        if b_t.row_count:
            console.print(b_t)
    if report["attention"]:
        t = Table(title=f"Attention only, one layer ({mode}); limit 1/r²")
        for col in ("n", "r", "dense ms", "zipvl ms", "probe ms", "select ms", "sparse ms", "speed-up", "sparse-only",
                    "limit", "of limit", "sparse-only of limit"):
            t.add_column(col, justify="right")
        for a in report["attention"]:
            if "skipped" in a:
                continue
            ms = a["ms"]
            t.add_row(str(a["n"]), f"{a['ratio']:.3f}", f"{ms['dense']:.1f}", f"{ms['zipvl']:.1f}",
                      f"{ms['probe']:.1f}", f"{ms['select']:.1f}", f"{ms['sparse_attention']:.1f}",
                      f"{a['speedup']:.2f}×", f"{a['speedup_sparse_only']:.2f}×", f"{a['limit']:.2f}×",
                      _eff(a["efficiency"]), _eff(a["efficiency_sparse_only"]))
        console.print(t)
    cross = report.get("crossover")
    if cross:
        pts = ", ".join(f"{p['n']}: {p['speedup']:.2f}×" for p in cross["points"])
        console.print(f"[bold]Crossover[/] ({mode}): {pts} → recommended_min_length = "
                      f"{cross['recommended_min_length']} (interpolated {cross['interpolated']}); {cross['reason']}")
        check = cross.get("fallback_check")
        if check:
            console.print(f"  fallback check at n={check['n']} with min_length={check['min_length']}: layer modes "
                          f"{check['layer_modes']} {'[green]ok[/]' if check['ok'] else '[red]NOT dense[/]'}")
        console.print(f"  {cross['how_to_apply']}")
    for d in report["decode"]:
        t = Table(title=f"Decode at context {d['context']} ({mode}): KV {d['kv_bytes_dense'] / MiB:.1f} → "
                        f"{d['kv_bytes_zipvl'] / MiB:.1f} MiB per sequence")
        for col in ("batch", "dense tok/s", "zipvl tok/s", "ratio", "traffic limit", "dense step ms", "zipvl step ms"):
            t.add_column(col, justify="right")
        for r in d["rows"]:
            t.add_row(str(r["batch"]), f"{r['dense_tps']:.1f}", f"{r['zipvl_tps']:.1f}", f"{r['ratio']:.2f}×",
                      f"{r['traffic_limit']:.2f}×", f"{r['dense_step_ms']:.1f}", f"{r['zipvl_step_ms']:.1f}")
        console.print(t)
        bd, bz = d["best"]["dense"], d["best"]["zipvl"]
        fit = d.get("memory_fit") or {}
        fits = "; ".join(f"{k} fits B={v['max_batch']}{' (measured at cap ' + str(v['measured_batch']) + ')' if v['capped'] else ''}"
                         for k, v in fit.items())
        if bd and bz:
            console.print(f"  best ({d['basis']}): dense B={bd['batch']} {bd['tokens_per_s']:.1f} tok/s, zipvl "
                          f"B={bz['batch']} {bz['tokens_per_s']:.1f} tok/s → {d['throughput_ratio']:.2f}× "
                          f"(limit {d['limit']:.2f}×, {_eff(d['efficiency'])}) {fits}")
        else:
            console.print(f"  best: does not fit the memory budget ({fits})")
    mem = report.get("memory") or {}
    for row in mem.get("per_length", []):
        pd, pz = row.get("peak_prefill_dense") or {}, row.get("peak_prefill_zipvl") or {}
        peak = ""
        if pd.get("delta_mib") is not None and pz.get("delta_mib") is not None:
            peak = f"; prefill peak +{pd['delta_mib']:.0f} vs +{pz['delta_mib']:.0f} MiB ({pd['method']})"
        console.print(f"Memory n={row['n']} ({mode}): KV {row['kv_mib_dense']:.1f} → {row['kv_mib_zipvl']:.1f} MiB "
                      f"(saved {row['kv_mib_saved']:.1f} MiB){peak}; weights {mem['weights_mib']:.0f} MiB")
    from .peer_tables import render_peers

    render_peers(report, console)


def plot(report: dict, path: str | Path) -> Path:
    """PNG: latency vs length (dense vs ZipVL), kept ratio per layer, decode tokens/s vs batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    pts = [p for p in report["prefill"] if "skipped" not in p]
    ax = axes[0]
    if pts:
        n = [p["n"] for p in pts]
        ax.plot(n, [1e3 * p["dense"]["median_s"] for p in pts], "o-", label="dense (SDPA)")
        ax.plot(n, [1e3 * p["zipvl"]["median_s"] for p in pts], "s-", label="ZipVL")
        for p in pts:
            ax.annotate(f"{p['speedup']:.2f}× (limit {p['limit']:.2f}×)", (p["n"], 1e3 * p["zipvl"]["median_s"]),
                        textcoords="offset points", xytext=(4, -12), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend()
    ax.set(title="prefill latency", xlabel="prompt tokens", ylabel="ms")
    ax = axes[1]
    for p in pts:
        ratios = (p.get("zipvl_stats") or {}).get("layer_ratios") or []
        ax.plot(range(len(ratios)), ratios, ".-", label=f"n={p['n']}")
    ax.set(title="kept ratio per layer", xlabel="layer", ylabel="p / n", ylim=(0, 1.05))
    if pts:
        ax.legend(fontsize=7)
    ax = axes[2]
    for d in report["decode"]:
        b = [r["batch"] for r in d["rows"]]
        ax.plot(b, [r["dense_tps"] for r in d["rows"]], "o--", label=f"dense, ctx {d['context']}")
        ax.plot(b, [r["zipvl_tps"] for r in d["rows"]], "s-", label=f"ZipVL, ctx {d['context']}")
    ax.set(title="decode throughput", xlabel="batch", ylabel="tokens/s")
    if report["decode"]:
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
    fig.suptitle(f"zipvl-bench: {report['model']['source']} — {report['mode']} — {report['environment']['backend']}",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
