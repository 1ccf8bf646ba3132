# SPDX-License-Identifier: Apache-2.0
"""Peers: dense baselines from outside zipvl, measured in the same run as the backend's dense and ZipVL variants.

- ``torch``: the eager PyTorch model the bench loaded (SDPA attention, DynamicCache, ``logits_to_keep=1``);
- ``ortgenai``: ONNX Runtime GenAI running the model its own builder made from the same local checkpoint
  (optional extra ``zipvl[peers]``; :mod:`.ortgenai`).

Per peer: prefill seconds per length (warm-up, then repeats; median) with the in-process peak RSS of the last
repeat, and decode tokens/s per batch at each context (warm-up steps dropped, median step). :func:`compare` puts
every peer beside the backend's numbers: speed-up of ZipVL and of dense over the peer, and ZipVL's against the
run's FLOPs limit.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from ..errors import ZipVLConfigError
from .limits import TARGET_EFFICIENCY
from .memory import PeakMemory
from .timing import Samples

PEERS = ("torch", "ortgenai")


class Peer:
    """A dense baseline: one prefill, and decode steps at a batch. Subclasses implement the three methods."""

    name = "base"

    def describe(self) -> dict:
        raise NotImplementedError

    def prefill(self, ids: torch.Tensor) -> float:
        """Seconds of one prefill of ``ids`` (1, n)."""
        raise NotImplementedError

    def decode_steps(self, ids: torch.Tensor, batch: int, steps: int) -> list[float]:
        """Seconds of each of ``steps`` greedy decode steps of ``batch`` copies of the prompt ``ids`` (1, n)."""
        raise NotImplementedError

    def max_length(self) -> int | None:
        """The longest prompt + generated tokens this peer can hold (None: no limit of its own)."""
        return None


class TorchPeer(Peer):
    """Eager PyTorch, dense: the bench's own torch backend with ZipVL off."""

    name = "torch"

    def __init__(self, model, device="cpu"):
        from .backends import TorchBackend

        self.backend = TorchBackend(model, policy=None, device=device)

    def describe(self) -> dict:
        return {"peer": "eager PyTorch dense (SDPA, DynamicCache)", "threads": torch.get_num_threads(),
                "torch": torch.__version__}

    def prefill(self, ids):
        return self.backend.prefill(ids, sparse=False).seconds

    def decode_steps(self, ids, batch, steps):
        pre = self.backend.prefill(ids, sparse=False)
        cache, token = self.backend.replicate(pre.cache, batch), pre.next_token.expand(batch, 1).contiguous()
        times = []
        for _ in range(steps):
            seconds, token = self.backend.decode_step(cache, token, sparse=False)
            times.append(seconds)
        return times


def parse_peers(text: str | None) -> tuple[str, ...]:
    names = tuple(s.strip() for s in (text or "").split(",") if s.strip())
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise ZipVLConfigError(f"unknown peer(s) {bad}; peers are {', '.join(PEERS)}")
    return names


def make_peers(names, bench, device="cpu", ortgenai_model: str | None = None, threads: int | None = None) -> list:
    """Peer objects by name, for the loaded bench model (``ortgenai`` builds or reuses its model folder)."""
    peers = []
    for name in names:
        if name == "torch":
            peers.append(TorchPeer(bench.model, device))
        else:
            from .ortgenai import OrtGenAIPeer, model_folder

            peers.append(OrtGenAIPeer(ortgenai_model or model_folder(bench), threads=threads))
    return peers


def _measure_prefill(peer: Peer, ids, repeats: int, warmup: int) -> dict:
    samples = Samples()
    for i in range(warmup + repeats):
        with PeakMemory("cpu") as pm:  # the last repeat's peak is the one reported: everything warm by then
            seconds = peer.prefill(ids)
        if i >= warmup:
            samples.add(seconds)
    return {"n": int(ids.shape[1]), **samples.to_dict(), "peak_memory": pm.to_dict()}


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _guarded(n: int, fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a peer's failure is its row, not the end of the whole run
        return {"n": n, "skipped": _reason(e)}


def run_peers(peers: list[Peer], make_ids: Callable[[int], torch.Tensor], lengths: list[int], contexts: list[int],
              batches: list[int], repeats: int, warmup: int, steps: int, warmup_steps: int, tick=None) -> dict:
    """Every peer's prefill sweep and decode sweep -> {peer name: {"describe", "prefill": [...], "decode": [...]}}."""
    out = {}
    for peer in peers:
        limit = peer.max_length()
        result: dict = {"describe": peer.describe(), "prefill": [], "decode": []}
        for n in lengths:
            if limit is not None and n > limit:
                result["prefill"].append({"n": n, "skipped": f"beyond the peer's context length ({limit})"})
                continue
            result["prefill"].append(_guarded(n, _measure_prefill, peer, make_ids(n), repeats, warmup))
            if tick is not None:
                tick(f"{peer.name} prefill n={n}")
        for c in contexts:
            if limit is not None and c + warmup_steps + steps > limit:
                result["decode"].append({"context": c, "rows": [], "skipped": f"beyond the peer's context ({limit})"})
                continue
            ids, rows = make_ids(c), []
            for b in sorted(set(batches)):
                try:
                    times = peer.decode_steps(ids, b, warmup_steps + steps)[warmup_steps:]
                except Exception as e:  # noqa: BLE001 - a peer's failure is its row, not the end of the run
                    rows.append({"batch": b, "skipped": _reason(e)})
                    continue
                step = statistics.median(times)
                rows.append({"batch": b, "step_ms": 1e3 * step, "tokens_per_s": b / step})
                if tick is not None:
                    tick(f"{peer.name} decode c={c} B={b}")
            result["decode"].append({"context": c, "rows": rows})
        out[peer.name] = result
    return out


def compare(report: dict) -> dict:
    """Ratios of the backend's ZipVL and dense numbers to every peer's, per prefill length and decode point.

    Prefill: ``zipvl_speedup`` = peer / ZipVL seconds, ``dense_speedup`` = peer / dense seconds, ``limit`` = the
    run's FLOPs limit of ZipVL over dense at that length, ``zipvl_of_limit`` = zipvl_speedup / limit (target
    ``TARGET_EFFICIENCY``). Decode: ZipVL's and dense's tokens/s over the peer's at the same context and batch.
    """
    ours = {p["n"]: p for p in report.get("prefill", []) if "skipped" not in p}
    decode = {(d["context"], r["batch"]): r for d in report.get("decode", []) for r in d["rows"]}
    prefill_rows, decode_rows = [], []
    for name, peer in (report.get("peers") or {}).items():
        for p in peer["prefill"]:
            if "skipped" in p or p["n"] not in ours:
                continue
            o, s = ours[p["n"]], p["median_s"]
            z, d = o["zipvl"]["median_s"], o["dense"]["median_s"]
            lim = o.get("limit")
            row = {"peer": name, "n": p["n"], "peer_ms": 1e3 * s, "zipvl_ms": 1e3 * z, "dense_ms": 1e3 * d,
                   "zipvl_speedup": s / z, "dense_speedup": s / d, "limit": lim,
                   "zipvl_of_limit": (s / z) / lim if lim else None}
            row["zipvl_meets_limit"] = row["zipvl_of_limit"] is not None and row["zipvl_of_limit"] >= TARGET_EFFICIENCY
            prefill_rows.append(row)
        for d in peer["decode"]:
            for r in d["rows"]:
                mine = decode.get((d["context"], r["batch"]))
                if mine is None or "skipped" in r:
                    continue
                decode_rows.append({"peer": name, "context": d["context"], "batch": r["batch"],
                                    "peer_tps": r["tokens_per_s"], "zipvl_tps": mine["zipvl_tps"],
                                    "dense_tps": mine["dense_tps"], "zipvl_ratio": mine["zipvl_tps"] / r["tokens_per_s"],
                                    "dense_ratio": mine["dense_tps"] / r["tokens_per_s"]})
    return {"prefill": prefill_rows, "decode": decode_rows, "target_of_limit": TARGET_EFFICIENCY}
