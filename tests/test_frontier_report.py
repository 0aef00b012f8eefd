"""benchmarks/bench_plans.py's plan parsing and twin detection, and experiments/report_frontier.py's numbers on
made-up rows (no model, nothing timed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import zigzag_attn as zz

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "experiments"))
import bench_plans  # noqa: E402
import report_frontier as rf  # noqa: E402

INFO = zz.ModelInfo("llama", 4, 2, 8)


def test_parse_plans_and_twins(tmp_path):
    z = zz.Plan.from_layers(["retrieval", "streaming"] * 2, sink=4, window=8, model=INFO)
    same = zz.Plan.from_heads(z.head_mask(2), sink=4, window=8, model=INFO)  # built by heads, identical
    mixed = zz.Plan.from_heads([[True, False]] * 4, sink=4, window=8, model=INFO)
    for name, p in (("z", z), ("s", same), ("m", mixed)):
        p.save(tmp_path / f"{name}.json")
    plans, groups = bench_plans.parse_plans(f"full=full,z={tmp_path}/z.json;h1={tmp_path}/s.json,d={tmp_path}/m.json")
    assert list(plans) == ["full", "z", "h1", "d"] and plans["full"] is None
    assert groups == [["full", "z"], ["h1", "d"]]
    assert bench_plans.split_twins(plans) == (["full", "z", "d"], {"h1": "z"})
    for bad in ("z", "z=", "full=full;full=full"):
        with pytest.raises(SystemExit):
            bench_plans.parse_plans(bad)


def rows(policy: str, correct: dict[str, int], kv: float) -> list[dict]:
    return [{"model": "toy", "policy": policy, "task": t, "length": n, "prompts": 4, "answers": 4, "correct": c,
             "accuracy": c / 4, "kv_fraction": kv} for t, c in correct.items() for n in (4096, 8192)]


def test_summary_shares_ratios_and_targets(tmp_path):
    acc = (rows("full", {"a": 4, "b": 4}, 1.0) + rows("duo@0.5", {"a": 4, "b": 2}, 0.5)
           + rows("zigzag@0.5", {"a": 3, "b": 2}, 0.5) + rows("hybrid-m2@0.5", {"a": 4, "b": 2}, 0.5)
           + rows("streaming", {"a": 0, "b": 0}, 0.1)[:2])  # not a default policy: ignored
    timing = [{"part": "plan", "policy": p, "kv_bytes_b1": {"8192": b}} for p, b in (("full", 100), ("duo@0.5", 50))]
    for p, ms, ratio in (("zigzag@0.5", 10.0, 1.0), ("hybrid-m2@0.5", 10.2, 1.02), ("duo@0.5", 12.0, 1.2)):
        timing += [{"part": "compiled", "policy": p, "n": 8192, "batch": 1, "ms": ms},
                   {"part": "ratio", "policy": p, "n": 8192, "batch": 1, "median": ratio, "vs": "zigzag@0.5"}]
    items, common = rf.summary(acc, rf.timing(timing), rf.DEFAULT)
    assert common == [("a", 4096), ("a", 8192), ("b", 4096), ("b", 8192)]
    by = {it["policy"]: it for it in items}
    assert set(by) == {"full", "duo@0.5", "zigzag@0.5", "hybrid-m2@0.5"}
    assert by["zigzag@0.5"]["share_of_duo"] == {"a": 0.75, "b": 1.0}
    assert by["hybrid-m2@0.5"]["mean_accuracy"] == pytest.approx(0.75)
    assert by["duo@0.5"]["kv_bytes"] == 50 and by["full"]["share_of_duo"] == {}
    text = rf.table(items, common)
    assert "| hybrid-m2@0.5 | 0.500 | 0.750 | 1.000 | 1.000 | 10.200 | 1.020 |" in text
    assert "- hybrid-m2@0.5: worst share of duo 1.000 (meets ≥ 0.97); slowest step ÷ zigzag 1.020 (meets" in text
    # a later stage re-times the point: the last ratio is shown with the range, and the target takes the worst
    staged = timing + [{"part": "ratio", "policy": "hybrid-m2@0.5", "n": 8192, "batch": 1, "median": 1.01,
                        "vs": "zigzag@0.5", "stage": 2}]
    text2 = rf.table(*rf.summary(acc, rf.timing(staged), rf.DEFAULT))
    assert "| 10.200 | 1.010 (1.010–1.020) |" in text2 and "slowest step ÷ zigzag 1.020" in text2
    staged[-1]["median"] = 1.05
    assert "slowest step ÷ zigzag 1.050 (misses ≤ 1.03)" in rf.table(*rf.summary(acc, rf.timing(staged), rf.DEFAULT))
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in acc))
    assert len(rf.read([str(path)])) == len(acc)
    untimed, _ = rf.summary(acc, rf.timing([]), rf.DEFAULT)  # accuracy only: says so, draws the per-task panel
    text = rf.table(untimed, common)
    assert "decode not timed." in text and "(meets ≥ 0.97); step not timed" in text and "nan" not in text
    rf.png(untimed, str(tmp_path / "f.png"), "toy", None)
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_matrix_report_covers_every_policy(tmp_path):
    """experiments/report_matrix.py: best random per cell with its set count, the other layer rankings in the tables,
    hybrids left to the frontier report, and a PNG for a policy family it has no style for (no KeyError)."""
    import report_matrix as rm

    made = (rows("full", {"a": 4, "b": 4}, 1.0) + rows("zigzag@0.5", {"a": 3, "b": 2}, 0.5)
            + rows("layergates@0.5", {"a": 4, "b": 3}, 0.5) + rows("newidea@0.5", {"a": 2, "b": 2}, 0.5)
            + rows("random-1@0.5", {"a": 1, "b": 0}, 0.5) + rows("random-2@0.5", {"a": 0, "b": 2}, 0.5)
            + rows("hybrid-m2@0.5", {"a": 4, "b": 4}, 0.5))
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in made))
    loaded = rm.load(str(path))
    assert not any(r["policy"].startswith(("hybrid-", "random-")) for r in loaded)
    best = {(r["task"], r["length"]): (r["correct"], r["sets"]) for r in loaded if r["policy"] == "best random@0.5"}
    assert best[("a", 4096)] == (1, 2) and best[("b", 8192)] == (2, 2)
    text = rm.tables(loaded)
    assert "Random sets per cell: 2." in text
    order = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "cells" not in line]
    summary = order[-5:]  # the summary table: full, the zigzag family in ORDER, then unknown names sorted
    assert summary == ["full", "zigzag@0.5", "layergates@0.5", "best random@0.5", "newidea@0.5"]
    assert "| layergates@0.5 | 4 | 0.875 |" in text
    rm.png(loaded, str(tmp_path / "m.png"), "toy")
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_matrix_report_adds_a_wider_summary_for_the_matrix_policies(tmp_path):
    """A candidate that ran fewer tasks narrows the first summary; the matrix's own policies (full, zigzag, duo,
    random, streaming) then get a second summary over every cell they all ran, and only they appear in it."""
    import report_matrix as rm

    made = (rows("full", {"a": 4, "b": 4}, 1.0) + rows("zigzag@0.5", {"a": 3, "b": 1}, 0.5)
            + rows("duo@0.5", {"a": 2, "b": 4}, 0.5) + rows("layergates@0.5", {"a": 4}, 0.5))
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in made))
    text = rm.tables(rm.load(str(path)))
    first, _, second = text.partition("**Summary** over the 4 cells the matrix's policies")
    assert "**Summary** over the 2 cells every policy ran (a x 4k/8k)" in first and second
    assert "| zigzag@0.5 | 2 | 0.750 |" in first and "| zigzag@0.5 | 4 | 0.500 |" in second
    assert "| duo@0.5 | 4 | 0.750 |" in second and "| layergates" not in second
    path.write_text("".join(json.dumps(r) + "\n" for r in made if r["task"] == "a"))  # every policy ran every cell
    assert text.count("**Summary**") == 2 and rm.tables(rm.load(str(path))).count("**Summary**") == 1


def test_timing_reports_the_batch_asked_for():
    # bench_plans.py --batches 1,32 (SmolLM2's frontiersm): each batch's rows apart, never mixed into one column
    rows = []
    for batch, ms in ((1, 2.0), (32, 9.0)):
        rows += [{"part": "compiled", "policy": "zigzag@0.5", "n": 8192, "batch": batch, "ms": ms},
                 {"part": "ratio", "policy": "duo@0.5", "n": 8192, "batch": batch, "median": ms / 8,
                  "vs": "zigzag@0.5"}]
    assert rf.timing(rows)["ms"] == {("zigzag@0.5", 8192): 2.0}
    assert rf.timing(rows, batch=32)["ms"] == {("zigzag@0.5", 8192): 9.0}
    assert rf.timing(rows, batch=32)["vs"] == {("duo@0.5", 8192): ([9.0 / 8], "zigzag@0.5")}
    assert rf.timing(rows, batch=8) == {"ms": {}, "vs": {}, "bytes": {}}
