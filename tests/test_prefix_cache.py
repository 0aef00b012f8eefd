"""profile/prefix_cache.py: plans measured from held inputs give the loss and answers of whole forwards on every
family (native sliding layers, layer_types indexed by position, padded batches), and the greedy elimination built
on it runs fewer layers than rerunning each round's base."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FAMILIES, SINK, WINDOW, modes_plan, tiny_model
from conftest import labelled_samples as samples

import zigzag_attn as zz
from zigzag_attn.profile import robust
from zigzag_attn.profile.measure import measure
from zigzag_attn.profile.prefix_cache import PrefixCache
from zigzag_attn.runtime.patch import plan_of


def modes(n: int, streaming) -> list[str]:
    return ["streaming" if i in streaming else "retrieval" for i in range(n)]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("batch_size", [1, 4])
def test_measurements_from_held_inputs_equal_whole_forwards(family, batch_size):
    model = tiny_model(family, seed=3)
    info = zz.describe(model)
    n, data = info.num_layers, samples(model)
    layers = [i for i in range(n) if i not in info.native_sliding]
    cache = PrefixCache(model, data, lambda m: modes_plan(model, {i for i, x in enumerate(m) if x == "streaming"}),
                        batch_size)

    def check(streaming, hold=()):
        got = cache.measure(modes(n, streaming), hold)
        want = measure(model, data, modes_plan(model, streaming), batch_size=batch_size)
        assert got.correct == want.correct and got.loss == pytest.approx(want.loss, rel=1e-5, abs=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the self-check must not fall back
        cache.fill(modes(n, set()), layers[1:])  # a base run only as far as its last needed input
        assert cache.held(modes(n, set())) == layers[-1]
        first, second = layers[1], layers[-1]
        check({second}, hold=layers)  # from the last layer: holds nothing past it
        check({first}, hold=layers)  # a round's trial: holds its inputs after `first`
        cache.prune(modes(n, {first}))  # the next round's base is that trial
        assert all(p[first] == "streaming" for p, x in cache.store if x > first)
        assert cache.held(modes(n, {first})) == layers[-1]  # no base rerun needed
        check({first, second})
        check({first, layers[2]} if len(layers) > 3 else {first})
    assert cache.exact and len(model.get_decoder().layers) == n and plan_of(model) is None
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == n  # put back


def test_a_forward_that_does_more_between_layers_falls_back(monkeypatch):
    """If running from a held input disagrees with the whole forward, the first such measurement says so, holds
    nothing from then on, and every later one is a whole forward: the losses stay right."""
    model = tiny_model("llama", seed=2)
    n, data = zz.describe(model).num_layers, samples(model, (30, 31))
    cache = PrefixCache(model, data, lambda m: modes_plan(model, {i for i, x in enumerate(m) if x == "streaming"}))
    cache.fill(modes(n, set()), [1, 2, 3])
    cache.store = {k: [t * 1.5 for t in v] for k, v in cache.store.items()}
    with pytest.warns(UserWarning, match="measuring whole forwards"):
        assert cache.measure(modes(n, {2})) == measure(model, data, modes_plan(model, {2}))
    assert not cache.exact and not cache.store
    assert cache.measure(modes(n, {3})) == measure(model, data, modes_plan(model, {3}))


def test_the_first_partial_measurement_after_a_whole_forward_is_still_checked():
    """`robust_scores` measures full attention first, a whole forward holding its inputs: that is no check, so the
    first measurement from held inputs after it is still compared with a whole forward, and falls back."""
    model = tiny_model("llama", seed=2)
    n, data = zz.describe(model).num_layers, samples(model, (30, 31))
    cache = PrefixCache(model, data, lambda m: modes_plan(model, {i for i, x in enumerate(m) if x == "streaming"}))
    assert cache.measure(modes(n, set()), range(1, n)) == measure(model, data)
    cache.store = {k: [t * 1.5 for t in v] for k, v in cache.store.items()}
    with pytest.warns(UserWarning, match="measuring whole forwards"):
        assert cache.measure(modes(n, {2})) == measure(model, data, modes_plan(model, {2}))
    assert not cache.exact


def test_greedy_runs_fewer_layers_than_rerunning_each_base(monkeypatch):
    """The same robust profile with held inputs (all groups fit) and with `Suffix` (one group at a time, a base
    forward each round): identical scores and records, and at most 3/4 of the decoder-layer calls overall."""
    model = tiny_model("llama", seed=4, layers=12)
    groups = {"x": samples(model, (30, 31), seed=5), "y": samples(model, (40, 22), seed=6)}
    calls = {"n": 0}
    for layer in model.get_decoder().layers:
        layer.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    runs = {}
    real = robust.usable
    for held in (True, False):
        if not held:  # all groups together do not "fit": Suffix per group
            monkeypatch.setattr(robust, "usable", lambda m, s=(), *a, **k: len(s) <= 2 and real(m, s, *a, **k))
        calls["n"] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            runs[held] = robust.robust_scores(model, groups, None, sink=SINK, window=WINDOW, keep=0.25,
                                              candidates=3, progress=False), calls["n"]
    ((s1, m1), n1), ((s0, m0), n0) = runs[True], runs[False]
    assert torch.equal(s1, s0) and m1["greedy"] == m0["greedy"]
    assert m1["ablation"] == pytest.approx(m0["ablation"], abs=1e-5)
    assert n1 <= 0.75 * n0, (n1, n0)


def test_greedy_cuts_trials_short_and_chooses_the_same(monkeypatch):
    """With held inputs a greedy trial stops at the first group where it is already worse than the round's best
    trial: the same scores and records as `Suffix` (every trial on every group), in fewer measurements."""
    model = tiny_model("llama", seed=4, layers=12)
    groups = {"x": samples(model, (30, 31), seed=5), "y": samples(model, (40, 22), seed=6),
              "z": samples(model, (26, 35), seed=7)}
    counted = {"n": 0}
    real_measure = PrefixCache.measure

    def measure_spy(self, *a, **k):
        counted["n"] += 1
        return real_measure(self, *a, **k)

    monkeypatch.setattr(PrefixCache, "measure", measure_spy)
    held = robust.robust_scores(model, groups, None, sink=SINK, window=WINDOW, keep=0.25, candidates=4,
                                progress=False)
    rounds = len(held[1]["greedy"])
    every = 12 * 3 + (rounds - 1) * 4 * 3  # the ablation, then each later round's 4 trials on 3 groups
    real = robust.usable
    monkeypatch.setattr(robust, "usable", lambda m, s=(), *a, **k: len(s) <= 2 and real(m, s, *a, **k))
    whole = robust.robust_scores(model, groups, None, sink=SINK, window=WINDOW, keep=0.25, candidates=4,
                                 progress=False)
    assert torch.equal(held[0], whole[0]) and held[1]["greedy"] == whole[1]["greedy"]
    assert counted["n"] < every, (counted["n"], every)


class _Cache:
    """A stand-in for `PrefixCache` on one group (its samples: [group name]): a plan's loss is the sum of the group's
    weights over its streaming layers, plus `pair` where layers 1 and 3 both stream; every measurement is logged."""

    weights: dict[str, dict[int, float]] = {}
    log: list[tuple[str, frozenset]] = []
    pair = 0.0

    def __init__(self, model, samples, plan_for, batch_size=1, check=True):
        self.group, self.exact = samples[0], True

    def prune(self, base, keep=None):
        pass

    def fill(self, modes, layers):
        pass

    def measure(self, modes, hold=()):
        streaming = frozenset(i for i, m in enumerate(modes) if m == "streaming")
        self.log.append((self.group, streaming))
        loss = sum(w for i, w in self.weights[self.group].items() if i in streaming)
        return type("M", (), {"loss": loss + (self.pair if {1, 3} <= streaming else 0.0)})


def test_greedy_measures_a_trial_only_while_it_could_still_be_chosen(monkeypatch):
    """Best first: a trial measures its next group only while its worst rise so far is the lowest (the earliest in
    the round among equals); so every other trial stops at its first group above the chosen one's worst rise, at
    or above it when given later, and the choice and record are those of measuring every trial on every group."""
    weights = {"a": {0: 0.5, 1: 0.1, 2: 0.2, 3: 0.3, 4: 0.2, 5: 0.6},
               "b": {0: 0.1, 1: 0.4, 2: 0.2, 3: 0.1, 4: 0.3, 5: 0.0},
               "c": {0: 0.2, 1: 0.2, 2: 0.5, 3: 0.2, 4: 0.2, 5: 0.1}}
    monkeypatch.setattr(robust, "PrefixCache", _Cache)
    monkeypatch.setattr(robust, "usable", lambda *a, **k: True)
    monkeypatch.setattr(_Cache, "weights", weights)
    monkeypatch.setattr(_Cache, "log", [])
    monkeypatch.setattr(_Cache, "pair", -0.25)
    model = tiny_model("llama", layers=6)
    groups = {g: [g] for g in weights}
    for candidates in (None, 3):
        _Cache.log.clear()
        _, meta = robust.robust_scores(model, groups, sink=SINK, window=WINDOW, keep=0.0, candidates=candidates,
                                       progress=False)

        def rise(g, streaming):
            return sum(w for i, w in weights[g].items() if i in streaming) + (-0.25 if {1, 3} <= streaming else 0)

        # the reference: every trial on every group, the first of the lowest in ablation order chosen
        ablation = [max(rise(g, {i}) for g in groups) for i in range(6)]
        assert meta["ablation"] == pytest.approx(ablation)
        chosen, kept = set(), list(range(6))
        for record in meta["greedy"]:
            pool = sorted(kept, key=lambda i: (ablation[i], i))[:candidates]
            worst = [max(rise(g, chosen | {i}) for g in groups) for i in pool]
            best = min(range(len(pool)), key=worst.__getitem__)
            assert record == {"streaming": pool[best], "worst_loss_rise": round(worst[best], 5)}
            # what was measured of each trial this round: the chosen one every group, the others up to the first
            # group that rules them out, and nothing after it
            for k, i in enumerate(pool):
                measured = [g for g, s in _Cache.log if s == frozenset(chosen | {i})]
                if len(chosen) == 0:
                    assert len(measured) == 3  # the ablation
                elif k == best:
                    assert sorted(measured) == sorted(groups)
                else:
                    rises = [rise(g, chosen | {i}) for g in measured]
                    assert len(set(measured)) == len(measured) >= 1
                    assert all(r <= worst[best] for r in rises[:-1])
                    assert rises[-1] > worst[best] or (rises[-1] == worst[best] and k > best)
            chosen.add(pool[best])
            kept.remove(pool[best])
        assert len(meta["greedy"]) == 6


def test_ablation_trials_hold_inputs_for_the_greedy_and_it_chooses_the_same(monkeypatch):
    """The ablation runs its trials from the last layer to the first, each holding its inputs at the layers after
    it with the lowest scores so far (`AHEAD`), so that the greedy's trial of that layer starts there: the same
    scores and records as holding none, in fewer decoder-layer calls."""
    model = tiny_model("llama", seed=4, layers=12)
    groups = {"x": samples(model, (30, 31), seed=5), "y": samples(model, (40, 22), seed=6),
              "z": samples(model, (26, 35), seed=7)}
    calls = {"n": 0}
    for layer in model.get_decoder().layers:
        layer.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    runs, held = {}, robust.AHEAD
    for ahead in (held, 0):
        monkeypatch.setattr(robust, "AHEAD", ahead)
        calls["n"] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            runs[ahead] = robust.robust_scores(model, groups, None, sink=SINK, window=WINDOW, keep=0.25,
                                               candidates=3, progress=False), calls["n"]
    ((s1, m1), n1), ((s0, m0), n0) = runs[held], runs[0]
    assert torch.equal(s1, s0) and m1["greedy"] == m0["greedy"]
    assert m1["ablation"] == pytest.approx(m0["ablation"], abs=1e-5)
    assert n1 < n0, (n1, n0)
