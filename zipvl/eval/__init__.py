# SPDX-License-Identifier: Apache-2.0
"""zipvl-eval: accuracy and fidelity of ZipVL against the dense model and peer methods at a matched kept ratio.

    from zipvl.eval import run, write_reports, TaskOptions, EvalSettings
    report = run(model, processor, tasks=("needle",), options=TaskOptions(contexts=(1000,)),
                 settings=EvalSettings(taus=(0.96, 0.975, 0.99)))
    write_reports(report, "eval-out")
"""

from .api import run
from .evaluate import EvalSettings, adaptive_vs_fixed, evaluate_items, summarize
from .metrics import (
                      first_divergence,
                      keyword_score,
                      kl_divergence,
                      needle_score,
                      normalize_answer,
                      sequence_exact_match,
                      top1_agreement,
                      vqa_score,
)
from .report import write_reports
from .runner import Trace, run_prompt
from .tasks import TASKS, Item, TaskOptions, build_inputs, make_items

__all__ = [
                      "TASKS",
                      "EvalSettings",
                      "Item",
                      "TaskOptions",
                      "Trace",
                      "adaptive_vs_fixed",
                      "build_inputs",
                      "evaluate_items",
                      "first_divergence",
                      "keyword_score",
                      "kl_divergence",
                      "make_items",
                      "needle_score",
                      "normalize_answer",
                      "run",
                      "run_prompt",
                      "sequence_exact_match",
                      "summarize",
                      "top1_agreement",
                      "vqa_score",
                      "write_reports",
]
