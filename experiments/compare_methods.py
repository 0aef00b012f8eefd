"""Head-to-head comparison of the profiling methods on a real model, by held-out passkey accuracy.

    python experiments/compare_methods.py --model smollm2-135m --out DIR [--smoke] [--budget-s 480]

Produced docs/results/compare_methods_smollm2.json (and .log): run 1 of docs/results.md, the method comparison
whose greedy order the shipped SmolLM2 plans are cut from (run as benchmarks/compare_methods.py, the command the
plans record).

Steps (each writes DIR/results.json as it finishes, so a cut-off run still leaves its numbers):
  1. gates, one gate per KV head (DuoAttention) and one per layer (layer-exclusive), on 8k multi-passkey prompts
     from the calibration novels: time, loss curves, a layers x heads heatmap;
  2. the training-free ablation ("attention") on 4k prompts;
  3. measured greedy elimination (refine) from full attention, on the same 4k prompts;
  4. passkey and NIAH accuracy on the *evaluation* novels at each length (NIAH over a depth grid), for full
     attention, all-streaming, every method's
     plan at 50%, 33% and 25% retrieval layers, DuoAttention-style head plans at the same KV budget, and random
     layer sets.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import zigzag_attn as zz
from zigzag_attn.data import passkey_samples
from zigzag_attn.eval.tasks import niah
from zigzag_attn.models import load
from zigzag_attn.plan import RETRIEVAL, STREAMING
from zigzag_attn.profile import measure, profile, refine

SMOKE = dict(gate_len=256, gate_n=2, gate_steps=3, calib_len=256, calib_n=2, lengths=(256, 384), passkey_n=2,
             niah_depths=2, niah_n=1, randoms=2, sink=4, window=32, batch=2, cpu_len=256, candidates=2)
FULL = dict(gate_len=8192, gate_n=8, gate_steps=120, calib_len=4096, calib_n=4, lengths=(2048, 4096, 8000),
            passkey_n=16, niah_depths=10, niah_n=2, randoms=10, sink=64, window=256, batch=8, cpu_len=1024,
            candidates=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny settings, to check the script on CPU")
    ap.add_argument("--budget-s", type=float, default=480, help="start no new evaluation after this many seconds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cfg = SMOKE if args.smoke else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model, tok = load(args.model, device=args.device, dtype=dtype)
    info = zz.describe(model)
    res = {"config": cfg, "model": info.to_json(), "device": torch.cuda.get_device_name() if args.device == "cuda"
           else "cpu", "torch": torch.__version__, "dtype": str(dtype), "steps": {}, "eval": []}

    def save() -> None:
        res["elapsed_s"] = round(time.perf_counter() - t0, 1)
        (out / "results.json").write_text(json.dumps(res, indent=1))

    sink, window = cfg["sink"], cfg["window"]
    gate_data = passkey_samples(tok, n=cfg["gate_n"], length=cfg["gate_len"], keys=4, seed=0)
    calib = passkey_samples(tok, n=cfg["calib_n"], length=cfg["calib_len"], keys=4, seed=1)
    cpu_data = passkey_samples(tok, n=2, length=cfg["cpu_len"], keys=4, seed=0)
    scores = {}
    for name, opts in (("gates-head", {"granularity": "head"}), ("gates-layer", {"granularity": "layer"})):
        s = profile(model, data=gate_data, method="gates", sink=sink, window=window, steps=cfg["gate_steps"],
                    **opts)
        scores[name] = s
        res["steps"][name] = {"seconds": s.meta["seconds"], "heads": s.heads.tolist(), "layers": s.layers.tolist(),
                              "loss_curve": s.meta.get("loss_curve")}
        save()
        print(f"{name}: {s.meta['seconds']} s, final loss {s.meta['loss_curve'][-1]:.4g}", flush=True)
    scores["gates-head-max"] = zz.Scores(scores["gates-head"].heads, model=info, method="gates", aggregate="max")
    s = profile(model, data=cpu_data, method="attention", sink=sink, window=window, batch_size=cfg["batch"])
    scores["attention-cpu"] = s  # exactly what the CPU default of `zigzag-attn calibrate` computes
    res["steps"]["attention-cpu"] = {"seconds": s.meta["seconds"], "layers": s.layers.tolist()}
    s = profile(model, data=calib, method="attention", sink=sink, window=window, batch_size=cfg["batch"])
    scores["attention"] = s
    res["steps"]["attention"] = {"seconds": s.meta["seconds"], "layers": s.layers.tolist(),
                                 "full_loss": s.meta["full_loss"]}
    save()
    print(f"attention: {s.meta['seconds']} s", flush=True)

    n = info.num_layers - len(info.native_sliding)
    ks = sorted({round(r * n) for r in (0.5, 1 / 3, 0.25)}, reverse=True)
    start = time.perf_counter()
    greedy = refine(zz.Plan.from_layers([RETRIEVAL] * info.num_layers, sink=sink, window=window, model=info),
                    model, calib, retrieval_layers=min(ks), batch_size=cfg["batch"], scores=scores["attention"].layers,
                    candidates=cfg["candidates"])
    order = [h["streaming"] for h in greedy.provenance["refine"]["history"]]
    res["steps"]["greedy"] = {"seconds": round(time.perf_counter() - start, 1), "order": order,
                              "history": greedy.provenance["refine"]["history"]}
    save()
    print(f"greedy: {res['steps']['greedy']['seconds']} s, order {order}", flush=True)

    def layers_plan(streaming: set[int], method: str):
        modes = [STREAMING if i in streaming else RETRIEVAL for i in range(info.num_layers)]
        return zz.Plan.from_layers(modes, sink=sink, window=window, model=info, provenance={"method": method})

    policies = [("full", "full", None), ("all-streaming", "streaming",
                                         layers_plan(set(range(info.num_layers)) - set(info.native_sliding), "all"))]
    rng = random.Random(0)
    choosable = [i for i in range(info.num_layers) if i not in info.native_sliding]
    for k in ks:
        tag = f"k={k}"
        for name in ("gates-head", "gates-head-max", "gates-layer", "attention", "attention-cpu"):
            policies.append((f"{name} {tag}", name, zz.solve(scores[name], retrieval_layers=k, sink=sink,
                                                              window=window)))
        policies.append((f"greedy {tag}", "greedy", layers_plan(set(order[:n - k]), "greedy")))
        budget = policies[-1][2].kv_fraction(max(cfg["lengths"]))
        policies.append((f"duo-heads {tag}", "duo-heads", zz.solve_heads(scores["gates-head"], kv_budget=budget,
                                                                         context_length=max(cfg["lengths"]),
                                                                         sink=sink, window=window)))
        for r in range(cfg["randoms"]):
            policies.append((f"random{r} k={k}", "random", layers_plan(set(choosable) - set(rng.sample(choosable, k)),
                                                                       "random")))
    res["policies"] = {name: (plan.to_json() if plan else None) for name, _, plan in policies}
    save()
    depths = [i / max(1, cfg["niah_depths"] - 1) for i in range(cfg["niah_depths"])]
    eval_sets = {}
    for L in cfg["lengths"]:
        eval_sets[f"passkey@{L}"] = passkey_samples(tok, n=cfg["passkey_n"], length=L, keys=1, split="evaluation",
                                                    seed=100 + L)
        eval_sets[f"niah@{L}"] = [s for i, d in enumerate(depths) for s in niah(tok, L, depth=d, n=cfg["niah_n"],
                                                                               seed=1000 * L + i)]
    for name, family, plan in policies:
        if time.perf_counter() - t0 > args.budget_s:
            print(f"time budget reached; skipping from {name}", flush=True)
            break
        row = {"policy": name, "family": family}
        for key, data in eval_sets.items():
            m = measure(model, data, plan, batch_size=cfg["batch"], streaming_backend="sdpa")
            L = int(key.split("@")[1])
            row[key] = {"accuracy": m.accuracy, "loss": round(m.loss, 4), "n": len(m.correct),
                        "correct": [int(c) for c in m.correct], "kv_fraction": plan.kv_fraction(L) if plan else 1.0}
        res["eval"].append(row)
        save()
        print(f"{name:24}", " ".join(f"{k}:{row[k]['accuracy']:.2f}" for k in eval_sets), flush=True)
    save()
    print(f"done in {res['elapsed_s']} s", flush=True)


if __name__ == "__main__":
    main()
