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
from ..reference.hf_compat import cache_kwargs
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
    has_sections = True  # False: no time breakdown on this backend

    def describe(self) -> dict:
        raise NotImplementedError

    def prefill(self, ids: torch.Tensor, sparse: bool, sections: bool = False) -> PrefillRun:
        """One prefill of ``ids`` (1, n), ``use_cache=True``, logits for the last token only."""
        raise NotImplementedError

    def decode_step(self, cache, token: torch.Tensor, sparse: bool) -> tuple[float, torch.Tensor]:
        """One greedy decode step of ``token`` (B, 1) on ``cache`` (appended to) -> (seconds, next token (B, 1))."""
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
                lambda: self.model(input_ids=ids, **cache_kwargs(self.model, cache), use_cache=True,
                                   logits_to_keep=1))
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
    def decode_step(self, cache, token, sparse):
        if sparse:
            enable(self.model, policy=self.policy)
        try:
            seconds, logits = self.clock.time(
                lambda: self.model(input_ids=token.to(self.device), **cache_kwargs(self.model, cache),
                                   use_cache=True).logits)
        finally:
            if sparse:
                disable(self.model)
        return seconds, logits[:, -1:].argmax(-1)

    def replicate(self, cache, batch):
        out = copy.deepcopy(cache)
        if batch > 1:
            out.batch_repeat_interleave(batch)
        return out


class OnnxRuntimeBackend(Backend):
    """The exported engine run by ONNX Runtime through :mod:`zipvl.runtime` (imported lazily), on CPU.

    ZipVL = the engine directory (``--engine``); dense = the same model built with every layer dense
    (``--dense-engine``: ``zipvl-build MODEL -o DENSE --reuse ENGINE --dense-layers 0 1 ... L-1``), so both run the
    same graphs and session options. No section timer inside ONNX Runtime: the breakdown is not available.
    """

    name = "onnxruntime"
    has_sections = False
    decode_headroom = 256  # decode tokens a replicated cache has room for

    def __init__(self, engine_dir: str | None, dense_engine_dir: str | None = None, threads: int | None = None):
        try:
            runtime = importlib.import_module("zipvl.runtime")
            from ..reference.stats import ForwardStats, LayerStats
        except ImportError as e:
            raise BackendUnavailableError(f"the onnxruntime backend needs zipvl.runtime (and onnxruntime), which "
                                          f"failed to import: {e}") from e
        if getattr(runtime, "Engine", None) is None:
            raise BackendUnavailableError("the onnxruntime backend needs zipvl.runtime.Engine, which this zipvl does "
                                          "not have; use --backend torch")
        if not engine_dir or not dense_engine_dir:
            raise BackendUnavailableError(
                "the onnxruntime backend needs --engine DIR (the ZipVL engine, built with zipvl-build) and "
                "--dense-engine DIR (the same model with every layer dense: zipvl-build MODEL -o DIR --reuse ENGINE "
                "--dense-layers 0 1 ... L-1)")
        self._rt, self._stats_cls = runtime, (ForwardStats, LayerStats)
        self.engines = {True: runtime.Engine(engine_dir, threads=threads),
                        False: runtime.Engine(dense_engine_dir, threads=threads)}
        self.clock = make_clock("cpu")
        self.device = torch.device("cpu")
        self.sections_free = False
        desc = self.engines[True].desc
        self._kv_entry = 2 * desc["num_kv_heads"] * desc["head_dim"] * 4  # the runtime's cache is float32
        self._dirs = (engine_dir, dense_engine_dir)

    def describe(self) -> dict:
        import onnxruntime as ort

        info = _device_description(self.device)
        info.update(backend="onnxruntime-cpu", clock=self.clock.kind, onnxruntime=ort.__version__,
                    engine=str(self._dirs[0]), dense_engine=str(self._dirs[1]),
                    ops=self.engines[True].manifest.get("ops"))
        return info

    def weight_bytes(self) -> int:
        # Files of the ZipVL engine (graphs + external weights): what one engine holds in memory, approximately.
        return sum(int(f.get("bytes", 0)) for f in self.engines[True].manifest["files"].values())

    def _stats(self, engine, pre):
        forward_stats, layer_stats = self._stats_cls
        stats = forward_stats(phase="prefill")
        for i, count in enumerate(pre.held_counts):  # per KV head (one set per KV head: their mean)
            mode = "dense_layer" if i in engine.config.dense_layers else "sparse"
            stats.layers.append(layer_stats(layer=i, phase="prefill", mode=mode, length=[pre.length], kept=[count],
                                            kv_bytes_before=self._kv_entry * pre.length,
                                            kv_bytes_after=self._kv_entry * count, cache_length=[count]))
        return stats

    def prefill(self, ids, sparse, sections=False):
        engine = self.engines[bool(sparse)]
        prompt = self._rt.Prompt(ids[0].cpu().numpy().astype("int64"))
        seconds, pre = self.clock.time(lambda: engine.prefill(prompt))
        token = torch.tensor([[int(pre.logits.argmax())]])
        return PrefillRun(seconds, _OrtState(engine, pre), token, self._stats(engine, pre) if sparse else None)

    def replicate(self, cache, batch):
        # Times single steps with the runtime's public bind_cache / decode_step (the calls Engine.generate makes).
        engine, pre = cache.engine, cache.prefill
        kv = engine.new_cache([[c] * batch for c in pre.counts], self.decode_headroom)
        for i, layer in enumerate(kv.layers):
            for r in range(batch):
                layer.fill(r, pre.keys[i], pre.values[i], pre.cache_counts(i))
        state = _OrtState(engine, pre, kv, engine.bind_cache(kv))
        state.positions = torch.full((batch,), pre.length + pre.rope_delta).numpy()
        return state

    def decode_step(self, cache, token, sparse):
        engine = cache.engine
        tokens = token[:, 0].cpu().numpy().astype("int64")
        seconds, step = self.clock.time(lambda: engine.decode_step(cache.io, cache.kv, tokens, cache.positions))
        cache.positions = cache.positions + 1
        return seconds, torch.from_numpy(step.logits.argmax(-1)).reshape(-1, 1)

    def kv_bytes(self, cache) -> int:
        if cache.kv is not None:
            return cache.kv.nbytes()
        return int(self._kv_entry * sum(cache.prefill.held_counts))


@dataclass
class _OrtState:
    """The ORT backend's "cache": a prefill result, and for decoding the runtime's KV cache and its IO binding."""

    engine: object
    prefill: object
    kv: object = None
    io: object = None
    positions: object = None


def make_backend(name: str, model=None, policy: TokenPolicy | None = None, device="cpu",
                 engine_dir: str | None = None, dense_engine_dir: str | None = None,
                 threads: int | None = None) -> Backend:
    """Backend by name: "torch" (``device`` cpu/cuda) or "onnxruntime" (``engine_dir`` + ``dense_engine_dir``)."""
    if name == "torch":
        return TorchBackend(model, policy, device)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(engine_dir, dense_engine_dir, threads)
    raise ZipVLError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
