"""Evaluation suite: task generators, scoring, evaluate() end to end, plots, perplexity, CLI errors.

Uses a byte-level BPE tokenizer trained in-process on the shipped text and a tiny random Llama (no downloads).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

import zigzag_attn as zz
from zigzag_attn import cli
from zigzag_attn.data.passkey import IGNORE, Sample
from zigzag_attn.data.prompts import labelled
from zigzag_attn.data.texts import load_text
from zigzag_attn.eval import TASKS, Policy, Results, evaluate, full, make, plots, policies, ppl, random_sets
from zigzag_attn.eval import duo as duo_policy
from zigzag_attn.profile.measure import measure


@pytest.fixture(scope="module")
def tok():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<pad>", "<s>"], show_progress=False)
    bpe.train_from_iterator([load_text(split="evaluation")[:300_000]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=2048, eos_token_id=None, pad_token_id=0, bos_token_id=1)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def runs(labels: torch.Tensor) -> list[list[int]]:
    """Positions of each contiguous run of labelled tokens."""
    out, last = [], None
    for i in (labels != IGNORE).nonzero().flatten().tolist():
        if last is None or i != last + 1:
            out.append([])
        out[-1].append(i)
        last = i
    return out


# -- tasks -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", list(TASKS))
def test_tasks_are_deterministic(tok, task):
    a, b, c = (make(task, tok, 448, depth=0.3, n=2, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
               for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x.input_ids, y.input_ids) for x, y in zip(a, c, strict=True))
    assert not torch.equal(a[0].input_ids, a[1].input_ids)  # the n prompts differ too


@pytest.mark.parametrize("task", list(TASKS))
def test_labels_mark_exactly_the_answers(tok, task):
    for s in make(task, tok, 448, depth=0.7, n=3, seed=5):
        assert 400 <= len(s) <= 448 + 8
        spans = runs(s.labels)
        assert len(spans) == len(s.answers) >= 1
        for span, answer in zip(spans, s.answers, strict=True):
            assert tok.decode(s.input_ids[span]).strip() == answer
        assert torch.equal(s.labels[s.labels != IGNORE], s.input_ids[s.labels != IGNORE])
        text = tok.decode(s.input_ids)
        assert text.rstrip().endswith(", ".join(s.answers) + ".")


class WordTokenizer:
    """Whitespace tokens, punctuation attached: "123," is one token, so list items' labels touch."""

    is_fast = True

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        return SimpleNamespace(input_ids=list(range(2, len(spans) + 2)), offset_mapping=spans)


def test_merged_items_are_one_answer():
    s = labelled(WordTokenizer(), "Question: which? Answer:", ["123", "456"], ())
    assert s.answers == ("123, 456",) and len(runs(s.labels)) == 1 and (s.labels != IGNORE).sum() == 2


def test_answer_formats(tok):
    (n,) = make("niah", tok, 448, depth=0.5, seed=0)
    assert len(n.answers[0]) == 7 and n.answers[0].isdigit()
    assert "special magic number" in tok.decode(n.input_ids) and "pass key" not in tok.decode(n.input_ids)
    (m,) = make("multivalue", tok, 448, seed=0)
    assert len(m.answers) == 4 and len(set(m.answers)) == 4
    text = tok.decode(m.input_ids)
    assert [text.index(v) for v in m.answers] == sorted(text.index(v) for v in m.answers)  # in order of appearance
    (v,) = make("vartrack", tok, 448, seed=0)
    assert len(v.answers) == 5 and all(len(x) == 5 and x.isupper() for x in v.answers)
    (c,) = make("commonwords", tok, 448, seed=0)
    words = tok.decode(c.input_ids).split("\n\n", 1)[1].split("\nQuestion:")[0].strip().split("\n")
    counts = sorted(((words.count(w), w) for w in set(words)), reverse=True)
    assert tuple(w for _, w in counts[:3]) == c.answers and counts[2][0] > counts[3][0]


def test_common_words_small_vocabulary(tok):
    # 60 distinct words cannot fill a 1k-token list at 1-3 repetitions each: fillers repeat more often, and the
    # common words still lead, strictly, most frequent first
    text = " ".join(f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(60))
    for c in make("commonwords", tok, 1024, seed=1, n=2, text=text):
        words = tok.decode(c.input_ids).split("\n\n", 1)[1].split("\nQuestion:")[0].strip().split("\n")
        counts = sorted(((words.count(w), w) for w in set(words)), reverse=True)
        assert tuple(w for _, w in counts[:3]) == c.answers and counts[2][0] > counts[3][0] > 3
        assert 900 < len(c) <= 1024
    with pytest.raises(ValueError, match="too few distinct words"):
        make("commonwords", tok, 1024, text="alpha beta gamma")


def test_needle_depth(tok):
    def where(depth):
        (s,) = make("niah", tok, 448, depth=depth, seed=3)
        text = tok.decode(s.input_ids)
        start = text.index("\n\n")  # the end of the intro, the start of the haystack
        return (text.index("One of the special magic numbers") - start) / (text.index("\nQuestion:") - start)

    assert where(0.0) < 0.01 and 0.4 < where(0.5) < 0.6 and where(1.0) > 0.9


def test_task_errors(tok):
    with pytest.raises(ValueError, match="too small"):
        make("niah", tok, 40)
    with pytest.raises(ValueError, match="depth"):
        make("niah", tok, 448, depth=1.5)
    with pytest.raises(ValueError, match="unknown task"):
        make("haystack", tok, 448)
    short = load_text(split="evaluation")[:3000]  # about 1200 tokens; repeated four times, under 5000
    with pytest.raises(ValueError, match=r"length 99999 is longer than the haystack text allows: at most (\d+)") as e:
        make("niah", tok, 99999, text=short)  # (named the haystack's share of the length, 99999 minus the needle)
    assert 3000 < int(re.search(r"at most (\d+)", str(e.value)).group(1)) < 6000


# -- scoring ---------------------------------------------------------------------------------------------------------
class Oracle(torch.nn.Module):
    """Predicts the label at every labelled position (logit `big` on it, 0 elsewhere), except at `wrong` positions
    of each prompt, where it predicts another token instead. Knows its prompts by their ids."""

    def __init__(self, samples: list[Sample], wrong: dict[int, set[int]], vocab: int, big: float = 5.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = AutoConfig.for_model("llama", vocab_size=vocab, hidden_size=8, intermediate_size=8,
                                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
        self.samples, self.wrong, self.vocab, self.big = samples, wrong, vocab, big

    def forward(self, input_ids, attention_mask, logits_to_keep=0, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for r in range(input_ids.shape[0]):
            ids = input_ids[r][attention_mask[r].bool()]
            k = next(i for i, s in enumerate(self.samples) if torch.equal(s.input_ids, ids))
            pad = input_ids.shape[1] - len(ids)
            for t in (self.samples[k].labels != IGNORE).nonzero().flatten().tolist():
                target = int(self.samples[k].input_ids[t])
                guess = (target + 1) % self.vocab if t in self.wrong.get(k, ()) else target
                logits[r, pad + t - 1, guess] = self.big
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_scoring_hand_made():
    v = 10
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    labels = torch.full_like(ids, IGNORE)
    labels[[2, 3, 6]] = ids[[2, 3, 6]]  # two answers: tokens 2-3 and token 6
    short = Sample(ids[:5], labels[:5], ("34",), ())
    both = Sample(ids, labels, ("34", "7"), ())
    right = math.log(math.exp(5) + v - 1) - 5  # NLL of a token predicted right with logit 5
    wrong = math.log(math.exp(5) + v - 1)
    m = measure(Oracle([both, short], {0: {3}}, v), [both, short], batch_size=2)  # left-padded together
    assert m.correct == [False, True, True]
    assert m.loss == pytest.approx((right * 4 + wrong) / 5, rel=1e-6)
    assert m.accuracy == pytest.approx(2 / 3)


def test_evaluate_rows_with_a_fake_model(tok, monkeypatch):
    samples = make("multivalue", tok, 448, n=2, seed=0)
    monkeypatch.setattr("zigzag_attn.eval.run.make", lambda *a, **k: samples)  # the prompts the oracle knows
    wrong = {k: {runs(s.labels)[1][0]} for k, s in enumerate(samples)}  # the 2nd value of every prompt
    oracle = Oracle(samples, wrong, len(tok))
    res = evaluate(oracle, tok, [full()], task="multivalue", lengths=(448,), samples_per_cell=2, batch_size=2,
                   progress=False)
    (row,) = res.rows
    assert (row.n, row.answers, row.correct, row.kv_fraction) == (2, 8, 6, 1.0)
    assert row.accuracy == 0.75 and res.accuracy("full") == 0.75
    tokens = sum(int((s.labels != IGNORE).sum()) for s in samples)
    v = len(tok)
    expect = ((tokens - 2) * (math.log(math.exp(5) + v - 1) - 5) + 2 * math.log(math.exp(5) + v - 1)) / tokens
    assert row.loss == pytest.approx(expect, rel=1e-5) and row.answer_tokens == tokens


# -- policies --------------------------------------------------------------------------------------------------------
def test_policies(model):
    info = zz.describe(model)
    a = random_sets(info, 3, 0.5, seed=1, sink=4, window=16)
    assert [p.plan for p in a] == [p.plan for p in random_sets(info, 3, 0.5, seed=1, sink=4, window=16)]
    assert len({p.plan.modes for p in a}) == 3 and all(len(p.plan.retrieval_layers) == 2 for p in a)
    assert len(random_sets(info, 50, 0.5)) == 6  # C(4, 2) distinct sets only
    scores = zz.Scores(torch.tensor([[0.1, 0.6], [0.9, 0.8], [0.3, 0.1], [0.5, 0.2]]), model=info)
    plan = zz.solve(scores, retrieval_layers=2, sink=4, window=16)  # layers 0 and 1 (0 wins the tie with 3)
    d2 = duo_policy(plan, 1000, scores)  # the top 4 heads
    assert d2.family == "duo" and d2.plan.heads == ((False, True), (True, True), (False, False), (True, False))
    assert d2.plan.kv_fraction(1000) == plan.kv_fraction(1000)
    names = [p.name for p in policies(model, {"mine": plan}, n_random=2, with_duo=True, duo_scores=scores,
                                      context_length=1000)]
    assert names == ["full", "streaming", "mine", "random-1", "random-2", "duo@mine"]


def test_duo_baseline_is_never_the_plan_itself(model):
    """No head scores, per-layer scores, or scores that pick the plan's own heads: no duo row, and a reason."""
    info = zz.describe(model)
    scores = zz.Scores(torch.tensor([[0.1, 0.6], [0.9, 0.8], [0.3, 0.1], [0.5, 0.2]]), model=info)
    plan = zz.solve(scores, retrieval_layers=2, sink=4, window=16)  # records layer_scores
    with pytest.raises(ValueError, match="no head scores"):
        duo_policy(plan, 1000)  # (used to broadcast the plan's layer scores: the plan again)
    per_layer = zz.Scores(scores.layers[:, None].expand(4, 2), model=info)
    with pytest.raises(ValueError, match="same value"):
        duo_policy(plan, 1000, per_layer)
    same = zz.Scores(torch.tensor([[0.9, 0.8], [0.7, 0.6], [0.3, 0.1], [0.5, 0.2]]), model=info)
    with pytest.raises(ValueError, match="exactly the plan's own heads"):
        duo_policy(plan, 1000, same)
    with pytest.warns(UserWarning, match="no DuoAttention baseline for plan 'mine'"):
        pols = policies(model, {"mine": plan}, with_duo=True, context_length=1000)
    assert [p.name for p in pols] == ["full", "streaming", "mine"]
    with pytest.raises(ValueError, match="ratio"):
        policies(model, n_random=2)


# -- evaluate end to end ---------------------------------------------------------------------------------------------
def test_evaluate_end_to_end(model, tok, tmp_path):
    info = zz.describe(model)
    wide = zz.Plan.from_layers(["streaming"] * 4, sink=4, window=4096, model=info)  # sees everything: == full
    pols = policies(model, n_random=2, ratio=0.5, sink=4, window=16) + [Policy("wide", "plan", wide)]
    res = evaluate(model, tok, pols, task="niah", lengths=(320, 448), depths=2, samples_per_cell=2, batch_size=2,
                   progress=False)
    assert zz.plan_of(model) is None
    assert len(res.rows) == 5 * 2 * 2 and {r.depth for r in res.rows} == {0.0, 1.0}
    by = {(r.policy, r.length, r.depth): r for r in res.rows}
    for key, r in by.items():
        if key[0] == "wide":
            assert r.loss == pytest.approx(by[("full",) + key[1:]].loss, abs=1e-4)
    assert by["streaming", 448, 0.0].kv_fraction == pytest.approx(20 / 448)
    table = res.table()
    for word in ("full", "streaming", "random-1", "random-2", "320 (n=4)", "448 (n=4)", "share of full", "KV@448"):
        assert word in table
    again = Results.from_json(res.to_json())
    assert again.rows == res.rows and again.table() == table
    for path in (plots.heatmap(res, tmp_path / "heat.png"), plots.budget_plot(res, tmp_path / "budget.png")):
        assert path.read_bytes()[:4] == b"\x89PNG"
    ruler = evaluate(model, tok, pols[:2], task=["multikey", "commonwords"], lengths=(448,), samples_per_cell=1,
                     progress=False)
    assert [(r.task, r.depth) for r in ruler.rows] == [("multikey", None), ("commonwords", None)] * 2
    plots.budget_plot(res + ruler, tmp_path / "both.png")


def test_evaluate_errors(model, tok):
    plan = zz.Plan.from_layers(["streaming"] * 3, sink=4, window=16)
    with pytest.raises(ValueError, match="policy 'bad'.*3 layers"):
        evaluate(model, tok, [full(), ("bad", "plan", plan)], lengths=(320,), progress=False)
    with pytest.raises(ValueError, match="distinct"):
        evaluate(model, tok, [full(), full()], lengths=(320,), progress=False)
    with zz.patched(model, zz.Plan.from_layers(["streaming"] * 4, sink=4, window=16)):
        with pytest.raises(ValueError, match="unpatched"):
            evaluate(model, tok, [full()], lengths=(320,), progress=False)


# -- perplexity ------------------------------------------------------------------------------------------------------
def test_ppl_chunked_equals_one_pass(model, tok):
    texts = load_text(split="evaluation")[:3000], load_text(split="evaluation")[50_000:51_500]
    one = ppl(model, tok, None, texts, chunk=4096, max_tokens=700)
    chunked = ppl(model, tok, None, texts, chunk=97, max_tokens=700)
    assert one.tokens == chunked.tokens > 900 and abs(one.nll - chunked.nll) < 1e-4
    assert chunked.cache_tokens == [700] * 4
    plan = zz.Plan.from_layers(["streaming", "retrieval", "streaming", "streaming"], sink=4, window=16)
    a = ppl(model, tok, plan, texts, chunk=97, max_tokens=700)
    b = ppl(model, tok, plan, texts, chunk=4096, max_tokens=700)
    assert a.cache_tokens == [19, 700, 19, 19] and zz.plan_of(model) is None
    assert math.isfinite(a.ppl) and abs(a.nll - b.nll) < 1e-4 and abs(a.nll - one.nll) > 1e-6


# -- CLI -------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(model, tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main(argv: list[str]) -> int:
    """`zigzag-attn eval ARGV...` in-process."""
    return cli.main(argv if argv[0] == "eval" else ["eval", *argv])


def fails(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_errors(capsys, model_dir, tmp_path):
    m = str(model_dir)
    assert "argument --lengths: expected comma-separated" in fails(capsys, ["niah", m, "--lengths", "2048,abc"])
    assert "argument --lengths" in fails(capsys, ["eval", "niah", m, "--lengths", "10"])
    assert "no plan file 'nope.json'" in fails(capsys, ["niah", m, "--plan", "nope.json"])
    assert "--random needs --ratio" in fails(capsys, ["passkey", m, "--random", "3"])
    assert "argument --ratio" in fails(capsys, ["niah", m, "--random", "3", "--ratio", "1.5"])
    assert "invalid choice" in fails(capsys, ["ruler", m, "--task", "nope"])
    assert "does not exist" in fails(capsys, ["niah", m, "--png", str(tmp_path / "no" / "h.png")])
    assert "cannot load model" in fails(capsys, ["niah", str(tmp_path / "missing")])
    assert "no text file" in fails(capsys, ["ppl", m, "--text", str(tmp_path / "missing.txt")])
    plan = zz.Plan.from_layers(["streaming"] * 3, sink=4, window=16)
    plan.save(tmp_path / "three.json")
    assert "3 layers" in fails(capsys, ["niah", m, "--plan", str(tmp_path / "three.json"), "--lengths", "320"])


def test_cli_runs(capsys, model_dir, tmp_path):
    m, plan = str(model_dir), tmp_path / "half.json"
    zz.Plan.from_layers(["retrieval", "streaming"] * 2, sink=4, window=16).save(plan)
    heat, budget, out = tmp_path / "h.png", tmp_path / "b.png", tmp_path / "r.json"
    assert main(["niah", m, "--plan", str(plan), "--lengths", "320,448", "--depths", "2", "--samples", "1",
                 "--random", "1", "--sink", "4", "--window", "16", "--png", str(heat), "--budget-png", str(budget),
                 "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "half" in printed and "random-1" in printed and "320 (n=2)" in printed
    assert heat.exists() and budget.exists() and len(Results.load(out).rows) == 4 * 2 * 2
    text = tmp_path / "doc.txt"
    text.write_text(load_text(split="evaluation")[:2000])
    assert main(["ppl", m, "--plan", str(plan), "--streaming", "--text", str(text), "--chunk", "64",
                 "--max-tokens", "300"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity over 1 documents" in printed and "streaming" in printed


def test_cli_compare_leaves_out_a_duo_row_without_head_scores(capsys, model_dir, tmp_path):
    m, plan = str(model_dir), tmp_path / "half.json"
    info = zz.describe(AutoModelForCausalLM.from_pretrained(model_dir))
    scores = zz.Scores(torch.tensor([[0.1, 0.6], [0.9, 0.8], [0.3, 0.1], [0.5, 0.2]]), model=info)
    zz.solve(scores, retrieval_layers=2, sink=4, window=16).save(plan)  # records layer_scores, no head scores
    assert "--duo: no head scores" in fails(capsys, ["niah", m, "--plan", str(plan), "--duo"])
    quick = ["--tasks", "niah", "--lengths", "320", "--depths", "1", "--samples", "1", "--quiet"]
    assert main(["compare", m, "--plan", str(plan), *quick, "--json", str(tmp_path / "a.json")]) == 0
    printed = capsys.readouterr()
    assert "DuoAttention baseline is left out: no head scores" in printed.err
    assert "acceptance: accuracy as a share of full attention's" in printed.out
    assert "argument --accept" in fails(capsys, ["compare", m, "--plan", str(plan), *quick, "--accept", "0.95"])
    assert {r.policy for r in Results.load(tmp_path / "a.json").rows} == {"full", "streaming", "half"}
    scores.save(tmp_path / "heads.json")
    assert main(["compare", m, "--plan", str(plan), "--scores", str(tmp_path / "heads.json"), *quick,
                 "--json", str(tmp_path / "b.json")]) == 0
    assert "duo@half" in {r.policy for r in Results.load(tmp_path / "b.json").rows}


def test_cli_standalone_module():
    r = subprocess.run([sys.executable, "-m", "zigzag_attn.cli", "eval", "niah", "m", "--lengths", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "argument --lengths" in r.stderr and "Traceback" not in r.stderr
