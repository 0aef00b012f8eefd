"""method="robust": the multi-task calibration data, the worst-task greedy and the validation choice."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from test_profile import _task

import zigzag_attn as zz
from zigzag_attn.data import IGNORE
from zigzag_attn.data.calibration import TASKS, calibration_groups
from zigzag_attn.data.texts import CALIBRATION_SPLITS, EVALUATION_SPLITS, load_text
from zigzag_attn.plan import STREAMING
from zigzag_attn.profile import profile, robust, trials
from zigzag_attn.profile.measure import Measurement


def test_genres_are_split_and_calibration_never_reads_evaluation_text():
    assert not set(CALIBRATION_SPLITS) & set(EVALUATION_SPLITS)
    texts = {s: load_text(split=s) for s in (*CALIBRATION_SPLITS, *EVALUATION_SPLITS)}
    assert "def " in texts["code"] and "GNU" in texts["technical"] and "License" in texts["legal"]
    for a in CALIBRATION_SPLITS:
        for b in EVALUATION_SPLITS:
            assert texts[b][5000:5200] not in texts[a]  # no shared passage


def test_calibration_groups_label_their_answers_in_their_own_wording(smollm2):
    tok = smollm2[1]
    groups = calibration_groups(tok, lengths=(400, 600), samples=2, seed=3)
    again = calibration_groups(tok, lengths=(400, 600), samples=2, seed=3)
    assert list(groups) == list(TASKS)
    for task, samples in groups.items():
        assert len(samples) == 4  # 2 lengths x 2 prompts, genres in turn
        for s, t in zip(samples, again[task], strict=True):
            assert torch.equal(s.input_ids, t.input_ids)
        for s in samples:
            text = tok.decode(s.input_ids)
            assert "special magic number" not in text and "VAR " not in text  # evaluation's RULER wordings
            got = tok.decode(s.input_ids[s.labels != IGNORE]).replace(" ", "").replace(",", "")
            assert got == "".join(s.answers) and len(s.answers) == 4
            for answer in s.answers:
                assert text.count(answer) >= 2  # in the haystack and in the answer
    code = [tok.decode(s.input_ids) for s in groups["ledger"][1::2]]
    assert all("def " in t or "self" in t for t in code)  # the second genre is code
    with pytest.raises(ValueError, match="tasks"):
        calibration_groups(tok, tasks=("sums",))


def _fake_losses(weights: dict[str, dict[int, float]]):
    """A stand-in for `trials.measure_groups`: a group's loss is the sum of its weights over the streaming layers."""
    def losses(model, groups, plan, batch_size):
        streaming = set() if plan is None else {i for i, m in enumerate(plan.modes) if m == STREAMING}
        return {g: Measurement(sum(w for i, w in weights[g].items() if i in streaming), []) for g in groups}
    return losses


def test_greedy_minimises_the_worst_task_not_the_mean(monkeypatch):
    # group "a" is hurt a little by layers 0 and 1 each; group "b" a lot by layer 2 and a little by layer 3.
    # The mean would drop 0 and 1 before 3 (0.3 + 0.3 < 0.7 total rise); the worst task drops 3 earlier.
    weights = {"a": {0: 0.6, 1: 0.6, 2: 0.0, 3: 0.0}, "b": {0: 0.0, 1: 0.0, 2: 5.0, 3: 0.7}}
    monkeypatch.setattr(trials, "measure_groups", _fake_losses(weights))
    model = tiny_model("llama")
    groups = {"a": [object()], "b": [object()]}
    scores, meta = robust.robust_scores(model, groups, sink=2, window=4, keep=0.25, candidates=None, progress=False)
    order = [h["streaming"] for h in meta["greedy"]]
    assert order == [0, 3, 1]  # after 0, dropping 1 makes "a" rise to 1.2 while 3 makes "b" 0.7
    assert meta["ablation"] == [0.6, 0.6, 5.0, 0.7]
    assert scores.tolist() == [1, 3, 4, 2]  # layer 2, never eliminated, ranks first
    plan = zz.solve(zz.Scores(scores[:, None].expand(4, 2), scores, model=zz.describe(model)), retrieval_layers=2)
    assert plan.retrieval_layers == [1, 2]


def test_candidates_limit_each_round_to_the_lowest_ablation_scores(monkeypatch):
    weights = {"a": {0: 0.1, 1: 0.2, 2: 3.0, 3: 0.05}}
    seen = []
    fake = _fake_losses(weights)

    def spy(model, groups, plan, batch_size):
        if plan is not None:
            seen.append(tuple(plan.modes))
        return fake(model, groups, plan, batch_size)
    monkeypatch.setattr(trials, "measure_groups", spy)
    model = tiny_model("llama")
    _, meta = robust.robust_scores(model, {"a": [object()]}, sink=2, window=4, keep=0.5, candidates=1,
                                   progress=False)
    assert [h["streaming"] for h in meta["greedy"]] == [3, 0]
    assert len(seen) == 4 + 1  # the ablation of 4 layers, then one trial per round; the first round's trial is
    # an ablation plan, measured already


@pytest.mark.parametrize("keep, rounds", [(0.4, 2), (0.25, 3), (0.5, 2), (0.6, 2), (0.0, 4), (1.0, 0)])
def test_greedy_rounds_stop_at_the_rounded_share_of_layers(monkeypatch, keep, rounds):
    """The greedy stops at floor(keep * layers + 0.5) retrieval layers, as `solve` rounds a ratio: keep=0.4 of 4
    layers keeps 2 (1.6 rounds up), so 2 rounds, not 3."""
    monkeypatch.setattr(trials, "measure_groups", _fake_losses({"a": {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}}))
    _, meta = robust.robust_scores(tiny_model("llama"), {"a": [object()]}, sink=2, window=4, keep=keep,
                                   candidates=None, progress=False)
    assert len(meta["greedy"]) == rounds


def test_validation_picks_the_ranking_that_holds_on_fresh_prompts(monkeypatch):
    # calibration as in the worst-task test: greedy keeps {1, 2} at half the layers, ablation keeps {2, 3};
    # on fresh prompts layer 3 is the one that matters, so ablation's ranking must win
    calib = {"a": {0: 0.6, 1: 0.6, 2: 0.0, 3: 0.0}, "b": {0: 0.0, 1: 0.0, 2: 5.0, 3: 0.7}}
    fresh = {"v": {0: 0.1, 1: 0.1, 2: 0.0, 3: 9.0}}
    fake_c, fake_v = _fake_losses(calib), _fake_losses(fresh)
    monkeypatch.setattr(trials, "measure_groups", lambda m, g, p, b: (fake_v if "v" in g else fake_c)(m, g, p, b))
    model = tiny_model("llama")
    scores, meta = robust.robust_scores(model, {"a": [object()], "b": [object()]}, {"v": [object()]}, sink=2,
                                        window=4, keep=0.25, candidates=None, progress=False)
    table = meta["validation"]["worst_loss_rise"]
    assert table["greedy"] == [9.1, 9.2, 9.2] and table["ablation"] == [0.2, 9.2, 9.2]
    assert meta["ranking"] == meta["validation"]["chosen"] == "ablation"
    info = zz.describe(model)
    plan = zz.solve(zz.Scores(scores[:, None].expand(4, 2), scores, model=info), retrieval_layers=2)
    assert plan.retrieval_layers == [2, 3]
    # without fresh prompts the greedy ranking stands
    _, meta = robust.robust_scores(model, {"a": [object()], "b": [object()]}, sink=2, window=4, keep=0.25,
                                   candidates=None, progress=False)
    assert meta["ranking"] == "greedy" and "validation" not in meta
    # one plan of 2 layers (keep=0.5): the search stops there and validation compares only that size
    _, meta = robust.robust_scores(model, {"a": [object()], "b": [object()]}, {"v": [object()]}, sink=2,
                                   window=4, keep=0.5, candidates=None, progress=False)
    assert len(meta["greedy"]) == 2 and meta["validation"]["sizes"] == [0.5]
    assert meta["validation"]["worst_loss_rise"] == {"greedy": [9.1], "ablation": [0.2]}
    # a size between SIZES' is validated too, beside the larger ones; on 4 layers both sizes keep 2, so each
    # ranking's plan is measured once
    fresh_plans = []

    def spy(m, g, p, b):
        if "v" in g and p is not None:
            fresh_plans.append(p)
        return (fake_v if "v" in g else fake_c)(m, g, p, b)
    monkeypatch.setattr(trials, "measure_groups", spy)
    _, meta = robust.robust_scores(model, {"a": [object()], "b": [object()]}, {"v": [object()]}, sink=2,
                                   window=4, keep=0.4, candidates=None, progress=False)
    assert meta["validation"]["sizes"] == [0.5, 0.4]
    assert meta["validation"]["worst_loss_rise"] == {"greedy": [9.1, 9.1], "ablation": [0.2, 0.2]}
    assert len(fresh_plans) == 2


def test_robust_profile_end_to_end_finds_the_layer_that_matters():
    model = tiny_model("llama", seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
        for i in (0, 2, 3):
            model.model.layers[i].self_attn.v_proj.weight.zero_()
    data = {"x": _task(model), "y": _task(model, seq=40)}
    scores = profile(model, data=data, method="robust", sink=2, window=4, keep=0.25, candidates=None,
                     progress=False)
    assert scores.method == "robust" and scores.meta["groups"] == {"x": 2, "y": 2}
    assert zz.solve(scores, retrieval_layers=1, sink=2, window=4).retrieval_layers == [1]
    with pytest.raises(TypeError, match="steps"):
        profile(model, data=data, method="robust", steps=3)
    with pytest.raises(ValueError, match="keep"):
        profile(model, data=data, method="robust", keep=2.0, progress=False)


def test_shipped_genres_load_by_name(tmp_path, monkeypatch):
    from zigzag_attn.data.texts import documents

    assert load_text(["technical"]) == load_text(split="technical")
    (tmp_path / "mine.txt").write_text("word " * 300)
    both = documents(["legal", tmp_path / "mine.txt"])
    assert both[0] == load_text(split="legal") and both[1].startswith("word")
    (tmp_path / "legal").mkdir()  # a real path of that name wins
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no .txt"):
        documents(["legal"])
