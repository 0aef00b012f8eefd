"""The ablation, `refine` and `robust_scores` choose and measure what a plain greedy search of whole forwards does.

The reference here is written directly with `measure` and `patched`: every plan is one whole forward per group,
nothing is held, nothing is cut short. The library's searches reuse hidden states and skip measurements, in
whichever way memory allows ("held": inputs kept across rounds; "round": only within a round; "whole": none); each
must give the reference's choices, and its losses to float rounding.
"""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
from conftest import SINK, WINDOW, modes_plan, tiny_model
from conftest import labelled_samples as samples

import zigzag_attn as zz
from zigzag_attn.profile.ablation import ablation_scores
from zigzag_attn.profile.measure import measure
from zigzag_attn.profile.refine import refine
from zigzag_attn.profile.robust import SIZES, robust_scores
from zigzag_attn.runtime import patched

MODELS = {"llama": ("llama", 8, torch.float32), "qwen2": ("qwen2", 8, torch.float64),
          "gemma3": ("gemma3_text", None, torch.float32)}  # gemma3: native sliding layers


@pytest.fixture(params=list(MODELS))
def model(request):
    family, layers, dtype = MODELS[request.param]
    return tiny_model(family, seed=11, layers=layers).to(dtype)


@pytest.fixture(params=["held", "round", "whole"])
def memory(request, monkeypatch):
    """How much the held hidden states may take: as much as they need, fewer layers than the model has (so never
    all of them across rounds), or none (whole forwards)."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("zigzag_attn.profile"):  # other modules' lazy attributes may import anything
            continue
        real = getattr(module, "usable", None)
        if real is not None:
            def limited(model, samples=(), layers=0, *a, real=real, **k):
                if request.param == "whole":
                    return False
                if request.param == "round" and layers >= len(model.get_decoder().layers):
                    return False
                return real(model, samples, layers, *a, **k)
            monkeypatch.setattr(module, "usable", limited)
    return request.param


def losses(model, groups, streaming, batch_size):
    """{group: Measurement} of the plan streaming `streaming` (full attention when empty), one whole forward each."""
    if not streaming:
        return {g: measure(model, s, batch_size=batch_size) for g, s in groups.items()}
    with patched(model, modes_plan(model, streaming)):
        return {g: measure(model, s, batch_size=batch_size) for g, s in groups.items()}


def choosable(model) -> list[int]:
    info = zz.describe(model)
    return [i for i in range(info.num_layers) if i not in info.native_sliding]


def greedy(value, kept, stop, streaming=(), prior=None, candidates=None):
    """[(layer, value)] of each round: the layer among `candidates` lowest by `prior` (all of `kept` without a prior)
    whose streaming gives the lowest value, the first of equal values."""
    streaming, kept, out = set(streaming), list(kept), []
    while len(kept) > stop:
        pool = kept if prior is None else sorted(kept, key=lambda i: (prior[i], i))[:candidates]
        values = [value(streaming | {i}) for i in pool]
        best = min(range(len(pool)), key=values.__getitem__)
        out.append((pool[best], values[best]))
        streaming.add(pool[best])
        kept.remove(pool[best])
    return out


def worst_rise(model, groups, batch_size):
    """The worst group's rise in loss over full attention, as a function of the streaming layers."""
    base = {g: m.loss for g, m in losses(model, groups, set(), batch_size).items()}
    return lambda streaming: max(m.loss - base[g] for g, m in losses(model, groups, streaming, batch_size).items())


def test_ablation_is_each_layer_streaming_alone(model, memory):
    data, n = samples(model, seed=2), zz.describe(model).num_layers
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fall-back to whole forwards
        scores, meta = ablation_scores(model, data, sink=SINK, window=WINDOW, batch_size=2, progress=False)
    full = losses(model, {"x": data}, set(), 2)["x"]
    want = torch.zeros(n)
    for i in choosable(model):
        want[i] = losses(model, {"x": data}, {i}, 2)["x"].loss - full.loss
    assert scores.tolist() == pytest.approx(want.tolist(), rel=1e-5, abs=1e-6)
    assert (meta["full_loss"], meta["full_accuracy"]) == pytest.approx((full.loss, full.accuracy), rel=1e-6)
    if memory != "round":  # "round": reuse where one round's inputs fit
        assert meta["prefix_reuse"] == (memory == "held")


@pytest.mark.parametrize("start, candidates", [((), None), ((), 3), ((3,), 2)])
def test_refine_is_a_greedy_search_of_whole_forwards(model, memory, start, candidates):
    data, info = samples(model, seed=3), zz.describe(model)
    kept = [i for i in choosable(model) if i not in start]
    prior = {i: float((7 * i) % 5) for i in range(info.num_layers)}  # a prior with ties, broken by layer
    scores = torch.tensor([prior[i] for i in range(info.num_layers)]) if candidates else None
    plan = modes_plan(model, set(start))
    stop = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = refine(plan, model, data, retrieval_layers=stop, scores=scores, candidates=candidates, batch_size=2,
                     progress=False).provenance["refine"]["history"]
    want = greedy(lambda s: losses(model, {"x": data}, s, 2)["x"].loss, kept, stop, start,
                  prior if candidates else None, candidates)
    assert [h["streaming"] for h in got] == [layer for layer, _ in want]
    assert [h["loss"] for h in got] == pytest.approx([v for _, v in want], rel=1e-5)


@pytest.mark.parametrize("keep, candidates, validate", [(0.25, 3, True), (0.0, None, False), (0.5, 1, False)])
def test_robust_is_a_worst_group_greedy_search_of_whole_forwards(model, memory, keep, candidates, validate):
    groups = {"x": samples(model, (30, 31), seed=5), "y": samples(model, (40, 22), seed=6),
              "z": samples(model, (26, 35), seed=7)}
    valid = {"v": samples(model, (33, 28), seed=8), "w": samples(model, (24, 36), seed=9)} if validate else None
    layers, n = choosable(model), zz.describe(model).num_layers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores, meta = robust_scores(model, groups, valid, sink=SINK, window=WINDOW, keep=keep,
                                     candidates=candidates, batch_size=2, progress=False)
    worst = worst_rise(model, groups, 2)
    ablation = {i: worst({i}) for i in layers}
    want = greedy(worst, layers, math.floor(keep * len(layers) + 0.5), prior=ablation, candidates=candidates)
    assert meta["ablation"] == pytest.approx([ablation.get(i, 0.0) for i in range(n)], rel=1e-5, abs=1.1e-5)
    assert [h["streaming"] for h in meta["greedy"]] == [layer for layer, _ in want]
    assert [h["worst_loss_rise"] for h in meta["greedy"]] == pytest.approx([v for _, v in want], abs=1.1e-5)
    by_ablation = sorted(layers, key=lambda i: (ablation[i], i))
    greedy_rank = [layer for layer, _ in want] + [i for i in by_ablation if i not in {x for x, _ in want}]
    ranks = {"greedy": greedy_rank, "ablation": by_ablation}
    chosen = "greedy"
    if validate:  # each ranking's plans at the validated sizes, measured on the fresh prompts
        vworst = worst_rise(model, valid, 2)
        sizes = [r for r in SIZES if r >= keep - 1e-9]
        sizes += [] if sizes and abs(sizes[-1] - keep) <= 1e-9 else [keep]
        table = {k: [vworst(set(rank[:len(layers) - math.floor(r * len(layers) + 0.5)])) for r in sizes]
                 for k, rank in ranks.items()}
        assert meta["validation"]["sizes"] == sizes
        for k in ranks:
            assert meta["validation"]["worst_loss_rise"][k] == pytest.approx(table[k], abs=1.1e-5)
        chosen = min(table, key=lambda k: sum(table[k]))
    assert meta["ranking"] == chosen
    order = ranks[chosen]  # the first streamed first: it scores lowest; native sliding layers score 0
    assert [i for i in sorted(layers, key=lambda i: float(scores[i]))] == order
    assert all(scores[i] == 0 for i in range(n) if i not in layers) and sorted(scores[layers].tolist()) == [
        float(r + 1) for r in range(len(layers))]
