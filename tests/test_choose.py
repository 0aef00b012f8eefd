"""Spending a KV budget: candidates over (sink, window, KV dtype) at equal bytes, the measured choice, and
`calibrate --kv-budget` choosing among them."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from test_cli import run

import zigzag_attn as zz
from zigzag_attn.data.passkey import passkey_samples

INFO = zz.ModelInfo("llama", 8, 2, 64, name="toy")
SCORES = zz.Scores(torch.arange(16.0).reshape(8, 2) % 7, model=INFO, method="attention")


def test_candidates_trade_layers_for_window_and_dtype_at_equal_bytes():
    plans = zz.candidates(SCORES, kv_budget=0.5, context_length=4096, windows=(64, 512, 1024),
                          kv_dtypes=("model", "fp8"))
    assert len(plans) == 6 and all(p.kv_fraction(4096) <= 0.5 for p in plans)
    layers = {(p.window, p.kv_dtype): len(p.retrieval_layers) for p in plans}
    assert layers[64, "model"] >= layers[512, "model"] > layers[1024, "model"]  # a wider window costs layers
    assert layers[64, "fp8"] > 1.8 * layers[64, "model"]  # FP8 pays for about twice as many
    for p in plans:  # each is the most its setting fits: one more layer would break the budget
        more = zz.solve(SCORES, retrieval_layers=min(8, len(p.retrieval_layers) + 1), sink=p.sink, window=p.window,
                        kv_dtype=p.kv_dtype)
        assert len(p.retrieval_layers) == 8 or more.kv_fraction(4096) > 0.5
    heads = zz.candidates(SCORES, kv_budget=0.5, context_length=4096, windows=(64,), kv_dtypes=("fp8",), heads=True)
    assert heads[0].kv_dtype == "fp8" and heads[0].kv_fraction(4096) <= 0.5 and not heads[0].is_layer_exclusive


def test_candidates_drop_what_cannot_fit_and_repeats():
    # at 1,000 tokens a window of 4,096 is the whole context: every layer's KV, over any budget below 1
    plans = zz.candidates(SCORES, kv_budget=0.3, context_length=1000, windows=(64, 4096, 8192))
    assert [p.window for p in plans] == [64]
    same = zz.candidates(SCORES, kv_budget=1.0, context_length=1000, windows=(4096, 8192))
    assert len(same) == 1  # both windows cover the whole context: one plan
    with pytest.raises(ValueError, match="no candidate fits kv_budget=0.01"):
        zz.candidates(SCORES, kv_budget=0.01, context_length=1000, windows=(256,))
    with pytest.raises(ValueError, match="kv_dtypes among"):
        zz.candidates(SCORES, kv_budget=0.5, context_length=1000, kv_dtypes=("int4",))


@torch.no_grad()
def test_choose_keeps_the_plan_whose_worst_task_loses_least():
    model = tiny_model("llama", kv_heads=2, layers=4)
    tok = tiny_tokenizer()
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    groups = {"a": passkey_samples(tok, n=2, length=400, keys=2, seed=1),
              "b": passkey_samples(tok, n=2, length=400, keys=2, seed=2)}
    info = zz.describe(model)
    full = zz.Plan.from_layers(["retrieval"] * 4, sink=2, window=8, model=info)
    streaming = zz.Plan.from_layers(["streaming"] * 4, sink=2, window=8, model=info)
    best, rows = zz.choose(model, [streaming, full], groups)
    assert best is full and [r["candidate"] for r in rows] == [0, 1]
    assert rows[1]["worst_rise"] == pytest.approx(0, abs=1e-6) and rows[0]["worst_rise"] > 0
    assert set(rows[0]["rise"]) == {"a", "b"} and rows[0]["kv_fraction"] < rows[1]["kv_fraction"]
    again, _ = zz.choose(model, [full, full], groups)  # ties: the earlier
    assert again is full
    with pytest.raises(ValueError, match="at least one candidate"):
        zz.choose(model, [], groups)


def test_calibrate_chooses_window_and_dtype(capsys, tiny_dir, tmp_path):
    out_path = tmp_path / "plan.json"
    code, out, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(out_path), "--kv-budget", "0.5",
                         "--context-length", "512", "--length", "256", "--keys", "2", "--samples", "1",
                         "--windows", "16,64", "--sinks", "4", "--kv-dtypes", "model,fp8")
    assert code == 0, err
    plan = zz.Plan.load(out_path)
    choice = plan.provenance["choice"]
    assert len(choice["rows"]) == 4 and choice["length"] == 512
    chosen = choice["rows"][choice["chosen"]]
    assert (plan.window, plan.kv_dtype, plan.sink) == (chosen["window"], chosen["kv_dtype"], 4)
    assert chosen["worst_rise"] == min(r["worst_rise"] for r in choice["rows"])
    assert plan.kv_fraction(512) <= 0.5 and "choosing among 4 settings" in err + out


@pytest.mark.parametrize("extra, names", [
    (["--windows", "64,256"], "--windows: only used with --kv-budget"),
    (["--kv-budget", "0.5", "--context-length", "512", "--windows", "64", "--window", "32"], "either --window"),
    (["--kv-budget", "0.5", "--context-length", "512", "--kv-dtypes", "fp16"], "--kv-dtypes"),
    (["--kv-budget", "0.5", "--context-length", "512", "--windows", "0,64"], "--windows"),
    (["--kv-budget", "0.5", "--context-length", "512", "--sinks", "4", "--sink", "4"], "either --sink"),
])
def test_budget_flags_refused_before_the_model_loads(capsys, tmp_path, extra, names):
    code, _, err = run(capsys, "calibrate", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "p.json"),
                       *extra)
    assert code == 2 and names in err, err


def test_hybrid_plans_get_the_same_kv_dtype_freedom():
    heads = zz.Scores(torch.rand(8, 2, generator=torch.Generator().manual_seed(3)), model=INFO, method="gates")
    plain = zz.solve_hybrid(heads, kv_budget=0.3, context_length=4096, max_mixed=2)
    fp8 = zz.solve_hybrid(heads, kv_budget=0.3, context_length=4096, max_mixed=2, kv_dtype="fp8")
    count = lambda p: sum(map(sum, p.head_mask(2)))  # noqa: E731 - retrieval heads
    assert fp8.kv_dtype == "fp8" and fp8.kv_fraction(4096) <= 0.3 < plain.kv_fraction(4096) * 1.9
    assert count(fp8) > 1.8 * count(plain) and len(fp8.mixed_layers) <= 2
    exclusive = zz.solve_hybrid(heads, kv_budget=0.3, context_length=4096, max_mixed=0, kv_dtype="fp8")
    assert exclusive.kv_dtype == "fp8" and exclusive.is_layer_exclusive
    with pytest.raises(ValueError, match="latency_budget predicts 16-bit KV reads"):
        zz.solve_hybrid(heads, kv_budget=0.3, context_length=4096, max_mixed=2, kv_dtype="fp8", latency_budget=1.0)
