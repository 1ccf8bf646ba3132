# SPDX-License-Identifier: Apache-2.0
"""select_tokens against a brute-force transcription of method steps 1-5 (plain loops, float64)."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import zipvl
from zipvl import ZipVLConfig, ZipVLInputError, probe_positions, select_tokens


def brute_force(query, key, probes, tau, scale):
    """Steps 1-5 with Python loops over batch, heads, probe rows and keys. Returns counts, kept sets, mass, and the
    margins that say how far the result is from a floating-point decision boundary."""
    b_, h_, n, d = query.shape
    g = h_ // key.shape[1]
    q, k = query.double(), key.double()
    out = []
    for b in range(b_):
        rows = probes[b].tolist() if probes.dim() == 2 else probes.tolist()
        m = len(rows)
        mass = [0.0] * n
        for h in range(h_):
            for r in rows:
                logits = [float(q[b, h, r] @ k[b, h // g, j]) * scale for j in range(r + 1)]
                top = max(logits)
                exps = [math.exp(x - top) for x in logits]
                z = sum(exps)
                for j in range(r + 1):
                    mass[j] += exps[j] / z
        total = h_ * m
        ordered = sorted(mass, reverse=True)
        if tau >= 1.0:
            p, count_margin = n, float("inf")
        else:
            acc, p = 0.0, n
            for i, v in enumerate(ordered):
                acc += v
                if acc >= tau * total:
                    p = i + 1
                    break
            cums = [sum(ordered[: i + 1]) for i in range(n)]
            count_margin = min(abs(c - tau * total) for c in cums) / total
        visible = [h_ * sum(1 for r in rows if r >= j) for j in range(n)]
        score = [mass[j] / visible[j] for j in range(n)]
        ranking = sorted(range(n), key=lambda j: (-score[j], j))
        kept = sorted(ranking[:p])
        if 0 < p < n:
            s_in, s_out = score[ranking[p - 1]], score[ranking[p]]
            rank_margin = (s_in - s_out) / max(abs(s_in), 1e-30) if s_in != s_out else float("inf")
        else:
            rank_margin = float("inf")
        out.append(dict(count=p, kept=kept, mass=mass, count_margin=count_margin, rank_margin=rank_margin))
    return out


@st.composite
def problems(draw):
    b = draw(st.integers(1, 3))
    h_kv = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 3]))
    n = draw(st.integers(1, 40))
    d = draw(st.sampled_from([4, 8]))
    tau = draw(st.sampled_from([0.5, 0.8, 0.9, 0.975, 1.0]))
    n_recent = draw(st.integers(1, 6))
    n_random = draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([0.5, 2.0, 4.0]))
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(b, h_kv * g, n, d, generator=gen) * spread
    key = torch.randn(b, h_kv, n, d, generator=gen) * spread
    cfg = ZipVLConfig(tau=tau, n_recent=n_recent, n_random=n_random, seed=seed)
    return query, key, cfg


@settings(max_examples=150, deadline=None)
@given(problems())
def test_select_tokens_matches_brute_force(problem):
    query, key, cfg = problem
    n = query.shape[2]
    probes = probe_positions(n, cfg)
    scale = query.shape[-1] ** -0.5
    truth = brute_force(query, key, probes, cfg.tau, scale)
    # Exclude draws that sit on a floating-point knife edge (fp32 vs fp64 could legitimately disagree there).
    assume(all(t["count_margin"] > 1e-5 and t["rank_margin"] > 1e-5 for t in truth))
    sel = select_tokens(query, key, probes, cfg.tau)
    for b, t in enumerate(truth):
        assert int(sel.count[b]) == t["count"]
        assert sel.kept[b].nonzero().squeeze(-1).tolist() == t["kept"]
        torch.testing.assert_close(sel.mass[b].double(), torch.tensor(t["mass"], dtype=torch.float64), rtol=1e-5,
                                   atol=1e-5)
    assert sel.kept.sum(-1).tolist() == sel.count.tolist()


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.integers(0, 2**31 - 1), st.sampled_from([0.6, 0.9]))
def test_ties_go_to_the_lower_position(n, seed, tau):
    """Duplicate keys between two probes give bit-identical scores; the earlier token must win the tie."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 2, n, 4, generator=gen)
    key = torch.randn(1, 1, n, 4, generator=gen)
    probes = torch.tensor([n - 1])  # one probe: every key has the same visibility count
    key[:, :, 1::2] = key[:, :, 0:-1:2][:, :, : key[:, :, 1::2].shape[2]]  # pairs (2i, 2i+1) share a key
    sel = select_tokens(query, key, probes, tau)
    truth = brute_force(query, key, probes, tau, 0.5)[0]
    assume(truth["count_margin"] > 1e-5)
    assert sel.kept[0].nonzero().squeeze(-1).tolist() == truth["kept"]


def test_batched_probes_equal_per_row_calls():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 4, 300, 8, generator=gen), torch.randn(2, 2, 300, 8, generator=gen)
    p0, p1 = probe_positions(300, ZipVLConfig(seed=1)), probe_positions(300, ZipVLConfig(seed=2))
    both = select_tokens(q, k, torch.stack([p0, p1]), 0.9)
    for b, p in enumerate((p0, p1)):
        one = select_tokens(q[b : b + 1], k[b : b + 1], p, 0.9)
        assert torch.equal(both.kept[b], one.kept[0]) and int(both.count[b]) == int(one.count[0])


def test_probe_positions():
    cfg = ZipVLConfig(seed=7)
    p = probe_positions(1000, cfg)
    assert p.shape == (128,) and bool((p[1:] > p[:-1]).all())
    assert p[-64:].tolist() == list(range(936, 1000))  # the 64 most recent
    assert torch.equal(p, probe_positions(1000, cfg))  # seeded
    assert not torch.equal(p, probe_positions(1000, ZipVLConfig(seed=8)))
    assert probe_positions(128, cfg).tolist() == list(range(128))
    assert probe_positions(1, cfg).tolist() == [0]


def test_tau_one_keeps_everything_and_n_equals_one():
    q, k = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 1, 8)
    sel = select_tokens(q, k, torch.tensor([0]), 0.5)
    assert sel.count.tolist() == [1, 1] and sel.kept.all()
    q, k = torch.randn(1, 4, 500, 8), torch.randn(1, 2, 500, 8)
    assert bool(select_tokens(q, k, probe_positions(500), 1.0).kept.all())


def test_indices_layout_is_the_plugin_layout():
    kept = torch.tensor([[True, False, True, False], [False, False, False, True]])
    sel = zipvl.Selection(kept=kept, count=kept.sum(-1), mass=torch.zeros(2, 4), score=torch.zeros(2, 4),
                          probes=torch.tensor([3]))
    assert sel.indices().tolist() == [[0, 2, -1, -1], [3, -1, -1, -1]]


@pytest.mark.parametrize(
    "q_shape, k_shape, probes, needle",
    [
        ((1, 4, 10, 8), (1, 3, 10, 8), [9], "multiple of key heads"),
        ((1, 4, 10, 8), (1, 2, 9, 8), [9], "disagree"),
        ((1, 4, 10, 8), (1, 2, 10, 8), [3, 12], "must lie in"),
        ((1, 4, 10, 8), (1, 2, 10, 8), [5, 3, 9], "strictly ascending"),
        ((1, 4, 10, 8), (1, 2, 10, 8), [2, 5], "last position"),
        ((4, 10, 8), (1, 2, 10, 8), [9], "expects query"),
    ],
)
def test_bad_inputs_raise_one_clear_error(q_shape, k_shape, probes, needle):
    with pytest.raises(ZipVLInputError, match=needle):
        select_tokens(torch.randn(q_shape), torch.randn(k_shape), torch.tensor(probes), 0.9)


def test_bad_tau_in_op():
    with pytest.raises(ZipVLInputError, match="tau"):
        select_tokens(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.tensor([3]), 1.2)
