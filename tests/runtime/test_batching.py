# SPDX-License-Identifier: Apache-2.0
"""In-flight batching (zipvl.runtime.batching.Scheduler) against Engine.generate: requests that arrive and finish
at different steps get exactly the greedy tokens each gets alone; cancelled requests free their cache; admission
follows the KV memory really held; a full queue is refused."""

from __future__ import annotations

import numpy as np
import pytest

from zipvl.errors import ZipVLInputError
from zipvl.runtime import Engine
from zipvl.runtime.batching import Overloaded, Scheduler
from zipvl.validate.prompts import make_prompts
from zipvl.validate.tiny import tiny_engine


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_engine("llava", "standard", 0.975), verify=False)


def _alone(engine, prompt, n):
    return engine.generate([prompt], max_new_tokens=n).tokens[0].tolist()


def test_membership_changes_mid_run_keep_every_requests_tokens(engine):
    """4 requests, different lengths and budgets, arriving at steps 0, 0, 3 and 9: one crosses two decode
    re-selections (interval 16) while others join and leave; each gets Engine.generate's tokens for it alone."""
    _membership_changes(engine)


def test_membership_changes_with_a_kv_set_per_head():
    """The same with one kept set per KV head (a length per KV head): rebuilding the batch's cache carries each
    head's entries."""
    per_head = Engine(tiny_engine("llava", "standard", 0.8, preset="evict_question_kv", sharp=True, protect_last=4),
                      verify=False)
    assert per_head.kv_sets == 2
    _membership_changes(per_head)


def _membership_changes(engine):
    prompts = make_prompts(engine, 4, seed=21)
    budgets = [34, 5, 20, 12]
    arrivals = {0: [0, 1], 3: [2], 9: [3]}
    sched = Scheduler(engine)
    handles, sizes = {}, []
    for step in range(60):
        for i in arrivals.get(step, []):
            handles[i] = sched.submit(prompts[i], budgets[i])
        sched.step()
        sizes.append(len(sched.running))
        if sched.idle() and len(handles) == 4:
            break
    assert sched.idle() and sched.kv_bytes_in_use() == 0
    assert len(set(sizes)) >= 3  # the batch really changed membership
    for i, h in handles.items():
        assert h.result() == _alone(engine, prompts[i], budgets[i]), i
        assert h.finish_reason == "length"
    assert handles[0]._r.reselections == 2


def test_cancel_frees_the_cache_and_others_continue(engine):
    prompts = make_prompts(engine, 2, seed=4)
    sched = Scheduler(engine)
    a, b = sched.submit(prompts[0], 30), sched.submit(prompts[1], 10)
    for _ in range(3):
        sched.step()
    held = sched.kv_bytes_in_use()
    a.cancel()
    sched.step()
    assert 0 < sched.kv_bytes_in_use() < held and len(sched.running) == 1
    while not sched.idle():
        sched.step()
    assert sched.kv_bytes_in_use() == 0
    assert len(a.result()) == 4 and a.finish_reason == "cancelled"
    assert b.result() == _alone(engine, prompts[1], 10)


def test_admission_by_kv_held_and_queue_limit(engine):
    prompts = make_prompts(engine, 3, seed=8)
    pre = engine.prefill(prompts[0])
    one = 2 * engine.desc["num_kv_heads"] * engine.desc["head_dim"] * 4 * sum(c + 8 for c in pre.counts)
    sched = Scheduler(engine, kv_budget=int(one * 1.5), max_queue=2)
    h = [sched.submit(prompts[0], 8), sched.submit(prompts[0], 8)]
    with pytest.raises(Overloaded, match="overloaded"):
        sched.submit(prompts[1], 8)
    sched.step()
    assert len(sched.running) == 1 and sched.waiting is not None  # the second waits for the first's cache
    while not sched.idle():
        sched.step()
    expected = _alone(engine, prompts[0], 8)
    assert h[0].result() == expected and h[1].result() == expected


def test_bad_requests_are_refused_at_submit(engine):
    sched = Scheduler(engine)
    prompt = make_prompts(engine, 1)[0]
    with pytest.raises(ZipVLInputError, match="max_sequence"):
        sched.submit(prompt, 10_000)
    with pytest.raises(ZipVLInputError, match="max_new_tokens"):
        sched.submit(prompt, 0)
    assert sched.idle()


def test_stop_tokens_end_a_request(engine):
    prompt = make_prompts(engine, 1, seed=2)[0]
    tokens = _alone(engine, prompt, 12)
    sched = Scheduler(engine)
    h = sched.submit(prompt, 12, stop_token_ids=[tokens[5]])
    while not sched.idle():
        sched.step()
    assert h.result() == tokens[: tokens.index(tokens[5])] and h.finish_reason == "stop"
    assert np.all(sched.kv_bytes_in_use() == 0)
