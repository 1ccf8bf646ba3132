# SPDX-License-Identifier: Apache-2.0
"""The peers' faces: terminal tables (rich) and one markdown table set, from a report's ``peer_comparison``,
``peers`` and ``fresh_peaks`` sections (see :mod:`.peers`, :mod:`.peak`)."""

from __future__ import annotations


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _peak(p: dict | None) -> float | None:
    # In one process every model the run loaded is resident: what a call added over its entry level is comparable.
    return None if not p else p.get("delta_mib")


def prefill_rows(report: dict) -> list[list[str]]:
    """One row per (peer, length): ms of the peer, dense and ZipVL, both speed-ups, the limit, ZipVL's share of it."""
    cmp = report.get("peer_comparison")
    if not cmp:
        return []
    rows = []
    for r in cmp["prefill"]:
        ok = r["zipvl_of_limit"] is not None and r["zipvl_of_limit"] >= cmp["target_of_limit"]
        rows.append([r["peer"], str(r["n"]), f"{r['peer_ms']:.0f}", f"{r['dense_ms']:.0f}", f"{r['zipvl_ms']:.0f}",
                     f"{r['dense_speedup']:.2f}×", f"{r['zipvl_speedup']:.2f}×", _f(r["limit"], ".2f") + "×",
                     (f"{100 * r['zipvl_of_limit']:.0f}% " + ("✓" if ok else "✗")) if r["zipvl_of_limit"] else "-"])
    return rows


PREFILL_HEAD = ["peer", "n", "peer ms", "dense ms", "ZipVL ms", "dense vs peer", "ZipVL vs peer", "FLOPs limit",
                "ZipVL vs peer / limit"]
DECODE_HEAD = ["peer", "context", "B", "peer tok/s", "dense tok/s", "ZipVL tok/s", "dense / peer", "ZipVL / peer"]
PEAK_HEAD = ["n", "dense peak", "ZipVL peak", "ZipVL peak, shared weights", "dense loaded", "ZipVL loaded",
             "ZipVL loaded, shared", "interpreter", "bound: weights + KV + 1 GiB", "ZipVL, shared: peak - interpreter",
             "dense cold s", "ZipVL cold s"]


def decode_rows(report: dict) -> list[list[str]]:
    return [[r["peer"], str(r["context"]), str(r["batch"]), f"{r['peer_tps']:.1f}", f"{r['dense_tps']:.1f}",
             f"{r['zipvl_tps']:.1f}", f"{r['dense_ratio']:.2f}×", f"{r['zipvl_ratio']:.2f}×"]
            for r in (report.get("peer_comparison") or {}).get("decode", [])]


def peak_rows(report: dict) -> list[list[str]]:
    """MiB per length, fresh processes. The bound is for the engine's own footprint (peak - the interpreter's RSS
    before the engine loads); with private weights ONNX Runtime holds a copy per graph (prefill and decode)."""
    fresh = report.get("fresh_peaks") or {}
    rows = []
    for i, d in enumerate(fresh.get("dense", [])):
        z, s = ((fresh.get(k) or [])[i] if i < len(fresh.get(k) or []) else {} for k in ("zipvl", "zipvl_shared"))
        if any("skipped" in p or not p for p in (d, z, s)):
            rows.append([str(d["n"])] + [p.get("skipped", "-") if p else "-" for p in (d, z, s)]
                        + [""] * (len(PEAK_HEAD) - 4))
            continue
        own = s["peak_mib"] - s["base_mib"] if s.get("base_mib") is not None else None
        bound = s.get("bound_mib")
        check = "-" if own is None or bound is None else f"{own:.0f} " + ("✓" if own <= bound else "✗")
        rows.append([str(d["n"]), f"{d['peak_mib']:.0f}", f"{z['peak_mib']:.0f}", f"{s['peak_mib']:.0f}",
                     f"{d['loaded_mib']:.0f}", f"{z['loaded_mib']:.0f}", f"{s['loaded_mib']:.0f}",
                     _f(s.get("base_mib"), ".0f"), _f(bound, ".0f"), check,
                     f"{d['cold_prefill_s']:.1f}", f"{z['cold_prefill_s']:.1f}"])
    return rows


def in_process_peak_rows(report: dict) -> list[list[str]]:
    """Sampled in-process peaks of the last repeat at each length: the backend's variants and every peer."""
    peers = report.get("peers") or {}
    rows = []
    for p in report.get("prefill", []):
        if "skipped" in p:
            continue
        peaks = p.get("peak_memory") or {}
        row = [str(p["n"]), _f(_peak(peaks.get("dense")), ".0f"), _f(_peak(peaks.get("zipvl")), ".0f")]
        for peer in peers.values():
            match = next((q for q in peer["prefill"] if q["n"] == p["n"] and "skipped" not in q), None)
            row.append(_f(_peak(match and match.get("peak_memory")), ".0f"))
        rows.append(row)
    return rows


def _sections(report: dict):
    peers = list(report.get("peers") or {})
    yield "Prefill vs peers (speed-up = peer ms / ours; limit = ZipVL's FLOPs bound over dense)", PREFILL_HEAD, \
        prefill_rows(report)
    yield "Decode vs peers (tokens/s at the same context and batch)", DECODE_HEAD, decode_rows(report)
    yield "Prefill peak RSS added by the call, in process (sampled, last repeat), MiB", \
        ["n", "dense", "ZipVL"] + [f"{p} (peer)" for p in peers], in_process_peak_rows(report)
    if report.get("fresh_peaks"):
        yield "Prefill peak RSS of the engines, one fresh process per length (VmHWM)", PEAK_HEAD, peak_rows(report)


def render_peers(report: dict, console) -> None:
    from rich.table import Table

    if not report.get("peer_comparison") and not report.get("fresh_peaks"):
        return
    for title, head, rows in _sections(report):
        if not rows:
            continue
        t = Table(title=f"{title} ({report['mode']})")
        for h in head:
            t.add_column(h, justify="left" if h == "peer" else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)


def markdown(report: dict) -> str:
    """The same tables as markdown (for docs)."""
    out = []
    for title, head, rows in _sections(report):
        if not rows:
            continue
        out += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)
