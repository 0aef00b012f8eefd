"""`split_layer_scores`: a layer ranking shared among heads; m = 0 keeps the ranking's plan, mixed layers appear
where one head carries a layer."""

from __future__ import annotations

import pytest
import torch

from zigzag_attn.plan import ModelInfo
from zigzag_attn.scores import Scores, split_layer_scores
from zigzag_attn.solve import solve
from zigzag_attn.solve_hybrid import solve_hybrid

MODEL = ModelInfo("llama", 6, 2, 8)
N = 1000


def ranks(order: list[float]) -> Scores:
    return Scores(torch.tensor(order)[:, None].expand(-1, 2), order, model=MODEL, method="robust")


def test_layer_sums_and_shares():
    layers = ranks([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    gates = Scores([[1.0, 1.0], [0.0, 0.0], [0.9, 0.1], [1.0, 3.0], [0.0, 2.0], [0.5, 0.5]], model=MODEL,
                   method="gates")
    s = split_layer_scores(layers, gates)
    assert torch.equal(s.layers, layers.layers)
    assert torch.allclose(s.heads.sum(1), layers.layers)
    assert s.heads[1].tolist() == [2.5, 2.5]  # no head score: equal shares
    assert s.heads[3].tolist() == [0.75, 2.25] and s.heads[4].tolist() == [0.0, 2.0]
    assert s.method == "robust+gates" and s.model == MODEL


def test_m0_is_the_ranking_plan_and_lopsided_layers_split():
    layers = ranks([6.0, 5.0, 4.0, 3.0, 2.5, 1.0])
    gates = Scores([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], model=MODEL)
    s = split_layer_scores(layers, gates)
    f = solve(layers, retrieval_layers=4).kv_fraction(N)
    zig = solve(layers, retrieval_layers=4)
    assert solve_hybrid(s, kv_budget=f, context_length=N, max_mixed=0).modes == zig.modes
    # layer 3 (score 3, shared evenly) keeps one head and gives the other to the head that carries layer 4:
    # 1.5 + 2.5 > 3; with one mixed layer allowed nothing can change (an odd head count)
    hyb = solve_hybrid(s, kv_budget=f, context_length=N, max_mixed=2)
    assert hyb.head_mask(2) == [[True, True]] * 3 + [[True, False], [True, False], [False, False]]
    assert solve_hybrid(s, kv_budget=f, context_length=N, max_mixed=1).head_mask(2) == zig.head_mask(2)
    assert sum(map(sum, hyb.head_mask(2))) == sum(map(sum, zig.head_mask(2)))
    # with even shares everywhere no split pays: the hybrid is the zigzag plan
    even = split_layer_scores(layers, Scores(torch.ones(6, 2), model=MODEL))
    assert solve_hybrid(even, kv_budget=f, context_length=N, max_mixed=2).head_mask(2) == zig.head_mask(2)


def test_sharpness():
    layers = ranks([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    gates = Scores([[0.6, 1.0], [1.0, 1.0], [0.0, 0.5], [1.0, 0.9], [1.0, 1.0], [1.0, 1.0]], model=MODEL)
    s1, s8 = split_layer_scores(layers, gates), split_layer_scores(layers, gates, sharpness=8)
    assert s1.heads[0].tolist() == pytest.approx([6 * 0.375, 6 * 0.625])
    assert s8.heads[0].tolist() == pytest.approx([6 * 0.6**8 / (1 + 0.6**8), 6 / (1 + 0.6**8)])
    assert s8.heads[1].tolist() == [2.5, 2.5] and s8.heads[2].tolist() == [0.0, 4.0]
    assert torch.allclose(s8.heads.sum(1), layers.layers) and s8.meta["sharpness"] == 8
    with pytest.raises(ValueError, match="sharpness must be a number > 0"):
        split_layer_scores(layers, gates, sharpness=0)


def test_errors():
    layers = ranks([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="layer scores must be >= 0"):
        split_layer_scores(ranks([1.0, -1.0, 0, 0, 0, 0]), layers)
    with pytest.raises(ValueError, match="head scores must be >= 0"):
        split_layer_scores(layers, Scores(-torch.ones(6, 2)))
    with pytest.raises(ValueError, match="6 layers but heads has 5"):
        split_layer_scores(layers, Scores(torch.ones(5, 2)))
    with pytest.raises(TypeError, match="heads must be a Scores"):
        split_layer_scores(layers, torch.ones(6, 2))


def test_large_sharpness_keeps_unequal_heads_unequal():
    """Shares come from log space: 1e-5 ** 80 underflows and 1e30 ** 20 overflows a float64, but neither may turn
    unequal heads equal (the "all heads zero" share) or into NaN."""
    model = ModelInfo("llama", 2, 2, 8)
    layers = Scores(torch.ones(2, 2), [1.0, 1.0], model=model)
    for sharpness in (20, 40, 80):
        s = split_layer_scores(layers, Scores([[1e-5, 3e-5], [1e30, 2e30]], model=model), sharpness=sharpness)
        for row, ratio in zip(s.heads.tolist(), (3.0, 2.0), strict=True):  # the weaker head's share: 1 / (1 + r)
            r = ratio**sharpness
            assert row == pytest.approx([1 / (1 + r), r / (1 + r)], rel=1e-5), (sharpness, row)
    s = split_layer_scores(layers, Scores([[1e-5, 3e-5], [0.0, 0.0]], model=model), sharpness=1e308)
    assert s.heads.tolist() == [[0.0, 1.0], [0.5, 0.5]]  # a layer of zeros still shares equally


def test_a_layer_score_of_zero_is_shared_as_zeros():
    """Robust scores give a model's own sliding layers 0 (Gemma 3): a valid layer score, shared as zeros."""
    layers = ranks([6.0, 0.0, 4.0, 3.0, 2.0, 0.0])
    s = split_layer_scores(layers, Scores(torch.rand(6, 2) + 0.1, model=MODEL))
    assert s.heads[1].tolist() == s.heads[5].tolist() == [0.0, 0.0] and torch.equal(s.layers, layers.layers)


def test_head_scores_of_another_model_are_refused():
    """The same layers x heads are not enough: the model type, head_dim and own sliding layers must match too, as a
    plan's must (`Plan.check_model`)."""
    layers = ranks([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    for other, words in ((ModelInfo("gemma3_text", 6, 2, 8), "made for a 'gemma3_text' model but the model of layers "
                                                              "is 'llama'"),
                         (ModelInfo("llama", 6, 2, 256), "made for head_dim 256 but the model of layers has 8"),
                         (ModelInfo("llama", 6, 2, 8, native_sliding={0: 512, 3: 512}),
                          r"own sliding-window layers are \[0, 3\] but the model of layers has none")):
        with pytest.raises(ValueError, match=words):
            split_layer_scores(layers, Scores(torch.rand(6, 2), model=other))
    with pytest.raises(ValueError, match="heads: the scores have 6 layers x 4 KV heads, but the model of layers has "
                                         "6 x 2"):
        split_layer_scores(layers, Scores(torch.rand(6, 4), model=ModelInfo("llama", 6, 4, 8)))
    assert split_layer_scores(layers, Scores(torch.rand(6, 2), model=ModelInfo(None, 6, 2, 8))).model == MODEL
