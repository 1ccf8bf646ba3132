# SPDX-License-Identifier: Apache-2.0
"""zipvl.bench: ZipVL vs the dense baseline — prefill latency, decode throughput, memory, limits, SLA gate.

Python API::

    from zipvl.bench import BenchConfig, run_bench
    report = run_bench(BenchConfig(model="default", lengths=[2048, 4096]))

CLI: ``zipvl-bench --help`` (see docs/bench.md).
"""

from .backends import Backend, BackendUnavailableError, OnnxRuntimeBackend, TorchBackend, make_backend
from .limits import ModelShape, attention_limit, decode_limit, flops_split, prefill_limit, time_split_limit
from .prefill import find_crossover
from .runner import BenchConfig, mode_label, run_bench
from .sla import check_sla, parse_sla, sla_summary

__all__ = [
           "Backend",
           "BackendUnavailableError",
           "BenchConfig",
           "ModelShape",
           "OnnxRuntimeBackend",
           "TorchBackend",
           "attention_limit",
           "check_sla",
           "decode_limit",
           "find_crossover",
           "flops_split",
           "make_backend",
           "mode_label",
           "parse_sla",
           "prefill_limit",
           "run_bench",
           "sla_summary",
           "time_split_limit",
]
