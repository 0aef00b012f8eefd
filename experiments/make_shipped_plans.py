"""Write the shipped SmolLM2 plans (`zigzag_attn/plans/`) from the recorded GPU comparison.

    python experiments/make_shipped_plans.py

Produced zigzag_attn/plans/smollm2-135m@{0.5,0.33,0.25}.json from docs/results/compare_methods_smollm2.json and
greedy_long_smollm2.json.

The plans are the measured-greedy ones (the best layer-exclusive method in docs/results.md): the greedy
elimination order recorded by `compare_methods.py` cut at 50%, 33% and 25% retrieval layers. Each plan records
the command that made it, the time it took, and its evaluation numbers from both GPU runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import zigzag_attn as zz
from zigzag_attn.plan import RETRIEVAL, STREAMING

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs/results"
# the command that made the recorded comparison (its model file given by name: any local copy of it will do)
COMMAND = "python3 benchmarks/compare_methods.py --model SmolLM2-135M-Instruct.Q4_1.gguf --out $OUT --budget-s 330"


def main() -> None:
    first = json.loads((RESULTS / "compare_methods_smollm2.json").read_text())
    second = json.loads((RESULTS / "greedy_long_smollm2.json").read_text())
    greedy = first["steps"]["greedy"]
    info = zz.ModelInfo.from_json({**first["model"], "name": "smollm2-135m"})
    n = info.num_layers
    cfg = first["config"]
    for ratio, k in (("0.5", 15), ("0.33", 10), ("0.25", 8)):
        streaming = set(greedy["order"][:n - k])
        modes = [STREAMING if i in streaming else RETRIEVAL for i in range(n)]
        evaluation = {
            "run 1 (compare_methods)": _row(first["eval"], f"greedy k={k}"),
            "run 1 full attention": _row(first["eval"], "full"),
            "run 2 (greedy_long, new prompts)": _row(second["eval"], f"greedy@4096 (previous run) k={k}"),
            "run 2 full attention": _row(second["eval"], "full"),
        }
        provenance = {
            "method": "attention", "solver": "greedy-measured", "retrieval_layers": k, "retrieval_ratio": float(ratio),
            "command": COMMAND, "device": first["device"], "dtype": first["dtype"],
            "seconds": {"ablation scores": first["steps"]["attention"]["seconds"], "greedy": greedy["seconds"]},
            "calibration": {"samples": cfg["calib_n"], "tokens": cfg["calib_len"], "keys": 4, "seed": 1,
                            "split": "calibration"},
            "greedy_order": greedy["order"], "history": greedy["history"],
            "layer_scores": first["steps"]["attention"]["layers"], "evaluation": evaluation,
        }
        plan = zz.Plan.from_layers(modes, sink=cfg["sink"], window=cfg["window"], model=info, provenance=provenance)
        path = plan.save(ROOT / f"zigzag_attn/plans/smollm2-135m@{ratio}.json")
        print(path.relative_to(ROOT), plan.describe())


def _row(rows: list[dict], policy: str) -> dict:
    row = next(r for r in rows if r["policy"] == policy)
    return {cell: {"accuracy": round(v["accuracy"], 4), "n": v["n"]} for cell, v in row.items() if "@" in cell}


if __name__ == "__main__":
    main()
