# SPDX-License-Identifier: Apache-2.0
"""Python entry point: ``zipvl.eval.run(model, processor, tasks, options, settings)`` -> report dict."""

from __future__ import annotations

import time

from .evaluate import EvalSettings, evaluate_items
from .tasks import TaskOptions, make_items


def run(model, processor, tasks=("needle",), options: TaskOptions | None = None,
        settings: EvalSettings | None = None, model_name: str = "model",
        progress: bool = True, on_task=None) -> dict:
    """Evaluate ``tasks`` (names from :data:`zipvl.eval.tasks.TASKS`) for dense, ZipVL and the baselines.

    ``on_task(report)``: called after each task (e.g. to write partial reports). Every task's items are built (and
    their data checked) before the first model run.
    """
    options = options or TaskOptions()
    settings = settings or EvalSettings()
    tokenizer = getattr(processor, "tokenizer", processor)
    report = {"model": model_name, "settings": {**options.__dict__, **{k: v for k, v in settings.__dict__.items()
                                                                        if k != "zipvl"},
                                                "zipvl_config": settings.zipvl.to_dict()},
              "tasks": {}}
    start = time.perf_counter()
    built = {task: make_items(task, tokenizer, options) for task in tasks}
    for task, items in built.items():
        result = evaluate_items(model, processor, items, settings, task=task, progress=progress)
        report["tasks"][task] = result
        report["wall_s"] = time.perf_counter() - start
        if on_task is not None:
            on_task(report)
    report["wall_s"] = time.perf_counter() - start
    return report
