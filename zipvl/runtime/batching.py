# SPDX-License-Identifier: Apache-2.0
"""In-flight (continuous) batching over an :class:`~zipvl.runtime.Engine`, usable without any server.

Requests are prefilled one by one (the engine's prefill is batch 1) and join the running decode batch at a step
boundary; a finished, cancelled or timed-out request leaves at once. Admission is by KV memory actually held: a
request reserves ``sum over layers (kept_l + max_new_tokens) x entry bytes`` from its own prefill's kept counts, so
under one ``kv_budget`` an evicted (ZipVL) cache admits more requests than a dense one. Decoding reuses
``Engine.decode_step`` and ``LayerCache.reselect`` (each request re-selects every ``decode_interval`` of its own
steps, as ``Engine.generate`` does for a batch): one source of truth for the arithmetic.

When the membership changes the batch's cache is rebuilt (each staying row's valid entries copied once into new
buffers sized for what the rows still need) and re-bound; between changes every step writes in place.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import count as _counter

import numpy as np

from ..errors import ZipVLInputError
from .engine import Engine, PrefillResult
from .errors import EngineError, EngineLimitError
from .kv_cache import KVCache
from .multimodal import Prompt

log = logging.getLogger(__name__)


class Overloaded(EngineError):
    """The scheduler's queue is full: try again later (HTTP 429)."""


class RequestTimeout(EngineError):
    """A request ran past its deadline and was stopped."""


@dataclass
class _Request:
    id: str
    prompt: Prompt
    max_new_tokens: int
    eos_token_id: int | None
    stop_token_ids: frozenset
    deadline: float | None
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    pre: PrefillResult | None = None
    steps: int = 0  # decode steps done
    pending: int = 0  # decode steps since this request's last re-selection
    reselections: int = 0
    kept_ratio: float = 1.0  # mean over layers of the prefill's kept / n


class RequestHandle:
    """A submitted request: iterate for its tokens as they come; ``finish_reason`` once done."""

    def __init__(self, request: _Request, scheduler: Scheduler):
        self._r, self._s = request, scheduler
        self.finish_reason: str | None = None

    @property
    def id(self) -> str:
        return self._r.id

    def cancel(self) -> None:
        """Stop generating; the request leaves the batch (and frees its cache) at the next step boundary."""
        self._r.cancelled.set()
        self._s._wake()

    def next(self, timeout: float | None = None) -> int | None:
        """The next token; None when finished. Raises the request's error; ``queue.Empty`` after ``timeout``."""
        kind, value = self._r.events.get(timeout=timeout)
        if kind == "token":
            return value
        if kind == "error":
            self.finish_reason = "error"
            raise value
        self.finish_reason = value
        return None

    def __iter__(self):
        while (token := self.next()) is not None:
            yield token

    def result(self) -> list[int]:
        return list(self)


class Scheduler:
    """Continuous batching. ``max_queue``: requests waiting for a prefill before :class:`Overloaded`;
    ``kv_budget``: bytes of KV cache all running requests may reserve (None: only the engine's ``max_batch``
    limits); ``timeout_s``: default per-request deadline. :meth:`step` runs one iteration (tests, benches);
    :meth:`start` runs the loop in a thread."""

    def __init__(self, engine: Engine, max_queue: int = 64, kv_budget: int | None = None,
                 max_running: int | None = None, timeout_s: float | None = None):
        self.engine = engine
        self.max_queue, self.kv_budget, self.timeout_s = max_queue, kv_budget, timeout_s
        self.max_running = min(max_running or engine.limits["max_batch"], engine.limits["max_batch"])
        d = engine.desc
        self.entry_bytes = 2 * d["num_kv_heads"] * d["head_dim"] * 4
        self.queue: deque[_Request] = deque()
        self.waiting: _Request | None = None  # prefilled, not yet admitted (head of line)
        self.running: list[_Request] = []
        self.cache: KVCache | None = None
        self._io = None
        self._members: list[_Request] = []  # the rows of self.cache, in order
        self._lock = threading.Condition()
        self._ids = _counter()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.completed = 0
        self.cancelled = 0

    # ------------------------------------------------------------------ API
    def submit(self, prompt: Prompt, max_new_tokens: int, eos_token_id: int | None = None,
               stop_token_ids=(), timeout_s: float | None = None, request_id: str | None = None) -> RequestHandle:
        """Queue a request. Bad requests raise :class:`zipvl.ZipVLInputError` here; a full queue
        :class:`Overloaded`."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ZipVLInputError("max_new_tokens must be an integer >= 1")
        self.engine.check_request([prompt], max_new_tokens)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        r = _Request(request_id or f"req-{next(self._ids)}", prompt, max_new_tokens, eos_token_id,
                     frozenset(int(t) for t in stop_token_ids),
                     time.monotonic() + timeout_s if timeout_s else None)
        with self._lock:
            if len(self.queue) >= self.max_queue:
                raise Overloaded(f"server overloaded: {len(self.queue)} requests already queued (limit "
                                 f"{self.max_queue}); retry later")
            self.queue.append(r)
            self._lock.notify()
        return RequestHandle(r, self)

    def stats(self) -> dict:
        """Queue depth, running requests, KV bytes the running requests hold (valid entries) and reserve, and
        the mean prefill kept ratio of the running requests."""
        with self._lock:
            running = list(self.running)
            queued = len(self.queue) + (self.waiting is not None)
        return {"queue_depth": queued, "running": len(running), "kv_bytes_in_use": self.kv_bytes_in_use(),
                "kv_bytes_reserved": sum(self._reserve(r) for r in running),
                "mean_kept_ratio": float(np.mean([r.kept_ratio for r in running])) if running else 0.0,
                "completed": self.completed, "cancelled": self.cancelled}

    def kv_bytes_in_use(self) -> int:
        cache = self.cache
        if cache is None or not self.running:
            return 0
        return cache.nbytes()

    def idle(self) -> bool:
        return not (self.queue or self.waiting or self.running)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="zipvl-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ loop
    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and self.idle():
                    self._lock.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception as e:  # an engine failure fails the running requests, never the loop
                log.exception("scheduler step failed")
                for r in self.running + ([self.waiting] if self.waiting else []):
                    r.events.put(("error", e))
                self.running, self.waiting, self.cache, self._members = [], None, None, []

    def step(self) -> None:
        """One iteration: drop cancelled / expired requests, admit new ones (prefill), one decode step."""
        changed = self._drop_stopped()
        changed |= self._admit()
        if not self.running:
            self.cache, self._io, self._members = None, None, []
            return
        if changed or self.cache is None:
            self._rebuild()
        self._decode()

    def _finish(self, r: _Request, reason: str) -> None:
        r.events.put(("done", reason))
        self.completed += 1

    def _drop_stopped(self) -> bool:
        now = time.monotonic()

        def stopped(r: _Request) -> bool:
            if r.cancelled.is_set():
                self._finish(r, "cancelled")
                self.cancelled += 1
                return True
            if r.deadline is not None and now > r.deadline:
                r.events.put(("error", RequestTimeout(f"request {r.id} timed out after {len(r.tokens)} tokens")))
                return True
            return False

        with self._lock:
            self.queue = deque(r for r in self.queue if not stopped(r))
        if self.waiting and stopped(self.waiting):
            self.waiting = None
        keep = [r for r in self.running if not stopped(r)]
        changed = len(keep) != len(self.running)
        self.running = keep
        return changed

    def _reserve(self, r: _Request) -> int:
        """KV bytes the request can hold at most: its prefill's kept entries per layer plus every new token."""
        return self.entry_bytes * sum(c + r.max_new_tokens for c in r.pre.counts)

    def _admit(self) -> bool:
        changed = False
        while len(self.running) < self.max_running:
            if self.waiting is None:
                with self._lock:
                    if not self.queue:
                        break
                    r = self.queue.popleft()
                if not self._prefill(r):
                    continue
                self.waiting = r
            r = self.waiting
            need = self._reserve(r)
            if self.kv_budget is not None:
                if need > self.kv_budget:
                    r.events.put(("error", EngineLimitError(
                        f"the request needs {need / 2**20:.1f} MiB of KV cache, beyond the server's KV budget of "
                        f"{self.kv_budget / 2**20:.1f} MiB; shorten the prompt or max_tokens")))
                    self.waiting = None
                    continue
                if sum(self._reserve(x) for x in self.running) + need > self.kv_budget:
                    break  # head of line waits until running requests free their cache
            self.waiting = None
            self.running.append(r)
            changed = True
        return changed

    def _prefill(self, r: _Request) -> bool:
        """Prefill and emit the first token; False when the request is already done (or failed)."""
        try:
            r.pre = self.engine.prefill(r.prompt)
        except Exception as e:  # noqa: BLE001 - any prefill failure fails this request only
            r.events.put(("error", e))
            return False
        n = r.pre.length
        r.kept_ratio = float(np.mean(r.pre.held_counts)) / n
        return self._emit(r, int(r.pre.logits.argmax()))

    def _emit(self, r: _Request, token: int) -> bool:
        """Hand a token to the client; False (and finished) on eos / a stop token / max_new_tokens."""
        if token == r.eos_token_id or token in r.stop_token_ids:
            self._finish(r, "stop")
            return False
        r.tokens.append(token)
        r.events.put(("token", token))
        if len(r.tokens) >= r.max_new_tokens:
            self._finish(r, "length")
            return False
        return True

    def _rebuild(self) -> None:
        """New buffers for the current members: staying rows copied from the old cache, new rows from prefill."""
        old, old_rows = self.cache, {id(r): i for i, r in enumerate(self._members)}
        e = self.engine
        counts = []
        for i in range(e.num_layers):
            layer_counts = []
            for r in self.running:
                held = old.layers[i].row_length(old_rows[id(r)]) if id(r) in old_rows else r.pre.counts[i]
                layer_counts.append(held + r.max_new_tokens - 1 - r.steps)  # room for every step still to come
            counts.append(layer_counts)
        cache = e.new_cache(counts, 0)
        for i, layer in enumerate(cache.layers):
            for j, r in enumerate(self.running):
                if id(r) in old_rows:
                    layer.copy_row(j, old.layers[i], old_rows[id(r)])
                else:
                    layer.fill(j, r.pre.keys[i], r.pre.values[i], r.pre.cache_counts(i), r.pre.indices[i])
        self.cache, self._members = cache, list(self.running)
        self._io = e.bind_cache(cache)
        for r in self.running:  # the prefill's full-capacity K/V are no longer needed once copied
            r.pre.keys = r.pre.values = None

    def _decode(self) -> None:
        e, rows = self.engine, self.running
        lengths = np.array([r.pre.length + r.steps for r in rows], dtype=np.int64)
        deltas = np.array([r.pre.rope_delta for r in rows], dtype=np.int64)
        tokens = np.array([r.tokens[-1] for r in rows], dtype=np.int64)
        step = e.decode_step(self._io, self.cache, tokens, lengths + deltas, indices=lengths)
        interval = e.reselect_interval
        due = []
        for j, r in enumerate(rows):
            r.steps += 1
            r.pending += 1
            if interval and r.pending >= interval:
                due.append(j)
        if due:  # every due row has pending == interval: one window for all of them
            for i, layer in enumerate(self.cache.layers):
                layer.reselect(step.queries[i], interval, e.config.evict_tau, e.scaling, rows=due)
            for j in due:
                rows[j].pending = 0
                rows[j].reselections += 1
        nxt = step.logits.argmax(-1)
        keep = [r for j, r in enumerate(rows) if self._emit(r, int(nxt[j]))]
        if len(keep) != len(rows):  # finished rows leave now; the cache is rebuilt before the next step
            self.running = keep
            if not keep:
                self.cache, self._io, self._members = None, None, []
            else:
                self._rebuild()  # at once: a finished request's entries are freed before the next admission
