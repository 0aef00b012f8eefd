"""Write the shipped hybrid plan `qwen2.5-coder-1.5b@0.25-m4` from the recorded 1.5B calibration.

    python experiments/ship_hybrid_plan.py

Produced zigzag_attn/plans/qwen2.5-coder-1.5b@0.25-m4.json: the plan evaluated as `hybrid-m4@0.25` in docs/results.md
(the 1.5B's frontier): the robust layer ranking (docs/results/qwen15/robust_scores.json) with the 1,000-step head
gates (head_scores.json) splitting at most 4 layers, at exactly the KV of `qwen2.5-coder-1.5b@0.25`. It is made by
the same function the evaluation used (`hybrid_policies.hybrids`), and checked against the plan that
benchmarks/bench_plans.py timed (its description in frontier_timing/bench_plans.jsonl) before it is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import report_frontier as rf
from hybrid_policies import hybrids

import zigzag_attn as zz
from zigzag_attn.plan import SHIPPED_DIR

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "docs/results/qwen15"
NAME, POLICY, RATIO, CONTEXT = "qwen2.5-coder-1.5b@0.25-m4", "hybrid-m4@0.25", 0.25, 32768
POLICIES = ["full", "zigzag@0.25", POLICY, "duo@0.25"]  # the frontier's 25% table in docs/results.md


def evaluation() -> dict:
    """The recorded evaluation (matrix.jsonl) and compiled decode timing (bench_plans.jsonl) of the policies beside
    the hybrid, as experiments/report_frontier.py reads them."""
    t = rf.timing(rf.read([str(STATE / "frontier_timing/bench_plans.jsonl")]))
    acc = list({(r["policy"], r["task"], r["length"]): r for r in rf.read([str(STATE / "matrix.jsonl")])}.values())
    items, common = rf.summary(acc, t, POLICIES)
    out = {"cells": f"{rf.cell_names(common)} ({len(common)} cells), n = 48 prompts each, held-out genres",
           "mean_accuracy": {it["policy"]: round(it["mean_accuracy"], 3) for it in items}}
    hybrid = next(it for it in items if it["policy"] == POLICY)
    out["share_of_duo_per_task"] = {k: round(v, 3) for k, v in hybrid["share_of_duo"].items()}
    out["compiled_decode_vs_zigzag@0.25 (B=1; every stage)"] = {
        f"{n // 1024}k": [round(x, 3) for x in v[0]] for n, v in hybrid["vs"].items() if v is not None}
    return out


def main() -> None:
    robust, heads = zz.Scores.load(STATE / "robust_scores.json"), zz.Scores.load(STATE / "head_scores.json")
    zigzag = zz.Plan.load("qwen2.5-coder-1.5b@0.25")
    if zz.solve(robust, retrieval_ratio=RATIO, sink=zigzag.sink, window=zigzag.window).modes != zigzag.modes:
        raise SystemExit("the recorded robust scores do not give the shipped qwen2.5-coder-1.5b@0.25 plan")
    plan = hybrids(robust, heads, {RATIO: zigzag}, CONTEXT)[POLICY]
    timed = [json.loads(x) for x in (STATE / "frontier_timing/bench_plans.jsonl").read_text().splitlines() if x]
    want = {r["describe"] for r in timed if r["part"] == "plan" and r["policy"] == POLICY}
    if want != {plan.describe()}:
        raise SystemExit(f"{POLICY} is {plan.describe()}; the timed plan was {want}")
    provenance = {**plan.provenance, "device": "NVIDIA H200 (the scores); this script on any machine",
                  "command": "python experiments/ship_hybrid_plan.py  (scores: experiments/gpu_accuracy.py calibrate "
                             "--part robust --candidates 4, then --part gates --gate-steps 1000 --gate-samples 16)",
                  "scores": ["docs/results/qwen15/robust_scores.json", "docs/results/qwen15/head_scores.json"],
                  "evaluated_as": POLICY, "evaluation": evaluation()}
    out = SHIPPED_DIR / f"{NAME}.json"
    zz.Plan(plan.modes, plan.sink, plan.window, plan.heads, plan.model, provenance).save(out)
    print(f"wrote {out.relative_to(ROOT)}: {plan.describe()}")


if __name__ == "__main__":
    main()
