"""How `zz.choose` spends a KV budget on a real model: every (window, sink, KV dtype) candidate solved from the
recorded layer ranking, measured on held-out validation prompts at the target length, and the pick.

    python experiments/budget_choice.py --model GGUF_OR_DIR --name NAME --state DIR --out DIR \\
        [--budgets 0.5,0.25] [--length 32768] [--windows 256,1024,4096] [--kv-dtypes model,fp8] [--samples 4]

--state holds `robust_scores.json` (the layer ranking; experiments/gpu_accuracy.py calibrate). Writes
--out/choice.jsonl (one row per candidate: its matrix policy name `zigzag~bF~wW~sS[~fp8]`, validation losses, worst
rise, seconds, the GPU) and the chosen plan as --state/choice-bF.json and --out/choice-bF.json, which the accuracy
matrix evaluates as policy `choice~bF` beside every candidate, so the table shows whether validation picked the best.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_accuracy as ga  # noqa: E402

import zigzag_attn as zz  # noqa: E402
from zigzag_attn.choose import validation_groups  # noqa: E402


def policy_name(plan: zz.Plan, budget: float) -> str:
    return f"zigzag~b{budget}~w{plan.window}~s{plan.sink}" + ("~fp8" if plan.kv_dtype == "fp8" else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", help="a plain bf16 copy of the model (as gpu_accuracy.py)")
    ap.add_argument("--budgets", default="0.5,0.25")
    ap.add_argument("--length", type=int, default=32768, help="validation prompt length (and the budget's context)")
    ap.add_argument("--windows", default="256,1024,4096")
    ap.add_argument("--sinks", default="64")
    ap.add_argument("--kv-dtypes", default="model,fp8")
    ap.add_argument("--samples", type=int, default=4, help="validation prompts per task (3 tasks)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    state, out = Path(args.state), Path(args.out)
    scores = zz.Scores.load(state / "robust_scores.json")  # before the model loads: a missing file fails fast
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    model, tok = ga.load_model(args)
    ga.log(f"loaded {args.name} in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    groups = validation_groups(tok, length=args.length, samples=args.samples)
    ga.log(f"{sum(map(len, groups.values()))} validation prompts of {args.length} tokens in "
           f"{time.perf_counter() - t:.1f} s")
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    for budget in (float(b) for b in args.budgets.split(",")):
        t = time.perf_counter()
        plans = zz.candidates(scores, kv_budget=budget, context_length=args.length,
                              windows=[int(w) for w in args.windows.split(",")],
                              sinks=[int(s) for s in args.sinks.split(",")], kv_dtypes=args.kv_dtypes.split(","))
        best, rows = zz.choose(model, plans, groups, log=ga.log)
        seconds = time.perf_counter() - t
        with open(out / "choice.jsonl", "a") as fh:
            for plan, row in zip(plans, rows, strict=True):
                fh.write(json.dumps({"model": args.name, "gpu": gpu, "budget": budget, "length": args.length,
                                     "policy": policy_name(plan, budget), "chosen": plan is best, **row}) + "\n")
        best = zz.Plan.from_layers(best.modes, sink=best.sink, window=best.window, model=best.model,
                                   kv_dtype=best.kv_dtype,
                                   provenance={**best.provenance, "method": "robust ranking + zz.choose",
                                               "choice": {"length": args.length, "samples_per_task": args.samples,
                                                          "seconds": round(seconds, 1), "rows": rows},
                                               "command": "python " + " ".join(sys.argv)})
        for d in (state, out):
            best.save(d / f"choice-b{budget}.json")
        ga.log(f"budget {budget}: chose {policy_name(best, budget)} ({best.describe()}) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
