"""Calibration data, the answer-loss measurement, the ablation scores and measured refinement."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import tiny_model

import zigzag_attn as zz
from zigzag_attn.data import IGNORE, Sample, load_text, passkey_samples
from zigzag_attn.profile import measure, profile, refine


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given: `(1, seq, vocab)`."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        return type("Out", (), {"logits": self.logits[:, -logits_to_keep:]})()


def test_measure_scores_each_answer_by_teacher_forcing():
    ids = torch.tensor([5, 6, 7, 1, 2, 9, 3, 4, 8])
    labels = torch.full_like(ids, IGNORE)
    labels[3:5], labels[6:8] = ids[3:5], ids[6:8]  # two answers: tokens 1 2 and 3 4
    logits = torch.zeros(1, len(ids), 10)
    for pos in range(1, len(ids)):
        logits[0, pos - 1, ids[pos]] = 5.0  # predicts the next token ...
    logits[0, 6, 0] = 9.0  # ... except the second token of the second answer
    m = measure(FixedLogits(logits), [Sample(ids, labels, ("12", "34"), (0.1, 0.5))])
    assert m.correct == [True, False]
    assert m.accuracy == 0.5
    expected = torch.nn.functional.cross_entropy(logits[0, [2, 3, 5, 6]], ids[[3, 4, 6, 7]])
    assert m.loss == pytest.approx(float(expected), rel=1e-6)


def test_measure_batches_by_length_and_keeps_sample_order():
    model = tiny_model("llama", seed=5)
    g = torch.Generator().manual_seed(1)
    samples = []
    for n in (40, 21, 41, 20, 40, 22):  # mixed lengths, as calibration mixes 4k and 8k prompts
        ids = torch.randint(2, model.config.vocab_size, (n,), generator=g)
        labels = torch.full_like(ids, IGNORE)
        labels[-5:-3], labels[-2:] = ids[-5:-3], ids[-2:]  # two answers per prompt
        samples.append(Sample(ids, labels, ("a", "b"), (0.1, 0.9)))
    one = [measure(model, [s]) for s in samples]  # one prompt per forward: the reference
    plan = zz.Plan.from_layers(["streaming", "retrieval"] * 2, sink=2, window=8, model=zz.describe(model))
    for batch_size in (2, 4, 8):
        m = measure(model, samples, batch_size=batch_size)
        assert m.correct == [c for x in one for c in x.correct]  # answers in sample order
        assert m.loss == pytest.approx(sum(x.loss for x in one) / len(one), rel=1e-5)  # equal answer counts
        streamed = measure(model, samples, plan, batch_size=batch_size)
        assert streamed.correct == [c for s in samples for c in measure(model, [s], plan).correct]
    from zigzag_attn.profile.measure import _batches

    assert _batches([40, 21, 41, 20, 40, 22], 8) == [[3, 1, 5], [0, 4, 2]]  # never 20 padded to 41
    assert _batches([40, 21, 41, 20, 40, 22], 2) == [[3, 1], [5], [0, 4], [2]]


def test_load_text_splits_are_disjoint_and_user_files_work(tmp_path):
    cal, ev = load_text(split="calibration"), load_text(split="evaluation")
    assert "Emma Woodhouse" in cal and "Emma Woodhouse" not in ev
    assert "Anne Elliot" in ev and "Anne Elliot" not in cal
    (tmp_path / "a.txt").write_text("word " * 300)
    assert load_text(tmp_path).startswith("word")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_text(tmp_path / "nowhere.txt")
    with pytest.raises(ValueError, match="split"):
        load_text(split="test")


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2):
    return smollm2[1]


def test_passkey_samples_are_deterministic_and_label_the_answers(smollm2_tokenizer):
    tok = smollm2_tokenizer
    a = passkey_samples(tok, n=3, length=600, keys=3, seed=7)
    b = passkey_samples(tok, n=3, length=600, keys=3, seed=7)
    c = passkey_samples(tok, n=3, length=600, keys=3, seed=8)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
    assert not torch.equal(a[0].input_ids, c[0].input_ids)
    for s in a:
        assert abs(len(s) - 600) <= 16
        assert tok.decode(s.input_ids[s.labels != IGNORE]).replace(" ", "") == "".join(s.answers)
        text = tok.decode(s.input_ids)
        for answer in s.answers:
            assert text.count(answer) == 2  # hidden once in the haystack, answered once
    with pytest.raises(ValueError, match="length"):
        passkey_samples(tok, n=1, length=50, keys=2)


def _task(model, seq: int = 48, n: int = 2) -> list[Sample]:
    """Random prompts whose last 6 tokens are labelled with what the full model predicts."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(2, model.config.vocab_size, (seq,), generator=g)
        for t in range(seq - 6, seq):  # greedy continuation: what full attention writes
            with torch.no_grad():
                ids[t] = model(ids[None, :t]).logits[0, -1].argmax()
        labels = torch.full_like(ids, IGNORE)
        labels[-6:] = ids[-6:]
        out.append(Sample(ids, labels, ("x",), (0.0,)))
    return out


@pytest.fixture(scope="module")
def one_layer_matters():
    """A tiny Llama where only layer 1's attention does anything (the others' value projections are zero).

    Sharp logits make full attention confident in the labels, so changing layer 1 can only raise the loss.
    """
    model = tiny_model("llama", seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
        for i in (0, 2, 3):
            model.model.layers[i].self_attn.v_proj.weight.zero_()
    return model


def test_ablation_scores_find_the_layer_that_matters(one_layer_matters, tmp_path):
    model = one_layer_matters
    scores = profile(model, data=_task(model), method="attention", sink=2, window=4, progress=False)
    assert scores.method == "attention" and scores.heads.shape == (4, 2)
    assert scores.layers[[0, 2, 3]].abs().max() == 0
    assert scores.layers[1] > 0
    plan = zz.solve(scores, retrieval_layers=1, sink=2, window=4)
    assert plan.retrieval_layers == [1]
    assert zz.Scores.load(scores.save(tmp_path / "s.json")) == scores


def test_refine_keeps_the_layer_that_matters(one_layer_matters):
    model = one_layer_matters
    info = zz.describe(model)
    start = zz.Plan.from_layers(["retrieval"] * 4, sink=2, window=4, model=info, provenance={"method": "x"})
    plan = refine(start, model, _task(model), retrieval_layers=1, progress=False)
    assert plan.retrieval_layers == [1]
    history = plan.provenance["refine"]["history"]
    assert [h["streaming"] for h in history] == [0, 2, 3] and plan.provenance["method"] == "x"
    with pytest.raises(ValueError, match="retrieval_layers"):
        refine(start, model, _task(model), retrieval_layers=5, progress=False)
    mixed = zz.Plan.from_heads([[True, False]] * 4, sink=2, window=4, model=info)
    with pytest.raises(ValueError, match="layer-exclusive"):
        refine(mixed, model, _task(model), retrieval_layers=1, progress=False)


def test_profile_rejects_bad_arguments(one_layer_matters):
    with pytest.raises(ValueError, match="method"):
        profile(one_layer_matters, data=_task(one_layer_matters), method="magic")
    with pytest.raises(ValueError, match="window"):
        profile(one_layer_matters, data=_task(one_layer_matters), window=0)
    with pytest.raises(ValueError, match="tokenizer"):
        profile(one_layer_matters)
    with pytest.raises(TypeError, match="steps"):
        profile(one_layer_matters, data=_task(one_layer_matters), method="attention", steps=3)



def test_profile_defaults_are_the_cli_defaults(one_layer_matters, monkeypatch):
    """With no data, zz.profile builds its prompts with zigzag_attn.defaults for the model's device, as the CLI does."""
    from zigzag_attn.defaults import calibration

    profile_module = importlib.import_module("zigzag_attn.profile")  # the package, not the function
    asked = {}

    def recording(tokenizer, **kw):
        asked.update(kw)
        return _task(one_layer_matters)

    monkeypatch.setattr(profile_module, "passkey_samples", recording)
    scores = profile(one_layer_matters, object(), sink=2, window=4, progress=False)
    cpu = calibration("cpu")
    assert (asked["n"], asked["length"], asked["keys"]) == (cpu["samples"], cpu["length"], cpu["keys"])
    assert scores.method == cpu["method"]
    profile(one_layer_matters, object(), sink=2, window=4, progress=False, length=300, samples=1, keys=2)
    assert (asked["n"], asked["length"], asked["keys"]) == (1, 300, 2)
    assert calibration("cuda:1") == calibration("cuda") != calibration("mps") == cpu


def test_refine_on_replicas_matches_serial(one_layer_matters, monkeypatch):
    """Candidates spread over a model copy (threads): same plan, same history, same loss for every candidate."""
    from zigzag_attn.profile import search, trials
    from zigzag_attn.profile.replicas import make_replicas

    model, data = one_layer_matters, _task(one_layer_matters)
    start = zz.Plan.from_layers(["retrieval"] * 4, sink=2, window=4, model=zz.describe(model))
    measure_, calls, results = trials.measure_groups, {"serial": [], "parallel": []}, {}
    replicas = make_replicas(model, ["cpu"])
    for run in calls:
        def recording(m, groups, plan, batch_size, run=run):
            result = measure_(m, groups, plan, batch_size)
            calls[run].append((plan.modes, result["samples"].loss, id(m)))
            return result

        monkeypatch.setattr(trials, "measure_groups", recording)
        with monkeypatch.context() as m:
            for module in (search, trials):  # whole forwards, each one recorded
                m.setattr(module, "usable", lambda *a, **k: False)
            results[run] = refine(start, model, data, retrieval_layers=1, progress=False,
                                  replicas=replicas if run == "parallel" else None)
    # by default one model runs each candidate from held inputs (profile/prefix_cache.py): the same search
    held = refine(start, model, data, retrieval_layers=1, progress=False).provenance["refine"]["history"]
    whole = results["serial"].provenance["refine"]["history"]
    assert [h["streaming"] for h in held] == [h["streaming"] for h in whole]
    assert [h["loss"] for h in held] == pytest.approx([h["loss"] for h in whole], rel=1e-6)
    serial, parallel = results["serial"], results["parallel"]
    assert parallel.modes == serial.modes and parallel.retrieval_layers == [1]
    assert parallel.provenance["refine"]["history"] == serial.provenance["refine"]["history"]
    assert [h["streaming"] for h in parallel.provenance["refine"]["history"]] == [0, 2, 3]  # ties: lowest index
    assert sorted(c[:2] for c in calls["parallel"]) == sorted(c[:2] for c in calls["serial"])
    assert len(calls["serial"]) == 4 + 3 + 2
    assert {c[2] for c in calls["parallel"]} == {id(model), id(replicas[0])}  # both copies did work
    with pytest.raises(ValueError, match="distinct"):
        refine(start, model, data, retrieval_layers=1, progress=False, replicas=[model])
    with pytest.raises(ValueError, match="not available"):
        make_replicas(model, [f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"])
    with pytest.raises(ValueError, match="unknown device"):
        make_replicas(model, ["gpu0"])
    with zz.patched(model, start), pytest.raises(ValueError, match="unpatch"):
        make_replicas(model, ["cpu"])
