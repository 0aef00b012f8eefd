"""solve_hybrid against brute force on small models, against solve (m = 0) and solve_heads (m = all layers)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from zigzag_attn.cost import CostModel
from zigzag_attn.plan import ModelInfo
from zigzag_attn.scores import Scores
from zigzag_attn.solve import solve, solve_heads
from zigzag_attn.solve_hybrid import solve_hybrid

SINK, WINDOW, N = 4, 8, 100
BYTES = CostModel(bandwidth=1e9, call_overhead=1e-6)
# made-up figures where a mixed layer's time is not linear in its heads, so (heads, mixed layers) does not fix latency
MEASURED = CostModel(bandwidth=1e9, call_overhead=1e-6, points={
    ("decode", 1, 1, 3): [(N, 2.5e-6)], ("decode", 1, 2, 3): [(N, 9e-6)], ("decode", 1, 1, 2): [(N, 1.5e-6)]})


def retained(mask, scores: Scores, native) -> float:
    return sum(float(scores.heads[i, h]) for i, row in enumerate(mask) if i not in native
               for h, r in enumerate(row) if r)


def brute_force(scores: Scores, f: float, m: int, latency: float | None, cost: CostModel):
    """(retrieval heads, score, latency ns) of the best plan by enumerating every head count per layer."""
    H, L = scores.num_kv_heads, scores.num_layers
    native = scores.model.native_sliding
    kw = dict(batch=1, sink=SINK, window=WINDOW, head_dim=scores.model.head_dim)
    ns = [round(cost.decode(k, H, context_length=N, **kw) * 1e9) for k in range(H + 1)]
    fixed = sum(round(cost.decode(H, H, context_length=min(N, w), **kw) * 1e9) for w in native.values())
    choosable = [i for i in range(L) if i not in native]
    full = sum(min(N, native[i]) if i in native else N for i in range(L)) * H
    best = None
    for ks in itertools.product(range(H + 1), repeat=len(choosable)):
        t, mixed = sum(ks), sum(0 < k < H for k in ks)
        kept = sum(min(N, native[i]) for i in native) * H + t * N + (len(choosable) * H - t) * min(N, SINK + WINDOW)
        lat = fixed + sum(ns[k] for k in ks)
        if mixed > m or kept / full > f or (latency is not None and lat > round(latency * 1e9)):
            continue
        score = sum(sum(sorted(scores.heads[i].tolist(), reverse=True)[:k]) for i, k in zip(choosable, ks, strict=True))
        key = (t, score, -lat)
        if best is None or key > best:
            best = key
    return best


def instance(rng: random.Random, H: int, native_layer: bool):
    heads = [[rng.choice([0.0, 0.25, 0.5, 1.0]) if rng.random() < 0.3 else rng.random() for _ in range(H)]
             for _ in range(4)]
    native = {2: 6} if native_layer else {}
    return Scores(heads, model=ModelInfo("llama", 4, H, 4, native_sliding=native))


@pytest.mark.parametrize("cost", [BYTES, MEASURED], ids=["bytes", "measured"])
def test_brute_force(cost):
    rng = random.Random(0)
    checked = 0
    for trial in range(60):
        H = 2 + trial % 2
        scores = instance(rng, H, native_layer=trial % 3 == 0)
        native = scores.model.native_sliding
        f = rng.uniform(0.3, 1.0)
        for m in (0, 1, 2, 4):
            loose = brute_force(scores, f, m, None, cost)
            if loose is None:
                continue
            for latency in (None, -loose[2] / 1e9, (-loose[2] - rng.randint(0, 4000)) / 1e9):
                best = brute_force(scores, f, m, latency, cost)
                if best is None:
                    with pytest.raises(ValueError, match="latency_budget=.* is infeasible: the smallest predicted"):
                        solve_hybrid(scores, kv_budget=f, context_length=N, max_mixed=m, latency_budget=latency,
                                     cost=cost, sink=SINK, window=WINDOW)
                    continue
                plan = solve_hybrid(scores, kv_budget=f, context_length=N, max_mixed=m, latency_budget=latency,
                                    cost=cost, sink=SINK, window=WINDOW)
                c = plan.provenance["constraint"]
                assert c["retrieval_heads"] == best[0] and len(plan.mixed_layers) <= m and plan.kv_fraction(N) <= f
                if m > 0:  # m = 0 ranks layers by scores.layers, as solve does
                    assert retained(plan.head_mask(H), scores, native) == pytest.approx(best[1], abs=1e-9)
                    assert round(plan.provenance["predicted_latency_s"] * 1e9) == -best[2]
                if latency is not None:
                    assert plan.provenance["predicted_latency_s"] <= latency + 1e-12
                checked += 1
    assert checked > 300


def test_m0_is_solve():
    gen = torch.Generator().manual_seed(1)
    for trial in range(40):
        L, H = 6 + trial % 5, 1 + trial % 4
        native = {1: 7} if trial % 2 else {}
        info = ModelInfo("llama", L, H, 8, native_sliding=native)
        scores = Scores(torch.rand(L, H, generator=gen), layers=torch.rand(L, generator=gen), model=info)
        f = 0.2 + 0.8 * float(torch.rand(1, generator=gen))
        n = 100 + 100 * trial
        try:
            want = solve(scores, kv_budget=f, context_length=n, sink=SINK, window=WINDOW)
        except ValueError:
            continue
        got = solve_hybrid(scores, kv_budget=f, context_length=n, max_mixed=0, sink=SINK, window=WINDOW)
        assert got.modes == want.modes and got.is_layer_exclusive
        assert got.provenance["solver"] == "hybrid-dp" and got.provenance["constraint"]["max_mixed"] == 0


def test_all_mixed_matches_solve_heads_in_score():
    gen = torch.Generator().manual_seed(2)
    for trial in range(20):
        L, H = 5 + trial % 4, 2 + trial % 3
        info = ModelInfo("llama", L, H, 8, native_sliding={0: 5} if trial % 2 else {})
        scores = Scores(torch.rand(L, H, generator=gen), model=info)
        f = 0.3 + 0.7 * float(torch.rand(1, generator=gen))
        want = solve_heads(scores, kv_budget=f, context_length=500, sink=SINK, window=WINDOW)
        got = solve_hybrid(scores, kv_budget=f, context_length=500, max_mixed=L, sink=SINK, window=WINDOW)
        native = info.native_sliding
        assert retained(got.head_mask(H), scores, native) == pytest.approx(retained(want.head_mask(H), scores, native))
        assert got.provenance["constraint"]["retrieval_heads"] == want.provenance["constraint"]["retrieval_heads"]


def test_latency_budget_trades_mixed_layers():
    """At the same KV budget a mixed layer costs an extra call: a tight latency budget forces fewer of them."""
    scores = Scores([[1.0, 0.0]] * 4, model=ModelInfo("llama", 4, 2, 4))
    free = solve_hybrid(scores, kv_budget=0.6, context_length=N, max_mixed=4, cost=BYTES, sink=SINK, window=WINDOW)
    assert len(free.mixed_layers) == 4
    tight = free.provenance["predicted_latency_s"] - 1e-6
    plan = solve_hybrid(scores, kv_budget=0.6, context_length=N, max_mixed=4, latency_budget=tight, cost=BYTES,
                        sink=SINK, window=WINDOW)
    assert len(plan.mixed_layers) < 4 and plan.provenance["predicted_latency_s"] <= tight
    assert plan.provenance["cost_model"]["kind"] == "bytes" and plan.provenance["constraint"]["latency_budget"] == tight


def test_a_lower_score_partial_plan_can_be_the_only_one_within_the_latency_budget():
    """2 heads in each of 3 layers (4.5 us apiece), or 1 head in each (2.5 us) and a retrieval layer (5.8 us): both
    reach 6 heads and 3 mixed layers, the first with the higher score. Only the second leaves time for another
    retrieval layer (9 heads, what the KV budget allows) within 19.5 us."""
    cost = CostModel(bandwidth=1e9, call_overhead=1e-6, points={
        ("decode", 1, 1, 3): [(N, 2.5e-6)], ("decode", 1, 2, 3): [(N, 4.5e-6)]})
    scores = Scores([[1, 1, 0]] * 3 + [[0.9] * 3] * 2, model=ModelInfo("llama", 5, 3, 4))
    kw = dict(kv_budget=0.65, context_length=N, max_mixed=3, cost=cost, sink=SINK, window=WINDOW)
    best = brute_force(scores, 0.65, 3, 19.5e-6, cost)
    plan = solve_hybrid(scores, latency_budget=19.5e-6, **kw)
    assert best[0] == 9 and plan.provenance["constraint"]["retrieval_heads"] == 9
    assert plan.modes == ("mixed", "mixed", "mixed", "retrieval", "retrieval")  # 1 head in each mixed layer
    assert retained(plan.head_mask(3), scores, {}) == pytest.approx(best[1])
    assert round(plan.provenance["predicted_latency_s"] * 1e9) == -best[2] == 19100


@pytest.mark.parametrize("latency_budget", [None, 1.0], ids=["no-latency-budget", "latency-budget"])
def test_ties_go_to_lower_layers_and_heads(latency_budget):
    """Equal in score and latency: more heads on lower layers, also among the partial plans a latency budget keeps."""
    scores = Scores([[0.5, 0.5]] * 4, model=ModelInfo("llama", 4, 2, 4))
    plan = solve_hybrid(scores, kv_budget=0.5, context_length=10**6, max_mixed=1, sink=SINK, window=WINDOW,
                        latency_budget=latency_budget)
    assert plan.head_mask(2) == [[True, True], [True, False], [False, False], [False, False]]
    plan = solve_hybrid(scores, kv_budget=0.51, context_length=10**6, max_mixed=1, sink=SINK, window=WINDOW,
                        latency_budget=latency_budget)
    assert plan.retrieval_layers == [0, 1] and plan.is_layer_exclusive


def test_huge_finite_numbers_do_not_overflow():
    """Seconds are summed as whole nanoseconds in Python ints: 1e300 s is a budget (or a figure) like any other."""
    scores = Scores([[1.0, 0.0]] * 4, model=ModelInfo("llama", 4, 2, 4))
    kw = dict(kv_budget=0.6, context_length=N, max_mixed=4, sink=SINK, window=WINDOW)
    free = solve_hybrid(scores, cost=BYTES, **kw)
    assert solve_hybrid(scores, cost=BYTES, latency_budget=1e300, **kw).heads == free.heads
    assert {o.split(":")[0] for o in free.provenance["cost_model"]["origins"].values()} == {"fallback"}
    slow_calls = CostModel(bandwidth=1e9, call_overhead=1e300)
    slow_figures = CostModel(points={("decode", 1, h, 2): [(N, 1e300)] for h in range(3)})
    for cost, latency in ((slow_calls, 8e300), (slow_figures, 4e300)):  # 4 mixed layers: 2 calls each
        for budget in (None, 1e301):
            plan = solve_hybrid(scores, cost=cost, latency_budget=budget, **kw)
            assert plan.heads == free.heads and plan.provenance["predicted_latency_s"] == pytest.approx(latency)
    with pytest.raises(ValueError, match=r"latency_budget=1e\+300 s is infeasible: the smallest predicted decode "
                                         r"latency within the other budgets is 4e\+300 s"):
        solve_hybrid(scores, cost=slow_figures, latency_budget=1e300, **kw)


@pytest.mark.parametrize("kw, message", [
    (dict(max_mixed=-1), "max_mixed must be an integer >= 0"),
    (dict(max_mixed=True), "max_mixed must be an integer >= 0"),
    (dict(batch=0), "batch must be an integer >= 1"),
    (dict(kv_budget=0.0), "kv_budget=0.0 is infeasible"),
    (dict(latency_budget=0), "latency_budget must be a number of seconds > 0"),
    (dict(latency_budget=1e-9), r"latency_budget=1e-09 s is infeasible: the smallest predicted decode latency within "
                                r"the other budgets is 5.536e-06 s"),  # 4 streaming layers: 24 tokens x 16 ns + 1 us
    (dict(context_length=0), "context_length must be an integer >= 1"),
    (dict(sink="4"), "sink must be an integer >= 0 .* got '4'"),
    (dict(window=0), "window must be an integer >= 1"),
])
def test_errors(kw, message):
    scores = Scores(torch.ones(4, 2), model=ModelInfo("llama", 4, 2, 4))
    args = {**dict(kv_budget=0.5, context_length=N, max_mixed=1, cost=BYTES, sink=SINK, window=WINDOW), **kw}
    with pytest.raises(ValueError, match=message):
        solve_hybrid(scores, **args)


def test_latency_budget_needs_the_model():
    with pytest.raises(ValueError, match="latency_budget needs scores.model"):
        solve_hybrid(Scores(torch.ones(4, 2)), kv_budget=0.5, context_length=N, max_mixed=1, latency_budget=1.0)
    plan = solve_hybrid(Scores(torch.ones(4, 2)), kv_budget=0.5, context_length=N, max_mixed=1, sink=SINK,
                        window=WINDOW)
    assert plan.provenance["predicted_latency_s"] is None
