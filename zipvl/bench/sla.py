# SPDX-License-Identifier: Apache-2.0
"""The latency SLA gate: ``--sla ttft_ms=800,decode_tps=40,kv_mib=512``.

Each budget is checked against the ZipVL numbers of the report (the configuration being deployed):

- ``ttft_ms``    <= : ZipVL prefill median latency at the longest measured prompt length (time to first token);
- ``decode_tps`` >= : ZipVL decode tokens/s at its best batch (under ``--memory-budget`` if given), longest context;
- ``kv_mib``     <= : ZipVL KV-cache MiB of one sequence at the longest measured prompt length.

A budget whose metric was not measured (e.g. ``decode_tps`` with decode skipped) fails: an SLA nobody checked is
not met.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ZipVLConfigError
from .memory import MiB

# metric -> (direction, description)
METRICS = {
    "ttft_ms": ("max", "ZipVL prefill latency (ms) at the longest prompt"),
    "decode_tps": ("min", "ZipVL decode tokens/s at the best batch, longest context"),
    "kv_mib": ("max", "ZipVL KV cache MiB per sequence at the longest prompt"),
    "itl_ms": ("max", "p99 inter-token latency (ms) under load (zipvl-bench --serve only)"),
    "rss_growth_mib": ("max", "server memory after the load minus its warmed-up baseline, MiB, with no KV held "
                              "(zipvl-bench --serve only; checked with any budget, 64 by default)"),
}
SLA_EXIT_CODE = 3


@dataclass
class SLACheck:
    metric: str
    budget: float
    value: float | None
    where: str

    @property
    def ok(self) -> bool:
        if self.value is None:
            return False
        return self.value <= self.budget if METRICS[self.metric][0] == "max" else self.value >= self.budget

    @property
    def reason(self) -> str:
        if self.value is None:
            return f"{self.metric}: not measured ({self.where})"
        op = ">" if METRICS[self.metric][0] == "max" else "<"
        return f"{self.metric} {self.value:.4g} {op} budget {self.budget:g} ({self.where})"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "budget": self.budget, "value": self.value, "where": self.where, "ok": self.ok}


def parse_sla(text: str) -> dict[str, float]:
    """"ttft_ms=800,decode_tps=40" -> {"ttft_ms": 800.0, "decode_tps": 40.0}; unknown keys are an error."""
    budgets: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in METRICS:
            raise ZipVLConfigError(f"bad --sla item {item!r}: expected KEY=VALUE with KEY in {', '.join(METRICS)}")
        try:
            budgets[key] = float(value)
        except ValueError:
            raise ZipVLConfigError(f"bad --sla value in {item!r}: not a number") from None
    if not budgets:
        raise ZipVLConfigError("--sla is empty: give e.g. ttft_ms=800,decode_tps=40,kv_mib=512")
    return budgets


def _measured(report: dict, metric: str) -> tuple[float | None, str]:
    prefill = [p for p in report.get("prefill", []) if "skipped" not in p]
    decode = report.get("decode", [])
    if metric in ("ttft_ms", "kv_mib") and prefill:
        p = max(prefill, key=lambda p: p["n"])
        if metric == "ttft_ms":
            return 1e3 * p["zipvl"]["median_s"], f"zipvl prefill at n={p['n']}"
        return p["kv_bytes_zipvl"] / MiB, f"zipvl KV at n={p['n']}"
    if metric == "kv_mib" and decode:
        d = max(decode, key=lambda d: d["context"])
        return d["kv_bytes_zipvl"] / MiB, f"zipvl KV at context {d['context']}"
    if metric == "decode_tps" and decode:
        d = max(decode, key=lambda d: d["context"])
        best = d["best"]["zipvl"]
        if best is None:
            return None, f"no batch fits the memory budget at context {d['context']}"
        return best["tokens_per_s"], f"zipvl decode at context {d['context']}, batch {best['batch']}"
    return None, "the benchmark that measures it was skipped"


def check_sla(report: dict, budgets: dict[str, float]) -> list[SLACheck]:
    """One :class:`SLACheck` per budget, against the report's ZipVL numbers."""
    checks = []
    for metric, budget in budgets.items():
        value, where = _measured(report, metric)
        checks.append(SLACheck(metric, budget, value, where))
    return checks


def sla_summary(checks: list[SLACheck]) -> str:
    """One line: "SLA met: ..." or "SLA missed: <first failing reason>[; +k more]"."""
    failed = [c for c in checks if not c.ok]
    if not failed:
        return "SLA met: " + ", ".join(f"{c.metric} {c.value:.4g} (budget {c.budget:g})" for c in checks)
    more = f"; +{len(failed) - 1} more" if len(failed) > 1 else ""
    return f"SLA missed: {failed[0].reason}{more}"
