"""profile/suffix.py: a trial run from layer l on the base's layer-l inputs gives the loss and answers of a whole
forward, on every family (native sliding layers, layer_types indexed by position), padded batches included."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FAMILIES, SINK, WINDOW, modes_plan, tiny_model
from conftest import labelled_samples as samples

import zigzag_attn as zz
from zigzag_attn.profile.measure import Measurement, measure
from zigzag_attn.profile.suffix import Suffix, usable
from zigzag_attn.runtime.patch import plan_of


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("batch_size", [1, 4])
def test_trials_equal_whole_forwards(family, batch_size):
    model = tiny_model(family, seed=3)
    info = zz.describe(model)
    data = samples(model)
    choosable = [i for i in range(info.num_layers) if i not in info.native_sliding]
    assert usable(model)
    run = Suffix(model, data, batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the self-check must not fall back
        full = run.base(None, choosable)  # the ablation: base full attention, one layer streaming a trial
        assert full == measure(model, data, batch_size=batch_size)
        for i in choosable:
            got, want = run.trial(modes_plan(model, {i}), i), measure(model, data, modes_plan(model, {i}),
                                                                       batch_size=batch_size)
            assert got.correct == want.correct and got.loss == pytest.approx(want.loss, rel=1e-5, abs=1e-6)
        first = choosable[0]  # a greedy round: base with a layer streaming, trials after it
        base = run.base(modes_plan(model, {first}), choosable[1:])
        assert base == measure(model, data, modes_plan(model, {first}), batch_size=batch_size)
        for i in choosable[1:]:
            got = run.trial(modes_plan(model, {first, i}), i)
            want = measure(model, data, modes_plan(model, {first, i}), batch_size=batch_size)
            assert got.correct == want.correct and got.loss == pytest.approx(want.loss, rel=1e-5, abs=1e-6)
    assert len(model.get_decoder().layers) == info.num_layers and plan_of(model) is None
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == info.num_layers  # put back


def test_a_layer_not_kept_is_refused():
    model = tiny_model("llama")
    run = Suffix(model, samples(model, (30,)))
    run.base(None, [2])
    with pytest.raises(ValueError, match="layer 1's inputs were not kept"):
        run.trial(modes_plan(model, {1}), 1)


def test_a_forward_that_does_more_between_layers_falls_back(monkeypatch):
    """If running the suffix alone disagrees with the whole forward, the first trial says so and every trial is
    then a whole forward: the losses stay right."""
    model = tiny_model("llama", seed=2)
    data = samples(model, (30, 31))
    run = Suffix(model, data)
    run.base(None, [1, 2, 3])
    original = run._from
    monkeypatch.setattr(run, "_from", lambda start, x, mask, keep: original(start, x * 1.5, mask, keep))
    with pytest.warns(UserWarning, match="measuring whole forwards"):
        first = run.trial(modes_plan(model, {1}), 1)
    assert first == measure(model, data, modes_plan(model, {1}))
    assert run.trial(modes_plan(model, {3}), 3) == measure(model, data, modes_plan(model, {3}))


def test_answers_that_differ_fall_back_even_where_the_losses_agree(monkeypatch):
    """The self-check compares answers as well as the loss: a partial run with the whole forward's loss but other
    answers is not trusted either."""
    model = tiny_model("llama", seed=2)
    data = samples(model, (30, 31))
    run = Suffix(model, data)
    run.base(None, [1, 2, 3])
    real, calls = run._run, []

    def other_answers(forward):  # the trial's own run (the first after base) gets its answers flipped
        got = real(forward)
        calls.append(got)
        return Measurement(got.loss, [not c for c in got.correct]) if len(calls) == 1 else got

    monkeypatch.setattr(run, "_run", other_answers)
    want = measure(model, data, modes_plan(model, {1}))
    with pytest.warns(UserWarning, match=r"answers right where the whole forward gives .*; measuring whole forwards"):
        assert run.trial(modes_plan(model, {1}), 1) == want
    assert not run.exact and calls[0].loss == pytest.approx(want.loss, rel=1e-5)  # the losses did agree


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_robust_and_ablation_profiles_are_the_same_with_and_without_reuse(family, monkeypatch):
    """The profiles that run trials from a layer on give exactly the scores and records of whole forwards."""
    from zigzag_attn.profile import ablation, robust

    model = tiny_model(family, seed=4)
    groups = {"x": samples(model, (30, 31), seed=5), "y": samples(model, (40, 22), seed=6)}
    runs = {}
    for reuse in (True, False):
        if not reuse:  # whole forwards everywhere
            monkeypatch.setattr(robust, "usable", lambda *a, **k: False)
            monkeypatch.setattr(ablation, "usable", lambda *a, **k: False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = robust.robust_scores(model, groups, groups, sink=SINK, window=WINDOW, keep=0.25, candidates=2,
                                     progress=False)
            a = ablation.ablation_scores(model, groups["x"], sink=SINK, window=WINDOW, progress=False)
        runs[reuse] = (r, a)
    (r1, a1), (r0, a0) = runs[True], runs[False]
    assert a1[1].pop("prefix_reuse") and not a0[1].pop("prefix_reuse")
    assert torch.allclose(a1[0], a0[0], atol=1e-6) and a1[1] == pytest.approx(a0[1])
    assert torch.equal(r1[0], r0[0])  # the same ranking
    m1, m0 = r1[1], r0[1]
    for key in ("greedy", "ablation", "ranking"):
        assert m1[key] == pytest.approx(m0[key], abs=1e-5) if key == "ablation" else m1[key] == m0[key]
