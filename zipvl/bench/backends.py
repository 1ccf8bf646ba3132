# SPDX-License-Identifier: Apache-2.0
"""Backends: how one prefill or decode step is run and timed. Every backend produces the same report.

- ``torch`` (CPU or CUDA): the PyTorch reference. Dense = the model's SDPA attention with a DynamicCache; ZipVL =
  ``zipvl.enable(model, policy=...)`` with a ZipVLCache, toggled per run (enable/disable are cheap).
- ``onnxruntime``: the exported engine through :mod:`zipvl.runtime`, imported lazily; a clear
  :class:`BackendUnavailableError` when the runtime (or its engine API) is missing.
"""

from __future__ import annotations

import copy
import importlib
import platform
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..errors import ZipVLError
from ..reference.apply import SUPPORTED_ARCHITECTURES, disable, enable
from ..reference.cache import ZipVLCache
from ..reference.policy import NullTimer, SectionTimer, TokenPolicy
from .memory import kv_bytes, weight_bytes
from .timing import make_clock

BACKENDS = ("torch", "onnxruntime")
TIMED_SDPA = "zipvl_bench_sdpa"
_DENSE_TIMER: list = [None]  # the SectionTimer the timed SDPA reports to (None: not timing)


class BackendUnavailableError(ZipVLError):
    """The requested backend cannot run here (missing package, device or engine)."""


def _timed_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, with its time added to the active timer's "dense_attention" section."""
    timer = _DENSE_TIMER[0]
    if timer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with timer.section("dense_attention", query.device):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(TIMED_SDPA, _timed_sdpa)
AttentionMaskInterface.register(TIMED_SDPA, sdpa_mask)


@dataclass
class PrefillRun:
    seconds: float
    cache: object  # DynamicCache (dense) or ZipVLCache (zipvl)
    next_token: torch.Tensor  # (1, 1) greedy token after the prompt
    stats: object = None  # ForwardStats of a ZipVL prefill
    sections: dict = field(default_factory=dict)  # seconds per section when timed with sections


class Backend:
    """Interface of a benchmark backend (see module doc)."""

    name = "base"
    device = torch.device("cpu")
    sections_free = False  # True: the section timer costs nothing (no syncs), so timed runs can carry it

    def describe(self) -> dict:
        raise NotImplementedError

    def prefill(self, ids: torch.Tensor, sparse: bool, sections: bool = False) -> PrefillRun:
        """One prefill of ``ids`` (1, n), ``use_cache=True``, logits for the last token only."""
        raise NotImplementedError

    def decode(self, cache, token: torch.Tensor, steps: int, sparse: bool) -> list[float]:
        """``steps`` greedy decode steps from ``token`` (B, 1) on ``cache`` (modified); seconds of each step."""
        raise NotImplementedError

    def replicate(self, cache, batch: int):
        """A copy of a batch-1 cache repeated to ``batch`` sequences."""
        raise NotImplementedError

    def kv_bytes(self, cache) -> int:
        return kv_bytes(cache)

    def weight_bytes(self) -> int:
        raise NotImplementedError


def _device_description(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        except OSError:
            pass
        info["cpu"] = cpu
    return info


class TorchBackend(Backend):
    """The PyTorch reference on CPU or CUDA."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, policy: TokenPolicy, device="cpu"):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("--device cuda asked for, but torch sees no CUDA device")
        self.model = model
        self.policy = policy
        self.clock = make_clock(self.device)
        self.sections_free = self.device.type != "cuda"  # CUDA sections synchronise: profile in separate runs
        self._is_vlm = SUPPORTED_ARCHITECTURES.get(type(model).__name__, False)

    def describe(self) -> dict:
        return {"backend": f"torch-{self.device.type}", "clock": self.clock.kind, **_device_description(self.device)}

    def weight_bytes(self) -> int:
        return weight_bytes(self.model)

    def _set_text_attention(self, name: str) -> None:
        if self._is_vlm:
            self.model.set_attn_implementation({"text_config": name, "vision_config": "sdpa"})
        else:
            self.model.set_attn_implementation(name)

    @torch.no_grad()
    def prefill(self, ids, sparse, sections=False):
        timer = SectionTimer() if sections else None
        ids = ids.to(self.device)
        if sparse:
            state = enable(self.model, policy=self.policy)
            state.timer = timer or NullTimer()
            cache = ZipVLCache()
        else:
            state, cache = None, DynamicCache()
            if timer is not None:
                self._set_text_attention(TIMED_SDPA)
                _DENSE_TIMER[0] = timer
        try:
            seconds, out = self.clock.time(
                lambda: self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1))
        finally:
            stats = state.prefill_stats if state is not None else None
            if sparse:
                disable(self.model)
            elif timer is not None:
                _DENSE_TIMER[0] = None
                self._set_text_attention("sdpa")
        token = out.logits[:, -1:].argmax(-1)
        return PrefillRun(seconds, cache, token, stats, dict(timer.seconds) if timer else {})

    @torch.no_grad()
    def decode(self, cache, token, steps, sparse):
        if sparse:
            enable(self.model, policy=self.policy)
        times, token = [], token.to(self.device)
        try:
            for _ in range(steps):
                seconds, out = self.clock.time(
                    lambda: self.model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:])
                token = out.argmax(-1)
                times.append(seconds)
        finally:
            if sparse:
                disable(self.model)
        return times

    def replicate(self, cache, batch):
        out = copy.deepcopy(cache)
        if batch > 1:
            out.batch_repeat_interleave(batch)
        return out


class OnnxRuntimeBackend(Backend):
    """The exported ONNX engine run by ONNX Runtime through :mod:`zipvl.runtime` (imported lazily)."""

    name = "onnxruntime"

    def __init__(self, engine_dir: str | None, **_):
        try:
            runtime = importlib.import_module("zipvl.runtime")
        except ImportError as e:
            raise BackendUnavailableError(f"the onnxruntime backend needs zipvl.runtime, which failed to import: {e}")
        loader = getattr(runtime, "load_engine", None)
        if loader is None:
            # TODO(bench): wire once zipvl.runtime exposes an engine API (load, prefill, decode, cache bytes).
            raise BackendUnavailableError(
                "the onnxruntime backend needs zipvl.runtime.load_engine (the ONNX Runtime engine API), which this "
                "zipvl does not have yet; use --backend torch")
        if not engine_dir:
            raise BackendUnavailableError("the onnxruntime backend needs --engine DIR (built with zipvl-build)")
        raise BackendUnavailableError("zipvl.runtime.load_engine exists but the bench adapter is not written yet")


def make_backend(name: str, model=None, policy: TokenPolicy | None = None, device="cpu",
                 engine_dir: str | None = None) -> Backend:
    """Backend by name: "torch" (``device`` cpu/cuda) or "onnxruntime" (``engine_dir``)."""
    if name == "torch":
        return TorchBackend(model, policy, device)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(engine_dir)
    raise ZipVLError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
