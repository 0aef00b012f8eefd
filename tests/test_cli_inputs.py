"""The command line refuses input that would silently give a wrong result, or fail late: another model's head scores,
files that are not text, cost files out of range, output paths that cannot be written. Each is refused in one
`error:` line naming its argument, before any weights load (`no_weights`)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from test_cli import PNG_MAGIC, run

import zigzag_attn as zz
from zigzag_attn.data import load_text


def refused(capsys, argv, flag: str, words: str) -> None:
    code, _, err = run(capsys, *argv)
    last = err.strip().splitlines()[-1]
    assert code == 2 and f"argument {flag}" in last and words in last and "Traceback" not in err, err


def robust_hybrid(tiny_dir, tmp_path) -> list[str]:
    return ["calibrate", str(tiny_dir), "--out", str(tmp_path / "p.json"), "--method", "robust", "--kv-budget", "0.5",
            "--context-length", "2048", "--max-mixed", "2", "--head-scores"]


def test_head_scores_of_another_model_with_the_same_shape(capsys, tiny_dir, tmp_path, no_weights):
    """gemma3-270m's head scores (head_dim 256, its own sliding layers) on a Llama of the same layers x heads."""
    gemma = zz.ModelInfo("gemma3_text", 4, 2, 256, name="gemma3-270m", native_sliding={0: 512, 1: 512, 2: 512})
    path = tmp_path / "gemma.json"
    zz.Scores(torch.rand(4, 2), model=gemma, method="gates").save(path)
    refused(capsys, [*robust_hybrid(tiny_dir, tmp_path), str(path)], "--head-scores",
            "the scores were made for a 'gemma3_text' model but the model is 'llama' (they were measured on gemma3")
    odd = tmp_path / "odd.json"  # no model type recorded: head_dim still counts
    zz.Scores(torch.rand(4, 2), model=zz.ModelInfo(None, 4, 2, 64), method="gates").save(odd)
    refused(capsys, [*robust_hybrid(tiny_dir, tmp_path), str(odd)], "--head-scores",
            "made for head_dim 64 but the model has 8")


def test_files_that_are_not_text_are_not_haystacks(capsys, tiny_dir, tmp_path, no_weights):
    packed, noise = tmp_path / "novel.txt.gz", tmp_path / "random.bin"
    packed.write_bytes(gzip.compress(load_text()[:5000].encode()))
    noise.write_bytes(bytes(range(256)) * 40)
    m = str(tiny_dir)
    refused(capsys, ["eval", "niah", m, "--lengths", "512", "--text", str(packed)], "--text",
            "novel.txt.gz is gzip-compressed, not a text file")
    refused(capsys, ["eval", "ppl", m, "--text", str(noise)], "--text", "random.bin is binary data, not a text file")
    refused(capsys, ["calibrate", m, "--out", str(tmp_path / "p.json"), "--data", str(noise)], "--data",
            "random.bin is binary data")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 300)
    refused(capsys, ["eval", "ppl", m, "--text", str(latin)], "--text", "is not UTF-8 text (byte 3)")
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    refused(capsys, ["eval", "ppl", m, "--text", str(empty)], "--text", "empty.txt holds no text")


def test_cost_files_out_of_range(capsys, tiny_dir, tmp_path, no_weights):
    argv = ["calibrate", str(tiny_dir), "--out", str(tmp_path / "p.json"), "--method", "gates", "--granularity",
            "head", "--kv-budget", "0.5", "--context-length", "2048", "--max-mixed", "1", "--latency-budget", "1",
            "--cost"]
    endless = tmp_path / "endless.json"
    data = zz.CostModel(points={("decode", 1, h, 2, 8): [(2048, 1.0)] for h in range(3)}).to_json()
    data["points"][0]["seconds"] = float("inf")
    endless.write_text(json.dumps(data))  # "seconds": Infinity
    refused(capsys, [*argv, str(endless)], "--cost", "seconds >= 0 and finite; got seconds=inf")
    slow = zz.CostModel(bandwidth=1e-305).save(tmp_path / "slow.json")  # finite, but reads overflow to inf
    refused(capsys, [*argv, str(slow)], "--cost", "the cost model predicts inf s for a layer with 0 of 2 retrieval")
    free = zz.CostModel().to_json()
    free["dtype_bytes"] = 0
    (tmp_path / "free.json").write_text(json.dumps(free))
    refused(capsys, [*argv, str(tmp_path / "free.json")], "--cost", "dtype_bytes must be > 0")
    # figures for two of the three layer kinds, below this context length: each prediction says where it came from
    part = zz.CostModel(points={("decode", 1, h, 2, 8): [(512, 0.1), (1024, 0.1)] for h in (0, 2)})
    with pytest.raises(AssertionError, match="the weights were loaded"):  # feasible: on to the weights
        run(capsys, *argv, str(part.save(tmp_path / "part.json")))
    err = capsys.readouterr().err
    assert "latency model: measured: " in err and "extrapolated" in err.split("latency model:")[1]
    assert ("latency predictions: 0 of 2 retrieval heads at 2048 tokens, 2 of 2 retrieval heads at 2048 tokens: "
            "extrapolated: outside the measured 512..1024 tokens") in err
    assert "; 1 of 2 retrieval heads at 2048 tokens: fallback: the bytes-read model" in err


def test_outputs_checked_before_the_work(capsys, tiny_dir, tmp_path, no_weights):
    m, folder = str(tiny_dir), str(tmp_path)
    refused(capsys, ["eval", "niah", m, "--lengths", "512", "--json", folder], "--json", "is a directory")
    refused(capsys, ["eval", "ppl", m, "--json", folder], "--json", "is a directory")
    refused(capsys, ["eval", "ruler", m, "--lengths", "512", "--png", folder], "--png", "is a directory")


def test_eval_arguments_checked_before_the_weights_load(capsys, tiny_dir, tmp_path, no_weights):
    m = str(tiny_dir)
    plan = zz.Plan.from_layers(["retrieval", "streaming"] * 2, sink=4, window=16).save(tmp_path / "half.json")
    wide = zz.Scores(torch.rand(6, 2), model=zz.ModelInfo("llama", 6, 2, 8), method="gates").save(tmp_path / "w.json")
    refused(capsys, ["eval", "niah", m, "--lengths", "512", "--plan", str(plan), "--duo", "--scores", str(wide)],
            "--scores", "the scores have 6 layers x 2 KV heads, but the model has 4 x 2")
    refused(capsys, ["eval", "ppl", m, "--max-tokens", "1"], "--max-tokens", "expected an integer >= 2")


def test_show_png_names_the_file_it_wrote(capsys, tmp_path):
    plan = zz.Plan.from_layers(["retrieval", "streaming"], sink=4, window=8).save(tmp_path / "p.json")
    out = tmp_path / "OUT"
    code, printed, err = run(capsys, "show", str(plan), "--png", str(out))
    assert code == 0, err
    assert f"wrote {out}\n" in printed and out.read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "OUT.png").exists()
