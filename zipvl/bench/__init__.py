# SPDX-License-Identifier: Apache-2.0
"""zipvl.bench: ZipVL vs the dense baseline — prefill latency, decode throughput, memory, limits, SLA gate.

Python API::

    from zipvl.bench import BenchConfig, run_bench
    report = run_bench(BenchConfig(model="default", lengths=[2048, 4096]))

CLI: ``zipvl-bench --help`` (see docs/bench.md).
"""

from .backends import Backend, BackendUnavailableError, OnnxRuntimeBackend, TorchBackend, make_backend
from .limits import (ModelShape, attention_limit, decode_limit, flops_split, prefill_limit, time_split_limit)
from .prefill import find_crossover
from .runner import BenchConfig, mode_label, run_bench
from .sla import check_sla, parse_sla, sla_summary

__all__ = ["BenchConfig", "run_bench", "mode_label", "Backend", "TorchBackend", "OnnxRuntimeBackend",
           "BackendUnavailableError", "make_backend", "ModelShape", "prefill_limit", "attention_limit",
           "decode_limit", "flops_split", "time_split_limit", "find_crossover", "parse_sla", "check_sla",
           "sla_summary"]
