"""The solvers against brute force on small instances, and their error messages."""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zigzag_attn.plan import ModelInfo, Plan
from zigzag_attn.scores import Scores
from zigzag_attn.solve import solve, solve_heads

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


# -- brute-force reference ------------------------------------------------------------------------
def kv_fraction(retrieval: set[int], num_layers: int, native: dict[int, int], sink: int, window: int, N: int) -> float:
    """Independent of Plan.kv_fraction: whole-layer KV tokens kept / tokens of full attention (same per head)."""
    full = kept = 0
    for layer in range(num_layers):
        if layer in native:
            full, kept = full + min(N, native[layer]), kept + min(N, native[layer])
        else:
            full += N
            kept += N if layer in retrieval else min(N, sink + window)
    return kept / full


def brute_force(inst: dict, *, k: int | None = None, budget: tuple[float, int] | None = None) -> set[int] | None:
    """Best retrieval set among the choosable layers, or None if infeasible.

    Budget: the largest feasible size first. Then the largest score sum; ties to the lexicographically smallest
    sorted tuple of layer indices (what "ties to the lower layer index" means for a set).
    """
    scores, native, pin_r, pin_s = inst["layer_scores"], inst["native"], inst["pin_r"], inst["pin_s"]
    choosable = [i for i in range(len(scores)) if i not in native]
    feasible = []
    for size in range(len(choosable) + 1):
        for combo in itertools.combinations(choosable, size):
            s = set(combo)
            if not (pin_r - set(native)) <= s or s & pin_s:
                continue
            if k is not None and size != k:
                continue
            if budget is not None:
                f, N = budget
                if kv_fraction(s, len(scores), native, inst["sink"], inst["window"], N) > f:
                    continue
            feasible.append(combo)
    if not feasible:
        return None
    if budget is not None:
        size = max(len(c) for c in feasible)
        feasible = [c for c in feasible if len(c) == size]
    best = min(feasible, key=lambda c: (-sum(scores[i] for i in c), c))
    return set(best)


@st.composite
def instances(draw, native_ok: bool = True, pins_ok: bool = True) -> dict:
    L = draw(st.integers(1, 8))
    H = draw(st.integers(1, 3))
    if draw(st.booleans()):  # small integers: many exact ties
        heads = draw(st.lists(st.lists(st.integers(-3, 3), min_size=H, max_size=H), min_size=L, max_size=L))
    else:
        heads = draw(st.lists(st.lists(st.floats(-10, 10, width=32), min_size=H, max_size=H), min_size=L, max_size=L))
    native = {}
    if native_ok and draw(st.booleans()):
        for layer in draw(st.sets(st.integers(0, L - 1), max_size=L)):
            native[layer] = draw(st.integers(1, 20))
    with_model = bool(native) or draw(st.booleans())
    model = ModelInfo("toy", L, H, 16, native_sliding=native) if with_model else None
    choosable = [i for i in range(L) if i not in native]
    pin_r, pin_s = set(), set()
    if pins_ok and draw(st.booleans()):
        pin_r = draw(st.sets(st.sampled_from(range(L)), max_size=3))  # may name native layers: a no-op
        rest = [i for i in choosable if i not in pin_r]
        if rest:
            pin_s = draw(st.sets(st.sampled_from(rest), max_size=3))
    sc = Scores(heads, model=model, method="test")
    return {"scores": sc, "layer_scores": sc.layers.tolist(), "native": native, "pin_r": pin_r, "pin_s": pin_s,
            "sink": draw(st.integers(0, 4)), "window": draw(st.integers(1, 8)), "n": len(choosable)}


def run(inst: dict, **kw) -> Plan:
    return solve(inst["scores"], sink=inst["sink"], window=inst["window"], pin_retrieval=inst["pin_r"],
                 pin_streaming=inst["pin_s"], **kw)


def check_plan(plan: Plan, inst: dict, expected: set[int]) -> None:
    assert plan.is_layer_exclusive
    assert set(plan.retrieval_layers) == expected | set(inst["native"])
    assert plan.model == inst["scores"].model
    assert (plan.sink, plan.window) == (inst["sink"], inst["window"])
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan  # provenance is JSON-able
    assert plan.provenance["solver"] == "topk" and plan.provenance["method"] == "test"
    assert plan.provenance["layer_scores"] == inst["layer_scores"]
    if inst["scores"].model is not None:
        plan.check_model(inst["scores"].model)


# -- optimality -----------------------------------------------------------------------------------
@SETTINGS
@given(instances(), st.data())
def test_retrieval_layers_matches_brute_force(inst, data):
    k = data.draw(st.integers(0, inst["n"]))
    expected = brute_force(inst, k=k)
    if expected is None:
        with pytest.raises(ValueError, match="pinned"):
            run(inst, retrieval_layers=k)
        return
    plan = run(inst, retrieval_layers=k)
    check_plan(plan, inst, expected)
    assert plan.provenance["constraint"]["retrieval_layers"] == k


@SETTINGS
@given(instances(), st.floats(0, 1))
def test_retrieval_ratio_matches_brute_force(inst, r):
    k = math.floor(r * inst["n"] + 0.5)
    expected = brute_force(inst, k=k)
    if expected is None:
        with pytest.raises(ValueError, match="pinned"):
            run(inst, retrieval_ratio=r)
        return
    plan = run(inst, retrieval_ratio=r)
    check_plan(plan, inst, expected)
    assert plan.provenance["constraint"]["retrieval_ratio"] == r


@SETTINGS
@given(instances(), st.integers(1, 40), st.data())
def test_kv_budget_matches_brute_force(inst, N, data):
    L, native = len(inst["layer_scores"]), inst["native"]
    if data.draw(st.booleans()):  # exactly an achievable fraction: the boundary must be feasible
        some = set(data.draw(st.sets(st.sampled_from(range(L)))))
        f = kv_fraction(some, L, native, inst["sink"], inst["window"], N)
    else:
        f = data.draw(st.floats(-0.1, 1.1))
    expected = brute_force(inst, budget=(f, N))
    if expected is None:
        with pytest.raises(ValueError, match="infeasible"):
            run(inst, kv_budget=f, context_length=N)
        return
    plan = run(inst, kv_budget=f, context_length=N)
    check_plan(plan, inst, expected)
    assert plan.kv_fraction(N) <= f
    assert plan.kv_fraction(N) == kv_fraction(expected, L, native, inst["sink"], inst["window"], N)
    c = plan.provenance["constraint"]
    assert (c["kv_budget"], c["context_length"], c["retrieval_layers"]) == (f, N, len(expected))


def test_ties_go_to_lower_layers():
    sc = Scores([[1.0], [2.0], [2.0], [1.0], [2.0]])
    assert solve(sc, retrieval_layers=2).retrieval_layers == [1, 2]
    assert solve(sc, retrieval_layers=4).retrieval_layers == [0, 1, 2, 4]


def test_native_sliding_layers_stay_retrieval_and_do_not_count():
    model = ModelInfo("gemma2", 6, 2, 8, native_sliding={0: 16, 2: 16, 4: 16})
    sc = Scores([[9, 9], [1, 1], [9, 9], [3, 3], [9, 9], [2, 2]], model=model, method="m")
    plan = solve(sc, retrieval_layers=1)
    assert plan.retrieval_layers == [0, 2, 3, 4] and plan.streaming_layers == [1, 5]
    assert solve(sc, retrieval_ratio=1.0).retrieval_layers == list(range(6))
    assert solve(sc, retrieval_ratio=0.0).streaming_layers == [1, 3, 5]
    assert solve(sc, retrieval_layers=0, pin_retrieval=[0]).streaming_layers == [1, 3, 5]  # no-op pin
    # describe() does not count the model's own sliding-window layers as retrieval
    assert plan.describe() == ("Plan(6 layers: 1 retrieval, 2 streaming, 0 mixed, 3 the model's own sliding window; "
                               "sink=64, window=256) [wswRws]")


def test_ratio_rounds_half_up():
    sc = Scores(torch.arange(5.0).reshape(5, 1))
    assert len(solve(sc, retrieval_ratio=0.5).retrieval_layers) == 3  # round(2.5) would give 2
    assert len(solve(sc, retrieval_ratio=0.3).retrieval_layers) == 2  # 1.5 -> 2
    assert len(solve(sc, retrieval_ratio=0.29).retrieval_layers) == 1  # 1.45 -> 1


def test_budget_counts_native_layers():
    # 4 layers, layer 0 natively sliding (window 100). N=1000, sink+window=100.
    model = ModelInfo("t", 4, 1, 8, native_sliding={0: 100})
    sc = Scores([[0.0], [3.0], [2.0], [1.0]], model=model)
    # kept/full with k retrieval of the 3 choosable: (100 + 1000k + 100(3-k)) / 3100
    for k in range(4):
        f = (100 + 1000 * k + 100 * (3 - k)) / 3100
        plan = solve(sc, kv_budget=f, context_length=1000, sink=4, window=96)
        assert plan.retrieval_layers == [0, 1, 2, 3][:k + 1]  # native layer 0, then by score
        assert plan.kv_fraction(1000) == f
        if k:
            plan = solve(sc, kv_budget=f - 1e-9, context_length=1000, sink=4, window=96)
            assert len(plan.retrieval_layers) == k
    assert solve(sc, kv_budget=1.0, context_length=50, sink=4, window=96).streaming_layers == []


# -- errors ---------------------------------------------------------------------------------------
@pytest.fixture
def sc8() -> Scores:
    model = ModelInfo("t", 8, 2, 8, native_sliding={7: 32})
    return Scores(torch.arange(16.0).reshape(8, 2), model=model, method="gates")


@pytest.mark.parametrize("kw, message", [
    ({}, "exactly one of retrieval_layers, retrieval_ratio or kv_budget; got none"),
    ({"retrieval_layers": 2, "kv_budget": 0.5, "context_length": 10}, "got retrieval_layers, kv_budget"),
    ({"retrieval_ratio": 1.5}, "retrieval_ratio must be a number in [0, 1]; got 1.5"),
    ({"retrieval_ratio": -0.1}, "got -0.1"),
    ({"retrieval_ratio": float("nan")}, "got nan"),
    ({"retrieval_layers": 8}, "integer in [0, 7] (the choosable layers: 8 minus 1 native sliding); got 8"),
    ({"retrieval_layers": -1}, "got -1"),
    ({"retrieval_layers": 2.0}, "got 2.0"),
    ({"retrieval_layers": True}, "got True"),
    ({"retrieval_layers": 2, "context_length": 100}, "context_length is only used with kv_budget"),
    ({"kv_budget": 0.5}, "kv_budget needs context_length"),
    ({"kv_budget": 0.5, "context_length": 0}, "context_length must be an integer >= 1; got 0"),
    ({"kv_budget": float("nan"), "context_length": 10}, "kv_budget must be a number"),
    ({"retrieval_layers": 2, "pin_retrieval": [1], "pin_streaming": [1, 2]}, "layers [1] are pinned both"),
    ({"retrieval_layers": 2, "pin_retrieval": [8]},
     "pin_retrieval: layer 8 is out of range; the model has layers 0..7"),
    ({"retrieval_layers": 2, "pin_streaming": [-1]}, "pin_streaming: layer -1 is out of range"),
    ({"retrieval_layers": 2, "pin_streaming": [7]}, "layers [7] already use the model's own sliding window"),
    ({"retrieval_layers": 1, "pin_retrieval": [0, 3]}, "retrieval_layers=1, but 2 layers are pinned retrieval: [0, 3]"),
    ({"retrieval_ratio": 0.9, "pin_streaming": [0, 1]},
     "retrieval_ratio=0.9 of 7 choosable layers gives 6 retrieval layers, but only 5 choosable layers are not pinned"),
    ({"kv_budget": 0.1, "context_length": 1000, "window": 256},
     "kv_budget=0.1 is infeasible at context_length=1000: even with every choosable layer streaming the KV fraction"),
    ({"kv_budget": 0.5, "context_length": 1000, "pin_retrieval": [1, 2, 3, 4]},
     "even with only the pinned retrieval layers [1, 2, 3, 4]"),
    ({"retrieval_layers": 2, "window": 0}, "window must be an integer >= 1"),
])
def test_bad_arguments(sc8, kw, message):
    with pytest.raises(ValueError) as e:
        solve(sc8, **kw)
    assert message in str(e.value)


def test_scores_must_be_scores():
    with pytest.raises(TypeError, match="Scores"):
        solve([[1.0]], retrieval_layers=1)
    with pytest.raises(TypeError, match="Scores"):
        solve_heads([[1.0]], kv_budget=1.0, context_length=10)
    with pytest.raises(TypeError, match="pin_streaming must be a collection of layer indices; got '3'"):
        solve(Scores([[1.0]] * 4), retrieval_layers=1, pin_streaming="3")


# -- solve_heads ----------------------------------------------------------------------------------
@SETTINGS
@given(instances(pins_ok=False), st.integers(1, 40), st.data())
def test_solve_heads_is_the_largest_top_set_within_budget(inst, N, data):
    sc, native, sink, window = inst["scores"], inst["native"], inst["sink"], inst["window"]
    L, H = sc.num_layers, sc.num_kv_heads
    choosable = [(layer, h) for layer in range(L) if layer not in native for h in range(H)]
    if data.draw(st.booleans()):  # exactly the fraction of some number of retrieval heads
        m = data.draw(st.integers(0, len(choosable)))
        kept = sum(min(N, native[layer]) * H for layer in native) + m * N + (len(choosable) - m) * min(N, sink + window)
        f = kept / (sum(min(N, native[layer]) * H for layer in native) + len(choosable) * N)
    else:
        f = data.draw(st.floats(0, 1.1))

    def fraction(mask):
        return Plan.from_heads(mask, sink=sink, window=window, model=sc.model).kv_fraction(N)

    none = [[layer in native] * H for layer in range(L)]
    if fraction(none) > f:
        with pytest.raises(ValueError, match=re.escape(f"kv_budget={f} is infeasible at context_length={N}")):
            solve_heads(sc, kv_budget=f, context_length=N, sink=sink, window=window)
        return
    plan = solve_heads(sc, kv_budget=f, context_length=N, sink=sink, window=window)
    mask = plan.head_mask(H)
    assert plan.kv_fraction(N) <= f
    assert all(all(mask[layer]) for layer in native)
    chosen = [lh for lh in choosable if mask[lh[0]][lh[1]]]
    others = [lh for lh in choosable if not mask[lh[0]][lh[1]]]
    for layer, h in others:  # maximal: one more head would break the budget
        more = [row[:] for row in mask]
        more[layer][h] = True
        assert fraction(more) > f
    heads = sc.heads.tolist()

    def key(lh):
        return (-heads[lh[0]][lh[1]], lh)

    assert all(key(c) < key(o) for c in chosen for o in others)  # the top heads, ties to lower layer then head
    c = plan.provenance["constraint"]
    assert (c["kv_budget"], c["context_length"], c["retrieval_heads"]) == (f, N, len(chosen))
    assert plan.provenance["solver"] == "topk-heads" and plan.provenance["head_scores"] == heads
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_solve_heads_example():
    model = ModelInfo("t", 3, 2, 8, native_sliding={2: 50})
    sc = Scores([[5.0, 1.0], [3.0, 5.0], [0.0, 0.0]], model=model)
    # N=1000, sink+window=100: full = 4*1000 + 2*50; each retrieval head adds 900 to 4*100 + 100.
    f = (500 + 2 * 900) / 4100
    plan = solve_heads(sc, kv_budget=f, context_length=1000, sink=10, window=90)
    assert plan.head_mask(2) == [[True, False], [False, True], [True, True]]
    assert plan.modes == ("mixed", "mixed", "retrieval")
    assert plan.kv_fraction(1000) == f
    with pytest.raises(ValueError, match=r"KV fraction is 0\.12195"):
        solve_heads(sc, kv_budget=0.1, context_length=1000, sink=10, window=90)
    with pytest.raises(ValueError, match="kv_budget needs context_length"):
        solve_heads(sc, kv_budget=0.5, context_length=None)
