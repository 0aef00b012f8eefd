"""The acceptance rule `zigzag-attn eval compare` prints: shares of full attention's accuracy per task."""

from __future__ import annotations

import pytest

from zigzag_attn.eval.run import Results, Row
from zigzag_attn.eval.verdict import verdict_text, verdicts


def row(task, policy, family, length, correct, answers=10, kv=1.0):
    return Row(task, policy, family, length, None, 10, answers, correct, 1.0, answers, kv, float(length))


def results(plan_correct: dict[str, int]) -> Results:
    rows = []
    for task, full in (("niah", 10), ("multikey", 8), ("commonwords", 0)):
        for n in (4096, 8192):
            rows.append(row(task, "full", "full", n, full))
            rows.append(row(task, "mine", "plan", n, plan_correct[task], kv=0.25))
    return Results(rows)


def test_accepts_when_the_mean_and_every_task_clear_the_bars():
    got = verdicts(results({"niah": 10, "multikey": 8, "commonwords": 0}))
    assert len(got) == 1 and got[0]["accept"] and got[0]["mean_share"] == pytest.approx(1.0)
    assert set(got[0]["share"]) == {"niah", "multikey"}  # full gets nothing right on commonwords: left out
    assert got[0]["kv_fraction"] == pytest.approx(0.25)


@pytest.mark.parametrize("niah, multikey, why", [
    (10, 7, "worst"),  # mean 0.9375 < 0.95 and multikey 0.875 < 0.90
    (9, 8, "mean"),  # mean 0.95 exactly: accepted; see below
])
def test_rejects_below_either_bar(niah, multikey, why):
    got = verdicts(results({"niah": niah, "multikey": multikey, "commonwords": 0}))[0]
    if why == "worst":
        assert not got["accept"] and got["worst_task"] == "multikey" and got["worst_share"] == pytest.approx(0.875)
    else:
        assert got["accept"] and got["mean_share"] == pytest.approx(0.95)
    strict = verdicts(results({"niah": niah, "multikey": multikey, "commonwords": 0}), mean=0.96)[0]
    assert not strict["accept"]


def test_text_names_the_rule_and_what_was_left_out():
    text = verdict_text(results({"niah": 10, "multikey": 6, "commonwords": 0}))
    assert "accept when the mean share is >= 0.95 and every task's >= 0.90" in text
    assert "left out: commonwords" in text and "mine" in text and "reject" in text and "(multikey)" in text


def test_needs_full_attention_rows():
    only = Results([row("niah", "mine", "plan", 4096, 5)])
    with pytest.raises(ValueError, match="compares with full attention"):
        verdicts(only)
