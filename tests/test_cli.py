"""The `zigzag-attn` command line: argument errors, show, calibrate/generate on a tiny local model, aliases."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

import zigzag_attn as zz
import zigzag_attn.plan as plan_module
from zigzag_attn import cli, models
from zigzag_attn.data import load_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `zigzag-attn ARGV...` run in-process."""
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def scored_plan(tmp_path) -> Path:
    info = zz.ModelInfo("llama", 6, 2, 8, name="toy")
    scores = zz.Scores(torch.tensor([[0.1, 0.3], [2.0, 1.0], [0.2, 0.2], [0.9, 0.4], [0.05, 0.0], [1.5, 0.3]]),
                       model=info, method="attention")
    return zz.solve(scores, retrieval_ratio=0.5, sink=4, window=32).save(tmp_path / "plan.json")


# -- argument errors: status 2, one line naming the argument, no model loaded ------------------------------------
@pytest.mark.parametrize("argv, names", [
    ([], "COMMAND"),
    (["frobnicate"], "COMMAND"),
    (["calibrate", "m"], "--out"),
    (["calibrate", "m", "--out", "p.json", "--retrieval-ratio", "1.5"], "--retrieval-ratio"),
    (["calibrate", "m", "--out", "p.json", "--retrieval-ratio", "half"], "--retrieval-ratio"),
    (["calibrate", "m", "--out", "p.json", "--retrieval-layers", "-1"], "--retrieval-layers"),
    (["calibrate", "m", "--out", "p.json", "--retrieval-ratio", "0.5", "--retrieval-layers", "3"], "--retrieval-"),
    (["calibrate", "m", "--out", "p.json", "--kv-budget", "0.5"], "--kv-budget"),
    (["calibrate", "m", "--out", "p.json", "--kv-budget", "0", "--context-length", "10"], "--kv-budget"),
    (["calibrate", "m", "--out", "p.json", "--context-length", "4096"], "--context-length"),
    (["calibrate", "m", "--out", "p.json", "--method", "magic"], "--method"),
    (["calibrate", "m", "--out", "p.json", "--window", "0"], "--window"),
    (["calibrate", "m", "--out", "p.json", "--sink", "-2"], "--sink"),
    (["calibrate", "m", "--out", "p.json", "--length", "100"], "--length"),
    (["calibrate", "m", "--out", "p.json", "--samples", "0"], "--samples"),
    (["calibrate", "m", "--out", "p.json", "--candidates", "3", "--no-refine"], "--candidates"),
    (["calibrate", "m", "--out", "p.json", "--method", "attention", "--steps", "10"], "--steps"),
    (["calibrate", "m", "--out", "p.json", "--granularity", "head"], "--granularity"),
    (["calibrate", "m", "--out", "p.json", "--max-mixed", "-1"], "--max-mixed"),
    (["calibrate", "m", "--out", "p.json", "--max-mixed", "1"], "--max-mixed"),
    (["calibrate", "m", "--out", "p.json", "--max-mixed", "1", "--kv-budget", "0.5", "--context-length", "100"],
     "--max-mixed"),
    (["calibrate", "m", "--out", "p.json", "--max-mixed", "1", "--kv-budget", "0.5", "--context-length", "100",
      "--method", "gates", "--granularity", "head", "--refine"], "--refine"),
    (["calibrate", "m", "--out", "p.json", "--head-scores", "h.json"], "--head-scores"),
    (["calibrate", "m", "--out", "p.json", "--max-mixed", "2", "--kv-budget", "0.5", "--context-length", "100",
      "--method", "attention", "--head-scores", "h.json"], "--head-scores"),
    (["calibrate", "m", "--out", "p.json", "--max-mixed", "2", "--kv-budget", "0.5", "--context-length", "100",
      "--method", "gates", "--granularity", "head", "--head-scores", "h.json"], "--head-scores"),
    (["calibrate", "m", "--out", "p.json", "--latency-budget", "0.01"], "--latency-budget"),
    (["calibrate", "m", "--out", "p.json", "--latency-budget", "0"], "--latency-budget"),
    (["calibrate", "m", "--out", "p.json", "--cost", "c.json"], "--cost"),
    (["calibrate", "m", "--out", "/no/such/dir/p.json"], "--out"),
    (["calibrate", "m", "--out", "p.json", "--data", "/no/such/text.txt"], "--data"),
    (["calibrate", "m", "--out", "p.json", "--dtype", "float8"], "--dtype"),
    (["show"], "PLAN"),
    (["generate", "m", "--plan", "p.json"], "--prompt"),
    (["generate", "m", "--plan", "p.json", "--prompt", "a", "--prompt-file", "b"], "--prompt"),
    (["generate", "m", "--plan", "p.json", "--prompt", "a", "--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_arguments(capsys, tmp_path, monkeypatch, argv, names):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("zigzag-attn") and "error:" in last and names in last, err
    assert "Traceback" not in err


def test_cuda_asked_without_cuda(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(capsys, "calibrate", "m", "--out", str(tmp_path / "p.json"), "--device", "cuda")
    assert code == 2 and "--device" in err and "CUDA" in err


# -- show ---------------------------------------------------------------------------------------------------------
def test_show_prints_table_and_png(capsys, scored_plan, tmp_path):
    png = tmp_path / "plan.png"
    code, out, err = run(capsys, "show", str(scored_plan), "--png", str(png))
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "mode"])
    rows = [line.split() for line in lines[header + 1:header + 7]]
    assert [r[0] for r in rows] == [str(i) for i in range(6)]
    assert [r[1] for r in rows] == ["streaming", "retrieval", "streaming", "retrieval", "streaming", "retrieval"]
    assert rows[1][2] == "2/2" and rows[0][2] == "0/2"
    assert float(rows[1][3]) == pytest.approx(1.5)  # the layer score (mean over heads)
    assert "KV cache vs full attention" in out and "at 131072" in out
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_show_mixed_plan_without_scores(capsys, tmp_path):
    plan = zz.Plan.from_heads([[True, False], [False, False], [True, True]], sink=4, window=16)
    path = plan.save(tmp_path / "mixed.json")
    code, out, err = run(capsys, "show", str(path), "--png", str(tmp_path / "m.png"))
    assert code == 0, err
    assert "mixed" in out and "1/2" in out
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC


def test_show_damaged_plan(capsys, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = run(capsys, "show", str(tmp_path / "bad.json"))
    assert code == 1 and err.strip().startswith("error:") and "not valid JSON" in err and "Traceback" not in err


def test_shipped_plans_by_name(capsys, scored_plan, tmp_path, monkeypatch):
    shipped = tmp_path / "plans"
    shipped.mkdir()
    (shipped / "toy-6l@0.5.json").write_text(scored_plan.read_text())
    monkeypatch.setattr(plan_module, "SHIPPED_DIR", shipped)
    monkeypatch.chdir(tmp_path)
    assert zz.Plan.load("toy-6l@0.5") == zz.Plan.load(scored_plan)
    with pytest.raises(FileNotFoundError, match=r"no shipped plan.*shipped: toy-6l@0\.5"):
        zz.Plan.load("toy-6l@0.25")
    code, out, _ = run(capsys, "show", "toy-6l@0.5")
    assert code == 0 and "toy-6l@0.5" in out
    code, _, err = run(capsys, "show", "toy-6l@0.25")
    assert code == 1 and "toy-6l@0.5" in err  # lists what is shipped


# -- calibrate and generate on a tiny local model -----------------------------------------------------------------
def test_calibrate_tiny_model(capsys, tiny_dir, tmp_path):
    out_path, scores_path = tmp_path / "plan.json", tmp_path / "scores.json"
    argv = ["calibrate", str(tiny_dir), "--out", str(out_path), "--retrieval-layers", "2", "--length", "256",
            "--keys", "2", "--samples", "2", "--sink", "4", "--window", "32", "--scores-out", str(scores_path)]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    plan = zz.Plan.load(out_path)
    model = LlamaForCausalLM.from_pretrained(tiny_dir)
    plan.check_model(zz.describe(model))
    assert len(plan.retrieval_layers) == 2 and (plan.sink, plan.window) == (4, 32)
    prov = plan.provenance
    assert prov["command"] == "zigzag-attn " + " ".join(argv)
    assert prov["method"] == "attention" and prov["device"].startswith("cpu") and prov["seconds"] > 0
    assert prov["calibration"]["length"] == 256 and len(prov["layer_scores"]) == 4
    scores = zz.Scores.load(scores_path)
    assert scores.layers.tolist() == pytest.approx(prov["layer_scores"])
    top2 = sorted(range(4), key=lambda i: -prov["layer_scores"][i])[:2]
    assert sorted(top2) == plan.retrieval_layers
    assert "saved" in out and str(out_path) in out


def test_calibrate_reads_the_library_defaults(capsys, tiny_dir, tmp_path, monkeypatch):
    """Without --length/--samples/--keys, calibrate takes them from zigzag_attn.defaults (as zz.profile does)."""
    from zigzag_attn import defaults

    monkeypatch.setitem(defaults.CALIBRATION, "cpu", {**defaults.CALIBRATION["cpu"], "length": 200, "samples": 1,
                                                       "keys": 1})
    out_path = tmp_path / "plan.json"
    code, _, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(out_path), "--retrieval-layers", "2",
                       "--sink", "4", "--window", "32", "--device", "cpu")
    assert code == 0, err
    cal = zz.Plan.load(out_path).provenance["calibration"]
    assert (cal["length"], cal["samples"], cal["keys"]) == (200, 1, 1)


def test_calibrate_head_gates_give_per_head_scores(capsys, tiny_dir, tmp_path):
    """The CLI route to the per-head scores eval's DuoAttention baseline needs."""
    from zigzag_attn.eval.policies import head_scores_problem

    scores_path = tmp_path / "heads.json"
    code, _, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(tmp_path / "p.json"), "--method", "gates",
                       "--granularity", "head", "--steps", "3", "--retrieval-layers", "2", "--length", "256",
                       "--keys", "2", "--samples", "1", "--sink", "4", "--window", "32",
                       "--scores-out", str(scores_path))
    assert code == 0, err
    scores = zz.Scores.load(scores_path)
    assert scores.meta["granularity"] == "head" and head_scores_problem(scores) is None


def test_calibrate_hybrid(capsys, tiny_dir, tmp_path):
    out_path = tmp_path / "plan.json"
    argv = ["calibrate", str(tiny_dir), "--out", str(out_path), "--method", "gates", "--granularity", "head",
            "--steps", "3", "--kv-budget", "0.5", "--context-length", "2048", "--max-mixed", "1", "--length", "256",
            "--keys", "2", "--samples", "1", "--sink", "4", "--window", "32"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    plan = zz.Plan.load(out_path)
    prov = plan.provenance
    assert prov["solver"] == "hybrid-dp" and prov["constraint"]["max_mixed"] == 1
    assert prov["constraint"]["retrieval_heads"] == 3 and len(plan.mixed_layers) == 1  # 4 heads: 0.509 of the KV
    assert plan.kv_fraction(2048) <= 0.5 and prov["predicted_latency_s"] > 0 and prov["cost_model"]["kind"] == "bytes"
    assert prov["command"] == "zigzag-attn " + " ".join(argv) and prov["method"] == "gates"


def test_calibrate_hybrid_latency_checked_before_the_weights_load(capsys, tiny_dir, tmp_path, no_weights):
    code, _, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(tmp_path / "p.json"), "--method", "gates",
                       "--granularity", "head", "--kv-budget", "0.5", "--context-length", "2048", "--max-mixed", "1",
                       "--latency-budget", "1e-9")
    assert code == 2 and "argument --latency-budget: latency_budget=1e-09 s is infeasible" in err


def test_calibrate_latency_budget_uses_the_cost_file(capsys, tiny_dir, tmp_path, no_weights):
    """--cost FILE replaces the bytes-read model: 1 ms per step is ample for the bytes model of 4 small layers
    (the run would go on to load the weights) but infeasible with these (made-up) 1 s layers."""
    cost = tmp_path / "cost.json"
    zz.CostModel(points={("decode", 1, h, 2, 8): [(2048, 1.0)] for h in range(3)}).save(cost)
    argv = ["calibrate", str(tiny_dir), "--out", str(tmp_path / "p.json"), "--method", "gates", "--granularity",
            "head", "--kv-budget", "0.5", "--context-length", "2048", "--max-mixed", "1", "--latency-budget", "1e-3"]
    code, _, err = run(capsys, *argv, "--cost", str(cost))
    assert code == 2 and f"latency model: measured: {cost} (--cost)" in err and "is infeasible" in err
    code, _, err = run(capsys, *argv, "--cost", str(tmp_path / "none.json"))
    assert code == 2 and "argument --cost: no cost file" in err
    with pytest.raises(AssertionError, match="the weights were loaded"):  # the bytes model: feasible
        run(capsys, *argv)
    assert "latency model: " in capsys.readouterr().err


def test_calibrate_robust(capsys, tiny_dir, tmp_path):
    """--method robust builds its own multi-task data and needs no refine; --refine with it is refused."""
    out_path, scores_path = tmp_path / "plan.json", tmp_path / "scores.json"
    code, _, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(out_path), "--method", "robust",
                       "--retrieval-layers", "2", "--length", "1024", "--samples", "1", "--sink", "4", "--window", "32",
                       "--scores-out", str(scores_path))
    assert code == 0, err
    plan, scores = zz.Plan.load(out_path), zz.Scores.load(scores_path)
    assert plan.provenance["method"] == "robust" and len(plan.retrieval_layers) == 2
    assert set(scores.meta["groups"]) == {"passkeys", "ledger", "boxes"} and "validation" in scores.meta
    assert scores.meta["keep"] == 0.5 and len(scores.meta["greedy"]) == 2  # the search stops at the plan's size
    assert scores.meta["validation"]["sizes"] == [0.5]
    top2 = sorted(range(4), key=lambda i: (-float(scores.layers[i]), i))[:2]
    assert sorted(top2) == plan.retrieval_layers
    code, _, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(out_path), "--method", "robust", "--refine")
    assert code == 2 and "--refine" in err
    code, _, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(out_path), "--method", "robust",
                       "--length", "300")
    assert code == 2 and "512" in err


def test_calibrate_hybrid_from_a_layer_ranking(capsys, tiny_dir, tmp_path):
    """--method robust --max-mixed M --head-scores S: the robust ranking, split among heads by S, solved as a hybrid
    (docs/results.md: the 1.5B's 25% hybrid); the same as the library calls on the saved scores."""
    info = zz.ModelInfo("llama", 4, 2, 8)
    heads = tmp_path / "heads.json"
    zz.Scores(torch.tensor([[0.2, 1.0], [1.0, 0.9], [0.1, 0.05], [0.95, 1.0]]), model=info, method="gates").save(heads)
    out_path, scores_path = tmp_path / "plan.json", tmp_path / "robust.json"
    argv = ["calibrate", str(tiny_dir), "--out", str(out_path), "--method", "robust", "--kv-budget", "0.5",
            "--context-length", "2048", "--max-mixed", "2", "--head-scores", str(heads), "--length", "1024",
            "--samples", "1", "--sink", "4", "--window", "32", "--scores-out", str(scores_path)]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    plan, robust = zz.Plan.load(out_path), zz.Scores.load(scores_path)
    want = zz.solve_hybrid(zz.split_layer_scores(robust, zz.Scores.load(heads)), max_mixed=2, kv_budget=0.5,
                           context_length=2048, sink=4, window=32)
    assert plan.modes == want.modes and plan.heads == want.heads and len(plan.mixed_layers) <= 2
    assert plan.provenance["head_scores"] == {"file": str(heads), "method": "gates"}
    assert plan.provenance["solver"] == "hybrid-dp" and plan.provenance["method"] == "robust"
    assert plan.provenance["profile"]["greedy"] == robust.meta["greedy"]  # the robust profile's record, kept


def test_calibrate_head_scores_checked_before_the_weights_load(capsys, tiny_dir, tmp_path, no_weights):
    argv = ["calibrate", str(tiny_dir), "--out", str(tmp_path / "p.json"), "--method", "robust", "--kv-budget", "0.5",
            "--context-length", "2048", "--max-mixed", "2", "--head-scores"]
    other = tmp_path / "other.json"  # another model's shape
    zz.Scores(torch.rand(6, 2), model=zz.ModelInfo("llama", 6, 2, 8, name="toy"), method="gates").save(other)
    code, _, err = run(capsys, *argv, str(other))
    assert code == 2 and "6 layers x 2 KV heads, but the model has 4 x 2 (they were measured on toy)" in err
    flat = tmp_path / "flat.json"  # per-layer scores: every head of a layer equal
    zz.Scores(torch.ones(4, 2), model=zz.ModelInfo("llama", 4, 2, 8), method="gates").save(flat)
    code, _, err = run(capsys, *argv, str(flat))
    assert code == 2 and "the same value" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, *argv, str(bad))
    assert code == 2 and "argument --head-scores:" in err and "Traceback" not in err
    for missing in (tmp_path / "missing.json", tmp_path):  # no file; a directory
        code, _, err = run(capsys, *argv, str(missing))
        assert code == 2 and "argument --head-scores:" in err and "Traceback" not in err


def test_calibrate_refine_kv_budget_user_text(capsys, tiny_dir, tmp_path):
    text = tmp_path / "texts"
    text.mkdir()
    (text / "a.txt").write_text(load_text(split="evaluation")[:40_000])
    out_path = tmp_path / "plan.json"
    code, _, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(out_path), "--kv-budget", "0.6",
                       "--context-length", "1024", "--length", "256", "--keys", "2", "--samples", "1", "--sink", "4",
                       "--window", "32", "--refine", "--candidates", "2", "--data", str(text))
    assert code == 0, err
    plan = zz.Plan.load(out_path)
    assert plan.kv_fraction(1024) <= 0.6
    prov = plan.provenance
    assert prov["solver"] == "greedy-measured" and prov["constraint"]["kv_budget"] == 0.6
    assert prov["refine"]["retrieval_layers"] == len(plan.retrieval_layers) == 2
    assert len(prov["refine"]["history"]) == 2 and prov["calibration"]["data"] == [str(text)]


def test_calibrate_constraint_checked_against_model(capsys, tiny_dir, tmp_path):
    code, _, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(tmp_path / "p.json"),
                       "--retrieval-layers", "9")
    assert code == 2 and "--retrieval-layers" in err and "[0, 4]" in err


def test_calibrate_missing_model(capsys, tmp_path):
    code, _, err = run(capsys, "calibrate", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.json"))
    assert code == 1 and err.strip().splitlines()[-1].startswith("error:") and "alias" in err


def test_generate_tiny_model(capsys, tiny_dir, scored_plan, tmp_path):
    info = zz.describe(LlamaForCausalLM.from_pretrained(tiny_dir))
    plan = zz.Plan.from_layers(["retrieval", "streaming", "streaming", "retrieval"], sink=4, window=8, model=info)
    path = plan.save(tmp_path / "tiny_plan.json")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(load_text()[:2000])
    code, out, err = run(capsys, "generate", str(tiny_dir), "--plan", str(path), "--prompt-file", str(prompt),
                         "--max-new-tokens", "5", "--chat")
    assert code == 0, err
    assert "tokens/s" in err and "KV cache at" in err and "full attention would hold" in err
    code, _, err = run(capsys, "generate", str(tiny_dir), "--plan", str(scored_plan), "--prompt", "hi")
    assert code == 1 and "the plan does not fit" in err and "6 layers" in err


def test_generate_refuses_files_that_are_not_text(capsys, tmp_path):
    import gzip

    packed = tmp_path / "prompt.txt.gz"
    packed.write_bytes(gzip.compress(b"a long prompt " * 100))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    for path, words in ((packed, "gzip-compressed, not a text file"), (empty, "holds no text")):
        code, _, err = run(capsys, "generate", str(tmp_path / "no-model"), "--plan", "p.json", "--prompt-file",
                           str(path))  # refused before the plan or the model is looked at
        last = err.strip().splitlines()[-1]
        assert code == 2 and "argument --prompt-file" in last and words in last, err


def test_checked_before_the_weights_load(capsys, tiny_dir, scored_plan, tmp_path, no_weights):
    m = str(tiny_dir)  # max_position_embeddings 2048, 4 layers
    code, _, err = run(capsys, "generate", m, "--plan", str(scored_plan), "--prompt", "hi")
    assert code == 1 and "the plan does not fit" in err and "6 layers" in err
    code, _, err = run(capsys, "calibrate", m, "--out", str(tmp_path / "p.json"), "--length", "4096")
    assert code == 2 and "argument --length: 4096 tokens is longer" in err and "max_position_embeddings = 2048" in err
    code, _, err = run(capsys, "eval", "niah", m, "--lengths", "99999999")
    assert code == 2 and "argument --lengths: 99999999 tokens" in err and "= 2048" in err
    code, _, err = run(capsys, "eval", "niah", m, "--plan", str(scored_plan), "--lengths", "512")
    assert code == 2 and "argument --plan" in err and "6 layers" in err
    (tmp_path / "short.txt").write_text("I " * 210)  # 420 bytes: at most 1680 tokens, within the context
    code, _, err = run(capsys, "eval", "passkey", m, "--lengths", "2000", "--text", str(tmp_path / "short.txt"))
    assert code == 2 and "2000 tokens is more than the haystack text can fill (at most 1680 tokens" in err
    code, _, err = run(capsys, "eval", "ppl", m, "--max-tokens", "3000")
    assert code == 2 and "argument --max-tokens: 3000 tokens is longer" in err


def test_plots_need_matplotlib_checked_first(capsys, tiny_dir, scored_plan, tmp_path, no_weights, monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert any(d.startswith("matplotlib") for d in pyproject["project"]["dependencies"])  # the main install has it
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, _, err = run(capsys, "eval", "niah", str(tiny_dir), "--lengths", "512", "--png", str(tmp_path / "h.png"))
    assert code == 1 and "--png needs matplotlib" in err  # before the model loads (no_weights)
    code, _, err = run(capsys, "show", str(scored_plan), "--png", str(tmp_path / "p.png"))
    assert code == 1 and "--png needs matplotlib" in err


def test_calibrate_without_choice_skips_profiling(capsys, tiny_dir, tmp_path, no_weights):
    out_path = tmp_path / "plan.json"
    code, out, err = run(capsys, "calibrate", str(tiny_dir), "--out", str(out_path), "--retrieval-ratio", "0",
                         "--sink", "4", "--window", "32")
    assert code == 0, err
    assert "no profiling needed: the plan keeps 0 of 4 choosable layers retrieval" in err
    plan = zz.Plan.load(out_path)
    assert plan.streaming_layers == [0, 1, 2, 3] and plan.provenance["method"] is None
    assert "layer_scores" not in plan.provenance and "saved" in out


def test_generate_progress_on_a_terminal():
    import io

    from zigzag_attn.cli.generate import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term, pipe = Terminal(), io.StringIO()
    for stream in (term, pipe):
        p = Progress(1000, 3, stream=stream)
        p.put("prompt")
        p.put("token")
        p.put("token")
        p.end()
        assert len(p.times) == 3
    assert "prefill of 1000 tokens: 0 s |" in term.getvalue() and "generating: 2/3 new tokens" in term.getvalue()
    assert term.getvalue().endswith("\r") and pipe.getvalue() == ""  # the line cleared; nothing in a log


# -- aliases ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alias", sorted(models.ALIASES))
def test_alias_resolves_or_says_what_to_install(alias):
    package, gguf, install = models.ALIASES[alias]
    try:
        folder, name = models.resolve(alias)
    except ModuleNotFoundError as e:
        assert install in str(e) and package in str(e)
        return
    assert (folder / name).is_file() and name == gguf


@pytest.mark.parametrize("alias", sorted(models.ALIASES))
def test_missing_alias_package_message(capsys, alias, tmp_path, monkeypatch, scored_plan):
    _, _, install = models.ALIASES[alias]
    hidden = models.packages(alias)  # all the parts of a model cut into part packages
    monkeypatch.setenv("ZIGZAG_CACHE", str(tmp_path))  # and no joined file from earlier runs
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name in hidden else real(name, *a))
    code, _, err = run(capsys, "generate", alias, "--plan", str(scored_plan), "--prompt", "hi")
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error:") and install in last


@pytest.mark.real_model
def test_smollm2_alias_loads(smollm2):
    model, tok = smollm2  # models.load("smollm2-135m"), shared
    info = zz.describe(model)
    assert (info.num_layers, info.num_kv_heads, info.name) == (30, 3, "smollm2-135m") and tok.is_fast
    assert zz.model_info.config_info(models.read_config("smollm2-135m")) == info  # the config alone, no weights


def test_plan_json_is_plain(scored_plan):
    d = json.loads(scored_plan.read_text())
    assert d["format"] == "zigzag-attn/plan" and d["provenance"]["layer_scores"]
