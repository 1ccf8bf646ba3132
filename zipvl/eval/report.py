# SPDX-License-Identifier: Apache-2.0
"""Reports: ``results.json`` (everything), ``report.md`` (tables), and per task ``tau_sweep_<task>.png`` (accuracy
and fidelity vs measured kept ratio, the paper's Fig. 5 shape) and ``layer_ratios_<task>.png`` (kept ratio per
layer, Fig. 3 shape)."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import adaptive_vs_fixed, pareto_front


def _f(x, digits=3, pct=False):
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}f}"


def method_table(result: dict) -> list[str]:
    rows = [("| method | target ratio | kept ratio | kept visual / text | accuracy | exact match | top-1 (1st) | "
             "top-1 (answer) | KL 1st | KL mean | attn FLOPs -% | KV -% |"), "|" + "---|" * 12]
    for key, entry in result["methods"].items():
        s = entry["summary"]
        target = entry["target_ratio"]
        target = target if isinstance(target, str) else _f(target)
        split = (f"{_f(s.get('mean_visual_kept'), 2)} / {_f(s.get('mean_text_kept'), 2)}"
                 if s.get("mean_visual_kept") is not None else "-")
        rows.append(f"| {key} | {target} | {_f(s['mean_ratio'])} | {split} | {_f(s['accuracy'], 2)} | "
                    f"{_f(s['exact_match'], 2)} "
                    f"| {_f(s['first_top1'], 2)} | {_f(s['top1_agreement'], 2)} | {_f(s['first_kl'], 4)} | "
                    f"{_f(s['mean_kl'], 4)} | {_f(s['attn_flops_reduction'], pct=True)} | "
                    f"{_f(s['kv_reduction'], pct=True)} |")
    return rows


def needle_grid(result: dict) -> list[str]:
    """Rows: context x depth; cells: needles retrieved / needles, per method."""
    keys = list(result["methods"])
    cells: dict[tuple, dict[str, list]] = {}
    for key in keys:
        for rec in result["methods"][key]["items"]:
            m = rec["meta"]
            cell = cells.setdefault((m["context"], m["depth"]), {}).setdefault(key, [])
            cell.append(rec["score"] or 0.0)
    rows = ["| context | depth | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for (ctx, depth), per in sorted(cells.items()):
        rows.append(f"| {ctx} | {depth:g} | " + " | ".join(f"{int(sum(per[k]))}/{len(per[k])}" for k in keys) + " |")
    totals = [sum(sum(per[k]) for per in cells.values()) for k in keys]
    n = [sum(len(per[k]) for per in cells.values()) for k in keys]
    rows.append("| all | | " + " | ".join(f"**{int(t)}/{m}**" for t, m in zip(totals, n)) + " |")
    return rows


def fixed_table(result: dict) -> list[str]:
    rows = adaptive_vs_fixed(result)
    if not rows:
        return []
    out = [("| tau | ZipVL ratio | fixed ratio | acc ZipVL / fixed | exact ZipVL / fixed | top-1 ZipVL / fixed | "
            "KL ZipVL / fixed |"), "|" + "---|" * 7]
    for r in rows:
        out.append(f"| {r['tau']:g} | {_f(r['zipvl_ratio'])} | {_f(r['fixed_ratio'])} | "
                   f"{_f(r['zipvl_accuracy'], 2)} / {_f(r['fixed_accuracy'], 2)} | "
                   f"{_f(r['zipvl_exact_match'], 2)} / {_f(r['fixed_exact_match'], 2)} | "
                   f"{_f(r['zipvl_top1_agreement'], 2)} / {_f(r['fixed_top1_agreement'], 2)} | "
                   f"{_f(r['zipvl_mean_kl'], 4)} / {_f(r['fixed_mean_kl'], 4)} |")
    return out


def pareto_table(result: dict) -> list[str]:
    """The selection study: every ZipVL variant x tau by kept ratio; * = on the (kept ratio, same answer) front."""
    points = pareto_front(result)
    if len({p["key"].rsplit("@", 1)[0] for p in points}) < 2:
        return []
    out = ["| front | variant @ tau | kept ratio | kept visual | attn FLOPs -% | same answer as dense | accuracy | "
           "KL mean |", "|" + "---|" * 8]
    for p in points:
        out.append(f"| {'*' if p['front'] else ''} | {p['key']} | {_f(p['ratio'])} | {_f(p['visual_kept'], 2)} | "
                   f"{_f(p['flops_saved'], pct=True)} | {_f(p['fidelity'], 2)} | {_f(p['accuracy'], 2)} | "
                   f"{_f(p['mean_kl'], 4)} |")
    return out


def retention_lines(result: dict) -> list[str]:
    out = []
    for key, entry in result["methods"].items():
        keep = entry["summary"].get("focus_retention")
        if keep:
            worst = sorted(range(len(keep)), key=lambda i: keep[i])[:5]
            out.append(f"- `{key}`: mean {sum(keep) / len(keep):.2f}; fewest kept at layers "
                       + ", ".join(f"{i} ({keep[i]:.2f})" for i in worst))
    return out


def markdown(report: dict) -> str:
    lines = ["# zipvl-eval report", "", f"- model: {report['model']}", f"- settings: `{json.dumps(report['settings'])}`",
             ("- fidelity = the method vs the dense model on the same prompt: top-1 agreement and KL(dense || method) "
              "of next-token distributions along the dense greedy answer (teacher-forced); exact match = the greedy "
              "answer is token-for-token the dense one."),
             ("- attention FLOPs and KV reductions are for the prefill (probe/scoring cost included); SnapKV prefills "
              "densely, so it saves KV only."), ""]
    for name, result in report["tasks"].items():
        lines += [f"## {name} ({result['n_items']} items)", ""]
        if result.get("note"):
            lines += [f"> {result['note']}", ""]
        lines += method_table(result) + [""]
        if name == "needle":
            lines += ["Needle grid (retrieved / needles):", ""] + needle_grid(result) + [""]
            ret = retention_lines(result)
            if ret:
                lines += ["Needle-answer tokens left in each layer's cache after prefill (1.0 = all):", ""] + ret + [""]
        front = pareto_table(result)
        if front:
            lines += ["Selection study (ZipVL variants; * = Pareto front of kept ratio vs same answer as dense):", ""]
            lines += front + [""]
        fixed = fixed_table(result)
        if fixed:
            lines += ["Adaptive (ZipVL) vs fixed ratio, same scorer, same mean ratio:", ""] + fixed + [""]
    return "\n".join(lines) + "\n"


def plot_task(result: dict, out_dir: Path, name: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    methods = result["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    first = ("accuracy", "accuracy")
    for ax, (metric, label) in zip(axes, (first, ("exact_match", "exact match vs dense"))):
        dense = methods.get("dense", {}).get("summary", {}).get(metric)
        if dense is not None:
            ax.axhline(dense, color="k", ls="--", lw=1, label="dense")
        series = {}
        for key, e in methods.items():
            if e["method"] == "dense" or e["summary"].get(metric) is None:
                continue
            label = key.rsplit("@", 1)[0] if e["method"] == "variant" else e["method"]
            series.setdefault(label, []).append((e["summary"]["mean_ratio"], e["summary"][metric], e["tau"]))
        for method, pts in series.items():
            pts.sort()
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker="o", ls="-" if len(pts) > 1 else "", label=method)
            if method == "zipvl":
                for x, y, t in pts:
                    ax.annotate(f"τ={t:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("measured mean kept ratio")
        ax.set_ylabel(label)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{name}: accuracy and fidelity vs kept ratio")
    fig.tight_layout()
    path = out_dir / f"tau_sweep_{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    fig, ax = plt.subplots(figsize=(8, 4))
    for key, e in methods.items():
        ratios = e["summary"].get("layer_ratios")
        if not ratios or e["method"] not in ("zipvl", "fastv", "snapkv"):
            continue
        line, = ax.plot(range(len(ratios)), ratios, marker=".", label=key, ls="-" if e["method"] == "zipvl" else ":")
        visual = e["summary"].get("visual_kept")
        if visual and e["method"] == "zipvl":  # image tasks: the visual tokens alone, same colour, dashed
            ax.plot(range(len(visual)), visual, ls="--", color=line.get_color(), label=f"{key} visual")
    ax.set_xlabel("layer")
    ax.set_ylabel("kept ratio p/n")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: kept ratio per layer")
    fig.tight_layout()
    path = out_dir / f"layer_ratios_{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)
    return written


def write_reports(report: dict, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write results.json, report.md and the plots into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "report.md"]
    for name, result in report["tasks"].items():
        result["adaptive_vs_fixed"] = adaptive_vs_fixed(result)
    paths[0].write_text(json.dumps(report, indent=1, default=str))
    paths[1].write_text(markdown(report))
    if plots:
        for name, result in report["tasks"].items():
            paths += [out / p for p in plot_task(result, out, name)]
    return paths
