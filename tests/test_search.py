"""profile/search.py: the one greedy search reuses held inputs and skips measurements without changing a choice.

Held across rounds (`prefix_cache.PrefixCache` per group), the robust profile runs fewer decoder layers than holding
one group's inputs for one round at a time, cuts greedy trials short once they cannot be chosen, and lets ablation
trials hold inputs for the greedy; `refine` and the ablation scores hold inputs too. tests/test_greedy_reference.py
checks every way against a plain search of whole forwards.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import SINK, WINDOW, layer_calls, modes_plan, tiny_model
from conftest import labelled_samples as samples

from zigzag_attn.profile import refine, robust, search, trials
from zigzag_attn.profile.ablation import ablation_scores
from zigzag_attn.profile.prefix_cache import PrefixCache


def one_round_at_a_time(monkeypatch):
    """Make held inputs "fit" for one group of 2 prompts at a time only: no inputs are kept across rounds."""
    real = search.usable
    for module in (search, trials):
        monkeypatch.setattr(module, "usable", lambda m, s=(), *a, **k: len(s) <= 2 and real(m, s, *a, **k))


def test_greedy_runs_fewer_layers_than_rerunning_each_base(monkeypatch):
    """The same robust profile with held inputs (all groups fit) and with one group's inputs held for one round at a
    time (each round's base run again): identical scores and records, and at most 3/4 of the decoder-layer calls."""
    model = tiny_model("llama", seed=4, layers=12)
    groups = {"x": samples(model, (30, 31), seed=5), "y": samples(model, (40, 22), seed=6)}
    calls = layer_calls(model)
    runs = {}
    for held in (True, False):
        if not held:  # all groups together do not "fit": one group's inputs for one round at a time
            one_round_at_a_time(monkeypatch)
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
    trial: the same scores and records as one round at a time (every trial on every group), in fewer measurements."""
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
    rounds, measured = len(held[1]["greedy"]), counted["n"]
    every = 12 * 3 + (rounds - 1) * 4 * 3  # the ablation, then each later round's 4 trials on 3 groups
    one_round_at_a_time(monkeypatch)
    whole = robust.robust_scores(model, groups, None, sink=SINK, window=WINDOW, keep=0.25, candidates=4,
                                 progress=False)
    assert torch.equal(held[0], whole[0]) and held[1]["greedy"] == whole[1]["greedy"]
    assert measured < every, (measured, every)
    assert counted["n"] - measured == every  # one round at a time: every trial on every group


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

    def release(self):
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
    monkeypatch.setattr(trials, "PrefixCache", _Cache)
    for module in (search, trials):
        monkeypatch.setattr(module, "usable", lambda *a, **k: True)
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
    calls = layer_calls(model)
    runs, held = {}, search.AHEAD
    for ahead in (held, 0):
        monkeypatch.setattr(search, "AHEAD", ahead)
        calls["n"] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            runs[ahead] = robust.robust_scores(model, groups, None, sink=SINK, window=WINDOW, keep=0.25,
                                               candidates=3, progress=False), calls["n"]
    ((s1, m1), n1), ((s0, m0), n0) = runs[held], runs[0]
    assert torch.equal(s1, s0) and m1["greedy"] == m0["greedy"]
    assert m1["ablation"] == pytest.approx(m0["ablation"], abs=1e-5)
    assert n1 < n0, (n1, n0)


@pytest.mark.parametrize("scores", [False, True])
def test_refine_holds_inputs_across_rounds(monkeypatch, scores):
    """`refine` on one model holds its inputs: fewer decoder-layer calls than holding them one round at a time,
    and far fewer than whole forwards, for the same choices and losses."""
    model = tiny_model("llama", seed=4, layers=10)
    data, n = samples(model, seed=5), 10
    start = modes_plan(model, set())
    prior = torch.tensor([float((3 * i) % 7) for i in range(n)]) if scores else None
    calls, runs, real = layer_calls(model), {}, search.usable
    for way in ("held", "round", "whole"):
        with monkeypatch.context() as m:
            if way != "held":
                for module in (search, trials):  # "round": never all layers' inputs at once
                    m.setattr(module, "usable", lambda model, s=(), layers=0, *a, way=way, **k: way == "round"
                              and layers < n and real(model, s, layers, *a, **k))
            calls["n"] = 0
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                plan = refine(start, model, data, retrieval_layers=2, scores=prior, candidates=3 if scores else None,
                              batch_size=2, progress=False)
            runs[way] = plan.provenance["refine"]["history"], calls["n"]
    (held, n1), (per_round, n2), (whole, n3) = runs["held"], runs["round"], runs["whole"]
    for other in (per_round, whole):
        assert [h["streaming"] for h in held] == [h["streaming"] for h in other]
        assert [h["loss"] for h in held] == pytest.approx([h["loss"] for h in other], rel=1e-5)
    assert n1 < n2 < n3, (n1, n2, n3)


def test_ablation_runs_each_trial_from_its_layer():
    """The ablation scores hold full attention's inputs as its loss is measured: each trial runs its own layer and
    those after it: 52 decoder-layer calls a batch where whole forwards make 72."""
    model = tiny_model("llama", seed=4, layers=8)
    data, calls = samples(model, seed=5), layer_calls(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores, meta = ablation_scores(model, data, sink=SINK, window=WINDOW, batch_size=2, progress=False)
    batches = 4  # 6 prompts of two lengths, at most 2 a batch
    # full attention, then layers i.. for trial i, and the first partial trial checked by a whole forward
    assert meta["prefix_reuse"] and calls["n"] == batches * (8 + sum(8 - i for i in range(8)) + 8)
