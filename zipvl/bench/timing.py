# SPDX-License-Identifier: Apache-2.0
"""Clocks (wall clock on CPU, CUDA events on GPU), sample summaries and interleaved A/B measurement.

Every benchmark number comes from :func:`interleave`: warm-up runs first, then repeats in which the two variants
alternate order (A B, B A, A B, ...), so slow drift of the machine (thermal, other tenants) hits both equally.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class Clock:
    """Wall-clock timing of a callable on the host (CPU tensors: the work is done when the call returns)."""

    kind = "perf_counter"

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def sync(self) -> None:
        """Wait for queued device work (nothing to wait for on CPU)."""

    def time(self, fn: Callable[[], object]) -> tuple[float, object]:
        """Run ``fn`` once -> (seconds, its result)."""
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out


class CudaClock(Clock):
    """CUDA-event timing: the device is synchronised before the start event, and the end event is waited on, so the
    interval covers all GPU work ``fn`` queued, host stalls inside ``fn`` included (they appear as gaps)."""

    kind = "cuda_events"

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def time(self, fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.sync()
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, out


def make_clock(device: torch.device | str) -> Clock:
    device = torch.device(device)
    return CudaClock(device) if device.type == "cuda" else Clock(device)


@dataclass
class Samples:
    """Repeated timings of one variant (seconds)."""

    seconds: list[float] = field(default_factory=list)

    def add(self, s: float) -> None:
        self.seconds.append(float(s))

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative range of the repeats (0 with one repeat)."""
        if len(self.seconds) < 2:
            return 0.0
        return (max(self.seconds) - min(self.seconds)) / self.median

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": min(self.seconds, default=float("nan")),
                "max_s": max(self.seconds, default=float("nan")), "spread": self.spread, "samples_s": self.seconds}


def interleave(variants: dict[str, Callable[[bool], float]], repeats: int, warmup: int, tick=None) -> dict[str, Samples]:
    """Run each variant ``warmup`` times (discarded) then ``repeats`` times, alternating the order every round.

    ``variants[name](measured)`` runs one repetition and returns its seconds; ``measured`` is False for warm-ups.
    ``tick(name)`` is called after every run (progress bar).
    """
    names = list(variants)
    out = {name: Samples() for name in names}
    for i in range(warmup + repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            seconds = variants[name](i >= warmup)
            if i >= warmup:
                out[name].add(seconds)
            if tick is not None:
                tick(name)
    return out


def median_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median of several {section: seconds} dicts (missing keys count as 0)."""
    keys = sorted({k for d in dicts for k in d})
    return {k: statistics.median([d.get(k, 0.0) for d in dicts]) for k in keys} if dicts else {}
