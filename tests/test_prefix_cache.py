"""profile/prefix_cache.py: plans measured from held inputs give the loss and answers of whole forwards on every
family (native sliding layers, layer_types indexed by position, padded batches), whether the inputs were held for
one round or across rounds; a partial run that disagrees with the whole forward (loss or answers) falls back.
The search built on it: tests/test_search.py."""

from __future__ import annotations

import warnings

import pytest
from conftest import FAMILIES, layer_calls, modes_plan, tiny_model
from conftest import labelled_samples as samples

import zigzag_attn as zz
from zigzag_attn.profile.measure import Measurement, measure
from zigzag_attn.profile.prefix_cache import PrefixCache
from zigzag_attn.runtime.patch import plan_of


def modes(n: int, streaming) -> list[str]:
    return ["streaming" if i in streaming else "retrieval" for i in range(n)]


def cache_of(model, data, batch_size=1) -> PrefixCache:
    return PrefixCache(model, data, lambda m: modes_plan(model, {i for i, x in enumerate(m) if x == "streaming"}),
                       batch_size)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("batch_size", [1, 4])
def test_rounds_from_held_inputs_equal_whole_forwards(family, batch_size):
    """A round held alone: the base's inputs at the trials' layers, each trial run from its own layer on (the
    ablation: base full attention, one layer streaming; a greedy round: one more streaming after the first)."""
    model = tiny_model(family, seed=3)
    info = zz.describe(model)
    n, data = info.num_layers, samples(model)
    choosable = [i for i in range(n) if i not in info.native_sliding]

    def check(cache, streaming):
        got = cache.measure(modes(n, streaming))
        want = measure(model, data, modes_plan(model, streaming), batch_size=batch_size)
        assert got.correct == want.correct and got.loss == pytest.approx(want.loss, rel=1e-5, abs=1e-6)
        return got

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the self-check must not fall back
        cache = cache_of(model, data, batch_size)
        assert cache.measure(modes(n, set()), choosable) == measure(model, data, batch_size=batch_size)
        for i in choosable:
            check(cache, {i})
        cache.release()
        first = choosable[0]  # a greedy round: base with a layer streaming, trials after it
        cache.fill(modes(n, {first}), choosable[1:])
        assert not cache.store or cache.held(modes(n, {first})) == choosable[-1]
        for i in choosable[1:]:
            check(cache, {first, i})
    assert cache.exact and len(model.get_decoder().layers) == n and plan_of(model) is None
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == n  # put back


def test_a_plan_runs_from_the_deepest_input_held_for_its_own_prefix():
    """Inputs held under other modes are never used: a plan that streams a layer below every held input runs
    whole, one that agrees with them runs from the deepest; both give the whole forward's loss and answers."""
    model = tiny_model("llama", seed=2)
    n, data = zz.describe(model).num_layers, samples(model, (30,))
    calls = layer_calls(model)
    cache = cache_of(model, data)
    cache.fill(modes(n, set()), [2])
    for streaming, start, check in (({1}, 0, 0), ({3}, 2, n)):  # the first partial run is checked whole
        assert cache.held(modes(n, streaming)) == start
        calls["n"] = 0
        got = cache.measure(modes(n, streaming))
        assert calls["n"] == n - start + check
        want = measure(model, data, modes_plan(model, streaming))
        assert got.correct == want.correct and got.loss == pytest.approx(want.loss, rel=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("batch_size", [1, 4])
def test_measurements_from_held_inputs_equal_whole_forwards(family, batch_size):
    model = tiny_model(family, seed=3)
    info = zz.describe(model)
    n, data = info.num_layers, samples(model)
    layers = [i for i in range(n) if i not in info.native_sliding]
    cache = cache_of(model, data, batch_size)

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
    cache = cache_of(model, data)
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
    cache = cache_of(model, data)
    assert cache.measure(modes(n, set()), range(1, n)) == measure(model, data)
    cache.store = {k: [t * 1.5 for t in v] for k, v in cache.store.items()}
    with pytest.warns(UserWarning, match="measuring whole forwards"):
        assert cache.measure(modes(n, {2})) == measure(model, data, modes_plan(model, {2}))
    assert not cache.exact


def test_answers_that_differ_fall_back_even_where_the_losses_agree(monkeypatch):
    """The self-check compares answers as well as the loss: a partial run with the whole forward's loss but other
    answers is not trusted either."""
    model = tiny_model("llama", seed=2)
    n, data = zz.describe(model).num_layers, samples(model, (30, 31))
    cache = cache_of(model, data)
    cache.fill(modes(n, set()), [1, 2, 3])
    real, calls = cache._run, []

    def other_answers(forward):  # the trial's own run (the first measurement) gets its answers flipped
        got = real(forward)
        calls.append(got)
        return Measurement(got.loss, [not c for c in got.correct]) if len(calls) == 1 else got

    monkeypatch.setattr(cache, "_run", other_answers)
    want = measure(model, data, modes_plan(model, {1}))
    with pytest.warns(UserWarning, match=r"answers right where the whole forward gives .*; measuring whole forwards"):
        assert cache.measure(modes(n, {1})) == want
    assert not cache.exact and calls[0].loss == pytest.approx(want.loss, rel=1e-5)  # the losses did agree
