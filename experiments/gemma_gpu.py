"""Make the shipped Gemma-3-270M plan on a GPU and evaluate it against every single-layer choice, 2k to 32k tokens.

    python3 experiments/gemma_gpu.py --gguf PATH/gemma-3-270m-q4_k_m.gguf --out DIR [--quick --device cpu]

Produced docs/results/gemma_gpu/ and the shipped plan zigzag_attn/plans/gemma3-270m@0.33.json (docs/results.md,
"Gemma-3-270M"; run as benchmarks/gemma_gpu.py, the command they record).

1. `zigzag-attn calibrate` itself (its GPU defaults: ablation scores, then measured greedy elimination), keeping
   1 of Gemma's 3 full-attention layers (5, 11, 17; the other 15 use the model's own sliding window), sink 64,
   window 256; writes OUT/gemma3-270m@0.33.json;
2. NIAH, then pass-key while `--budget-s` allows, on the evaluation novels (5 depths x 4 prompts per length) at
   2k-32k tokens for full attention, all-streaming (StreamingLLM), the plan and the two other single-layer choices
   (exhaustive); batch sizes per length keep GPU memory far below 60 GB;
3. rewrites the plan with its evaluation numbers, writes OUT/gemma_gpu.json and PNGs, prints the table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

import zigzag_attn as zz
from zigzag_attn import cli
from zigzag_attn.cli import calibrate as cli_calibrate
from zigzag_attn.cli.common import Model, device_name
from zigzag_attn.eval import Policy, Results, evaluate, plots
from zigzag_attn.eval.policies import all_streaming, full
from zigzag_attn.plan import RETRIEVAL, STREAMING

NAME, RATIO = "gemma3-270m@0.33", "0.33"
FULL = dict(calib_len=8192, calib_n=8, keys=4, lengths=(2048, 4096, 8192, 16384, 32768), depths=5, per_cell=4,
            batch={2048: 4, 4096: 4, 8192: 4, 16384: 2, 32768: 1})
QUICK = dict(calib_len=640, calib_n=1, keys=2, lengths=(1024,), depths=2, per_cell=1, batch={1024: 1})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True, help="the Gemma-3-270M .gguf file")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the script on CPU")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=390, help="start no pass-key length that would end after this")
    ap.add_argument("--finalize", metavar="GEMMA_GPU_JSON",
                    help="only write the plan (OUT/gemma3-270m_0.33.json) from a finished run's gemma_gpu.json")
    args = ap.parse_args()
    if args.finalize:
        res = json.loads(Path(args.finalize).read_text())
        label = next(k for k in res["policies"] if k.startswith(NAME))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = Path(args.out) / f"{NAME.replace('@', '_')}.json"
        finalize(res, Results.from_json(res["results"]), label, path,
                 eval_seconds=round(sum(r["seconds"] for r in res["runs"].values()), 1))
        print(f"wrote {path}")
        return
    t0 = time.perf_counter()
    cfg = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    def tidy(cmd: str) -> str:  # record $OUT, not this run's folder
        return cmd.replace(os.environ["OUT"], "$OUT") if os.environ.get("OUT") else cmd

    command = tidy(shlex.join(["python3", "experiments/gemma_gpu.py", *sys.argv[1:]]))

    plan_path = out / f"{NAME.replace('@', '_')}.json"  # the device tool returns no names with '@'

    argv = ["calibrate", args.gguf, "--out", str(plan_path), "--retrieval-ratio", RATIO, "--sink", "64", "--window",
            "256", "--length", str(cfg["calib_len"]), "--samples", str(cfg["calib_n"]), "--keys", str(cfg["keys"]),
            "--refine", "--device", args.device]
    model, tok = calibrate(argv)
    model.config.name_or_path = "gemma3-270m"
    plan = zz.Plan.load(plan_path)
    info = zz.describe(model)
    full_layers = [i for i in range(info.num_layers) if i not in info.native_sliding]
    kept = [i for i in full_layers if plan.modes[i] == RETRIEVAL]
    print(f"calibrated in {plan.provenance['seconds']} s: keeps full layer(s) {kept} of {full_layers}", flush=True)

    def keep(layer: int) -> zz.Plan:
        modes = [STREAMING if i in full_layers and i != layer else RETRIEVAL for i in range(info.num_layers)]
        return zz.Plan.from_layers(modes, sink=plan.sink, window=plan.window, model=info)

    label = f"{NAME} (keeps {', '.join(map(str, kept))})"
    pols = [full(), all_streaming(info, sink=plan.sink, window=plan.window), Policy(label, "plan", plan)]
    pols += [Policy(f"keep layer {i}", "plan", keep(i)) for i in full_layers if [i] != kept]

    parts, runs = [], {}
    res = {"command": command, "device": device_name(args.device), "config": cfg,
           "policies": {p.name: p.plan and p.plan.to_json() for p in pols}, "runs": runs}

    def save() -> Results:
        results = sum(parts[1:], parts[0])
        results.meta.update(tasks=list(dict.fromkeys(r.task for r in results.rows)), lengths=results.lengths)
        res.update(seconds=round(time.perf_counter() - t0, 1), results=results.to_json())
        (out / "gemma_gpu.json").write_text(json.dumps(res, indent=1))
        return results

    eval_start = time.perf_counter()
    for task in ("niah", "passkey"):
        for n in cfg["lengths"]:
            guess = runs.get(f"niah@{n}", {}).get("seconds", 0)
            if task == "passkey" and time.perf_counter() - t0 + guess > args.budget_s:
                print(f"time budget: skipping passkey@{n} (about {guess:.0f} s)", flush=True)
                continue
            parts.append(run_cell(model, tok, pols, task, n, cfg, runs))
            save()
    eval_seconds = round(time.perf_counter() - eval_start, 1)
    results = save()

    finalize(res, results, label, plan_path, tidy, eval_seconds)
    for task in results.tasks:
        plots.heatmap(results, out / f"{task}_heatmap.png", task=task, policies=[p.name for p in pols],
                      columns=len(pols))
    length_plot(results, out / "accuracy_vs_length.png")
    print(f"wrote {plan_path} and {out / 'gemma_gpu.json'}; total {res['seconds']} s "
          f"(evaluation {eval_seconds} s)\n", flush=True)
    print(results.table(), flush=True)


def finalize(res: dict, results: Results, label: str, plan_path: Path, tidy=lambda c: c,
             eval_seconds: float | None = None) -> zz.Plan:
    """Write the shipped plan: the calibrated one, with the command, times and evaluation numbers recorded."""
    plan = zz.Plan.from_json(res["policies"][label])
    evaluation = {"this plan" if name == label else name:
                  {f"{a['task']}@{a['length']}": {"accuracy": round(a["accuracy"], 4), "n": a["n"]}
                   for a in results.aggregate(("task", "length"), policy=name)} for name, _ in results.policies}
    cfg = res["config"]
    provenance = {**plan.provenance, "command": res["command"], "calibrate_command": tidy(plan.provenance["command"]),
                  "model_name": "gemma3-270m", "evaluation_seconds": eval_seconds,
                  "note": f"Made by experiments/gemma_gpu.py, which runs `zigzag-attn calibrate` (calibrate_command) "
                          f"and evaluates on held-out text (evaluation novels; {cfg['depths']} depths x "
                          f"{cfg['per_cell']} prompts per length and task) against full attention, all-streaming "
                          "and every other single-full-layer choice.",
                  "evaluation": evaluation}
    plan = zz.Plan.from_layers(plan.modes, sink=plan.sink, window=plan.window,
                               model=dataclasses.replace(plan.model, name="gemma3-270m"), provenance=provenance)
    plan.save(plan_path)
    return plan


def calibrate(argv: list[str]):
    """`zigzag-attn calibrate ARGV` through the CLI's own code path; returns the (model, tokenizer) it loaded."""
    loaded, load = [], Model.load
    Model.load = lambda self, *a: loaded.append(load(self, *a)) or loaded[-1]
    try:
        cli_calibrate.run(cli.build_parser().parse_args(argv), argv)
    finally:
        Model.load = load
    return loaded[0]


def run_cell(model, tok, pols, task: str, n: int, cfg: dict, runs: dict):
    """Every policy on one (task, length); halves the batch on CUDA out-of-memory."""
    batch, cuda = cfg["batch"][n], next(model.parameters()).is_cuda
    while True:
        start = time.perf_counter()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            results = evaluate(model, tok, pols, task=task, lengths=[n], depths=cfg["depths"],
                               samples_per_cell=cfg["per_cell"], batch_size=batch)
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            print(f"{task}@{n}: out of memory at batch {batch}; retrying at {batch // 2}", flush=True)
            batch //= 2
            torch.cuda.empty_cache()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    runs[f"{task}@{n}"] = {"seconds": round(time.perf_counter() - start, 1), "batch": batch,
                           "peak_gib": peak and round(peak, 2)}
    rows = results.aggregate(("policy",))
    print(f"{task}@{n} (n={rows[0]['n']}): {runs[f'{task}@{n}']}\n  "
          + "  ".join(f"{a['policy']} {a['accuracy']:.2f}" for a in rows), flush=True)
    return results


def length_plot(results, path: Path) -> None:
    """Accuracy against context length, one line per policy, one panel per task."""
    fig = Figure(figsize=(5.5 * len(results.tasks), 4), layout="constrained")
    for ax, task in zip(fig.subplots(1, len(results.tasks), squeeze=False)[0], results.tasks, strict=True):
        for name, _ in results.policies:
            pts = sorted((a["length"], a["accuracy"]) for a in results.aggregate(("length",), task=task, policy=name))
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task}: accuracy by context length", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=130, bbox_inches="tight")


if __name__ == "__main__":
    main()
