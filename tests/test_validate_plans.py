"""experiments/validate_plans.py: the validation rows (rises over full attention on a tiny model) and the report that
sets validation's order beside held-out accuracy (made-up rows)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

import zigzag_attn as zz
from zigzag_attn.data.passkey import Sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import validate_plans as vp  # noqa: E402


def test_spearman():
    assert vp.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert vp.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert vp.spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties share their mean rank
    assert vp.spearman([1, 2, 3], [7, 7, 7]) != vp.spearman([1, 2, 3], [7, 7, 7])  # nan: no order to compare


def sample(seed: int, n: int = 40, answer: int = 3) -> Sample:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 96, (n,), generator=g)
    labels = torch.full((n,), -100)
    labels[-answer:] = ids[-answer:]
    return Sample(ids, labels, ("x",), (0.5,))


def test_validation_rows_are_rises_over_full():
    model = tiny_model("llama")
    info = zz.describe(model)
    groups = {"a": [sample(1), sample(2)], "b": [sample(3)]}
    streaming = zz.Plan.from_layers(["streaming"] * info.num_layers, sink=2, window=4, model=info)
    rows = []
    vp.validation_rows(model, groups, {"full": None, "streaming": streaming, "skip": streaming}, {"skip"}, rows.append)
    assert [r["policy"] for r in rows] == ["full", "streaming"]  # "skip" was done already
    assert rows[0]["rise"] == {"a": 0.0, "b": 0.0} and rows[0]["worst_rise"] == 0.0
    full_a = zz.measure(model, groups["a"]).loss
    assert rows[1]["loss"]["a"] == pytest.approx(zz.measure(model, groups["a"], streaming).loss)
    assert rows[1]["rise"]["a"] == pytest.approx(rows[1]["loss"]["a"] - full_a)
    assert rows[1]["worst_rise"] == max(rows[1]["rise"].values()) and rows[1]["worst_rise"] != 0.0


def test_report_orders_by_validation_and_names_both_picks():
    val = [{"policy": "full", "worst_rise": 0.0}] + [
        {"policy": p, "worst_rise": w} for p, w in
        (("zigzag@0.5", 0.10), ("gatemax@0.5", 0.05), ("random-1@0.5", 0.90), ("zigzag@0.25", 0.3))]
    acc = {"zigzag@0.5": (0.7, 0.7), "gatemax@0.5": (0.8, 0.5), "random-1@0.5": (0.1, 0.2), "zigzag@0.25": (0.4, 0.4)}
    matrix = [{"policy": p, "task": t, "length": n, "accuracy": a[k]}
              for p, a in acc.items() for k, t in enumerate(("mk", "mv")) for n in (4096, 8192)]
    matrix.append({"policy": "gatemax@0.5", "task": "mk", "length": 32768, "accuracy": 0.0})  # not a common cell
    text = vp.report(val, matrix)
    assert "validation picks gatemax@0.5 (0.650), the matrix's best is zigzag@0.5 (0.700)" in text
    assert text.index("| gatemax@0.5 |") < text.index("| zigzag@0.5 |") < text.index("| random-1@0.5 |")
    assert "0.25" not in text  # one plan alone at 25%: nothing to rank
    assert "4 cells: mk, mv" in text
    only_mk = vp.report(val, matrix, ["mk"])
    assert "the matrix's best is gatemax@0.5 (0.800)" in only_mk
