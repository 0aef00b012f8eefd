"""Measured greedy refinement calibrated at a longer length, evaluated against an earlier greedy order.

    python experiments/greedy_long.py --model smollm2-135m --out DIR [--calib-len 8192] [--previous RESULTS.json]

Produced docs/results/greedy_long_smollm2.json (and .log): run 2 of docs/results.md, the second independent
evaluation of the greedy plans that the shipped SmolLM2 plans record.

Runs `refine` (greedy elimination from full attention) on `--calib-n` multi-passkey prompts of `--calib-len`
tokens, then scores full attention, the new plans and the previous run's greedy plans (same k) on held-out
NIAH (depth grid) and passkey prompts, all in this one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import zigzag_attn as zz
from zigzag_attn.data import passkey_samples
from zigzag_attn.eval.tasks import niah
from zigzag_attn.models import load
from zigzag_attn.plan import RETRIEVAL, STREAMING
from zigzag_attn.profile import measure, refine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib-len", type=int, default=8192)
    ap.add_argument("--calib-n", type=int, default=4)
    ap.add_argument("--lengths", default="2048,4096,8000")
    ap.add_argument("--niah-per-depth", type=int, default=3)
    ap.add_argument("--passkey-n", type=int, default=24)
    ap.add_argument("--ks", default="15,10,8")
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--previous", help="compare_methods results.json whose greedy order to evaluate too")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    model, tok = load(args.model, device=device, dtype=dtype)
    info = zz.describe(model)
    ks = [int(k) for k in args.ks.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"args": vars(args), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "dtype": str(dtype), "eval": []}
    calib = passkey_samples(tok, n=args.calib_n, length=args.calib_len, keys=4, seed=1)
    start = zz.Plan.from_layers([RETRIEVAL] * info.num_layers, sink=args.sink, window=args.window, model=info)
    t = time.perf_counter()
    greedy = refine(start, model, calib, retrieval_layers=min(ks), batch_size=args.batch)
    order = [h["streaming"] for h in greedy.provenance["refine"]["history"]]
    res["greedy"] = {"seconds": round(time.perf_counter() - t, 1), "order": order,
                     "history": greedy.provenance["refine"]["history"]}
    print(f"greedy at {args.calib_len}: {res['greedy']['seconds']} s, order {order}", flush=True)
    orders = {f"greedy@{args.calib_len}": order}
    if args.previous:
        orders["greedy@4096 (previous run)"] = json.loads(Path(args.previous).read_text())["steps"]["greedy"]["order"]
    n = info.num_layers - len(info.native_sliding)
    policies = [("full", None)]
    for k in ks:
        for name, o in orders.items():
            modes = [STREAMING if i in set(o[:n - k]) else RETRIEVAL for i in range(info.num_layers)]
            policies.append((f"{name} k={k}", zz.Plan.from_layers(modes, sink=args.sink, window=args.window,
                                                                    model=info)))
    res["policies"] = {name: plan.to_json() if plan else None for name, plan in policies}
    cells = {}
    for L in (int(x) for x in args.lengths.split(",")):
        cells[f"passkey@{L}"] = passkey_samples(tok, n=args.passkey_n, length=L, keys=1, split="evaluation",
                                                seed=200 + L)
        cells[f"niah@{L}"] = [s for i in range(10) for s in niah(tok, L, depth=i / 9, n=args.niah_per_depth,
                                                                 seed=2000 * L + i)]
    for name, plan in policies:
        row = {"policy": name}
        for key, data in cells.items():
            m = measure(model, data, plan, batch_size=args.batch, streaming_backend="sdpa")
            row[key] = {"accuracy": m.accuracy, "n": len(m.correct), "loss": round(m.loss, 4),
                        "correct": [int(c) for c in m.correct]}
        res["eval"].append(row)
        res["elapsed_s"] = round(time.perf_counter() - t0, 1)
        (out / "results.json").write_text(json.dumps(res, indent=1))
        print(f"{name:30}", " ".join(f"{k}:{row[k]['accuracy']:.2f}" for k in cells), flush=True)


if __name__ == "__main__":
    main()
