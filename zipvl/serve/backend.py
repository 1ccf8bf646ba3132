# SPDX-License-Identifier: Apache-2.0
"""The Triton Python-backend model: one :class:`~zipvl.runtime.Engine` + :class:`~zipvl.runtime.batching.Scheduler`
per model instance, one streamed response per generated token (decoupled), an empty final response at the end.

Errors go back as the request's error, with the HTTP status the gateway should answer as a ``[4xx]`` prefix.
Tensors cross the backend through DLPack, never ``as_numpy`` / ``Tensor(name, ndarray)``: the backend's numpy
bridge was built against numpy 1.x and, under numpy 2, hands back empty output buffers (measured: every output
"does not match size"). A client that goes away (HTTP disconnect, gRPC stream cancel) marks the request cancelled
in Triton; the streaming thread sees it at the next token and cancels the scheduler's request, freeing its cache.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ..errors import ZipVLError, ZipVLInputError
from ..runtime import Engine, Prompt
from ..runtime.batching import Overloaded, RequestTimeout, Scheduler

GAUGES = {
    "zipvl_queue_depth": ("queue_depth", "requests waiting for prefill"),
    "zipvl_running_requests": ("running", "requests in the decode batch"),
    "zipvl_kv_bytes_in_use": ("kv_bytes_in_use", "valid KV-cache bytes held by running requests"),
    "zipvl_kv_bytes_reserved": ("kv_bytes_reserved", "KV bytes reserved by running requests (admission)"),
    "zipvl_mean_kept_ratio": ("mean_kept_ratio", "mean prefill kept ratio over layers of running requests"),
    "zipvl_requests_completed": ("completed", "requests finished since start (any reason)"),
    "zipvl_requests_cancelled": ("cancelled", "requests cancelled since start (client gone)"),
    "zipvl_process_rss_bytes": ("rss_bytes", "resident memory of this instance's process (baseline after a load)"),
}


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _array(request, name: str) -> np.ndarray | None:
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else np.from_dlpack(t).copy()


def _error(status: int, message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"[{status}] {message}"))


def parse_request(request) -> tuple[Prompt, int, list[int]]:
    ids = _array(request, "input_ids")
    if ids is None or ids.size == 0:
        raise ZipVLInputError("input_ids is empty")
    max_tokens = _array(request, "max_tokens")
    stop = _array(request, "stop_token_ids")
    prompt = Prompt(ids)
    pixels = _array(request, "pixel_values")
    if pixels is not None:
        shape = _array(request, "pixel_shape")
        if shape is None or int(np.prod(shape)) != pixels.size:
            raise ZipVLInputError("pixel_values needs pixel_shape (its original shape) with as many elements")
        prompt.pixel_values = pixels.reshape([int(x) for x in shape])
        sizes, grid = _array(request, "image_sizes"), _array(request, "image_grid_thw")
        prompt.image_sizes = None if sizes is None else sizes.reshape(-1, 2)
        prompt.image_grid_thw = None if grid is None else grid.reshape(-1, 3)
    return prompt, 16 if max_tokens is None else int(max_tokens.reshape(-1)[0]), \
        [] if stop is None else stop.reshape(-1).tolist()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        engine_dir = Path(args["model_repository"]) / args["model_version"] / params.get("engine", "engine")
        threads = int(params["threads"]) if params.get("threads") else None
        self.engine = Engine(engine_dir, verify=False, threads=threads)
        budget = params.get("kv_budget_mib")
        running = params.get("max_running")
        self.scheduler = Scheduler(self.engine, max_queue=int(params.get("max_queue", 64)),
                                   max_running=int(running) if running else None,
                                   kv_budget=int(float(budget) * 2**20) if budget else None,
                                   timeout_s=float(params.get("timeout_s", 300)))
        self.eos = self.engine.desc.get("eos_token_id")
        labels = {"model": args["model_name"], "instance": args["model_instance_name"]}
        self.gauges = {k: pb_utils.MetricFamily(name=k, description=d, kind=pb_utils.MetricFamily.GAUGE)
                       for k, (_, d) in GAUGES.items()}
        self.metrics = {k: fam.Metric(labels=labels) for k, fam in self.gauges.items()}
        self.scheduler.start()
        self._done = threading.Event()
        threading.Thread(target=self._publish, daemon=True).start()

    def _publish(self):
        while not self._done.wait(0.2):
            stats = {**self.scheduler.stats(), "rss_bytes": rss_bytes()}
            for name, (key, _) in GAUGES.items():
                self.metrics[name].set(float(stats[key]))

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            try:
                prompt, max_tokens, stop = parse_request(request)
                handle = self.scheduler.submit(prompt, max_tokens, eos_token_id=self.eos, stop_token_ids=stop,
                                               request_id=request.request_id() or None)
            except Overloaded as e:
                sender.send(_error(429, str(e)), flags=final)
                continue
            except (ZipVLError, ValueError, TypeError) as e:
                sender.send(_error(400, str(e)), flags=final)
                continue
            threading.Thread(target=self._stream, args=(handle, sender), daemon=True).start()

    def _stream(self, handle, sender):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        while True:
            if sender.is_cancelled():
                handle.cancel()
                return
            try:
                token = handle.next(timeout=0.05)
            except queue.Empty:
                continue
            except ZipVLInputError as e:
                sender.send(_error(400, str(e)), flags=final)
                return
            except RequestTimeout as e:
                sender.send(_error(504, str(e)), flags=final)
                return
            except Exception as e:  # noqa: BLE001 - reported to the client, never raised into Triton
                sender.send(_error(503 if isinstance(e, ZipVLError) else 500, str(e)), flags=final)
                return
            if token is None:
                sender.send(flags=final)
                return
            out = pb_utils.Tensor.from_dlpack("output_ids", np.array([token], dtype=np.int64))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]))

    def finalize(self):
        self._done.set()
        self.scheduler.stop()
