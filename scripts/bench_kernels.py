#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Time the zipvl CUDA kernels against dense causal SDPA (CUDA events; GPU box only).

For each sequence length: dense SDPA (FlashAttention backend where available), the ZipVLTokenSelect kernels,
the ZipVLSparseAttention kernels on the kept set they chose and on synthetic kept ratios, and the PyTorch
reference of the gathered attention (gather + SDPA) on the same kept sets.

    python scripts/bench_kernels.py                                  # 4K / 16K / 64K, 32 heads / 8 KV, d=128, bf16
    python scripts/bench_kernels.py --lengths 4096 16384 --dtype fp16 --ratios 0.3 0.5 --json out.json

Random inputs give flat attention (a high kept ratio at a given tau): the --ratios rows show what the sparse
kernels cost at the ratios real models reach (see docs/method.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_time_ms(fn, warmup: int, iters: int) -> float:
    """Median of ``iters`` timings with CUDA events, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def random_kept(n: int, ratio: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, n) ascending kept indices padded with -1, and (1,) count, for a random subset of ``ratio * n``."""
    count = max(1, round(ratio * n))
    idx = torch.randperm(n - 1, generator=gen)[: count - 1].sort().values
    idx = torch.cat([idx, torch.tensor([n - 1])])  # the last token is always kept by the real selection
    kept = torch.full((1, n), -1, dtype=torch.int32)
    kept[0, :count] = idx.to(torch.int32)
    return kept.cuda(), torch.tensor([count], dtype=torch.int32, device="cuda")


def mask_of(kept_indices: torch.Tensor, kept_count: torch.Tensor) -> torch.Tensor:
    n = kept_indices.shape[1]
    mask = torch.zeros(1, n, dtype=torch.bool, device=kept_indices.device)
    mask[0, kept_indices[0, : int(kept_count[0])].long()] = True
    return mask


def bench_length(n: int, args, cuda_ops, zipvl) -> list[dict]:
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(1, args.heads, n, args.head_dim, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(1, args.kv_heads, n, args.head_dim, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(1, args.kv_heads, n, args.head_dim, device="cuda", dtype=dtype, generator=gen)
    probes = zipvl.probe_positions(n).cuda()
    rows = []

    def timed(fn) -> float:
        return cuda_time_ms(fn, args.warmup, args.iters)

    def row(name, ms, ratio=None):
        rows.append({"n": n, "op": name, "ms": round(ms, 4), "ratio": ratio})

    row("dense_sdpa_causal", timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)))
    row("zipvl_token_select", timed(lambda: cuda_ops.token_select(q, k, probes, args.tau)))
    row("reference_select_tokens", timed(lambda: zipvl.select_tokens(q, k, probes, args.tau)))
    kept_indices, kept_count, _ = cuda_ops.token_select(q, k, probes, args.tau)
    cases = [(f"tau={args.tau}", kept_indices, kept_count)]
    cpu_gen = torch.Generator().manual_seed(n)
    cases += [(f"ratio={r}", *random_kept(n, r, cpu_gen)) for r in args.ratios]
    for label, idx, cnt in cases:
        ratio = round(int(cnt[0]) / n, 4)
        mask = mask_of(idx, cnt)
        sparse = functools.partial(cuda_ops.sparse_attention, q, k, v, idx, cnt)
        gathered = functools.partial(zipvl.sparse_attention, q, k, v, mask)
        row(f"zipvl_sparse_attention[{label}]", timed(sparse), ratio)
        row(f"reference_gather_sdpa[{label}]", timed(gathered), ratio)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--tau", type=float, default=0.95)
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.3, 0.5])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA device", file=sys.stderr)
        return 2

    import zipvl
    from zipvl.plugins import cuda_ops

    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | H={args.heads} H_kv={args.kv_heads} "
          f"d={args.head_dim} {args.dtype} tau={args.tau}")
    print(f"{'n':>7} {'op':<44} {'ratio':>6} {'ms':>10}")
    rows = []
    for n in args.lengths:
        for r in bench_length(n, args, cuda_ops, zipvl):
            rows.append(r)
            print(f"{r['n']:>7} {r['op']:<44} {'' if r['ratio'] is None else r['ratio']:>6} {r['ms']:>10.3f}")
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
