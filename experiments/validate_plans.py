"""Does a validation split predict held-out accuracy? (selection on data calibration never saw)

    python experiments/validate_plans.py run --model GGUF --name NAME --state DIR --out DIR \
        [--policies zigzag@0.5,gatemax@0.5,...] [--length 8192] [--samples 4]
    python experiments/validate_plans.py report VALIDATION.jsonl MATRIX.jsonl... [--tasks multikey,multivalue]

run: the matrix's candidate plans (experiments/matrix_policies.py, from a calibration state) on a validation split
that neither calibration nor the matrix reads: the calibration task types (four pass keys, a ledger, box chains;
calibration's wordings, not the matrix's RULER wordings) on the held-out novels (`evaluation` split; calibration
reads the calibration novels and code, the matrix GNU manuals and licence texts). Each row: a policy's answer loss
per task, its rise over full attention, and the worst task's rise (robust calibration's objective), appended to
--out/validation.jsonl as soon as it is measured (finished policies are skipped on a rerun).
report: per ratio, the plans ordered by validation worst rise beside their held-out accuracy (mean over the cells
every listed plan has), the rank correlation between the two, and whether the plan validation would pick is the
plan the matrix ranks first. No recorded result yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_accuracy as ga  # noqa: E402
import matrix_policies as mp  # noqa: E402

import zigzag_attn as zz  # noqa: E402
from zigzag_attn.data.calibration import calibration_groups  # noqa: E402
from zigzag_attn.profile import measure  # noqa: E402

SPLIT = ("evaluation",)  # the held-out novels: read by neither calibration nor the matrix
CANDIDATES = [f"{p}@{r}" for r in mp.RATIOS for p in
              ("zigzag", "ablation", "gatemax", "gatemean", "layergates", "default", "shipped", "cpu",
               *(f"random-{i}" for i in range(1, 6)))]


def validation_rows(model, groups: dict[str, list], plans: dict, done: set[str], write) -> None:
    """Measure full attention first (every rise is over it), then each plan of `plans` ({name: plan}) not in
    `done`; `write(row)` gets one row per policy."""
    full = {g: measure(model, s).loss for g, s in groups.items()}
    for name, plan in plans.items():
        if name in done:
            continue
        t = time.perf_counter()
        loss = full if plan is None else {g: measure(model, s, plan).loss for g, s in groups.items()}
        rise = {g: loss[g] - full[g] for g in groups}
        write({"policy": name, "loss": loss, "rise": rise, "worst_rise": max(rise.values()),
               "seconds": round(time.perf_counter() - t, 1)})


def run(args) -> None:
    cfg = dict(ga.SMOKE if args.smoke else ga.FULL)
    if args.lengths:  # duo@r's KV budget is taken at the matrix's longest length, as there
        cfg["lengths"] = tuple(int(x) for x in args.lengths.split(","))
    cfg["randoms"] = mp.MAX_RANDOMS
    state, out = Path(args.state), Path(args.out)
    # the plans from the state's recorded model shape, before any slow work (patching checks them on the model)
    info = dataclasses.replace(zz.Scores.load(state / "robust_scores.json").model, name=args.name)
    plans = mp.policies(cfg, info, state)
    names = args.policies.split(",") if args.policies else ["full", *(n for n in CANDIDATES if n in plans)]
    unknown = [n for n in names if n not in plans]
    if unknown:
        raise SystemExit(f"--policies: not available from {state}: {', '.join(unknown)}")
    out.mkdir(parents=True, exist_ok=True)
    model, tok = ga.load_model(args)
    length = cfg["length"] if args.smoke else args.length
    groups = calibration_groups(tok, lengths=(length,), samples=1 if args.smoke else args.samples,
                                splits=SPLIT, seed=12345)
    f = out / "validation.jsonl"
    done = {json.loads(x)["policy"] for x in f.read_text().splitlines()} if f.exists() else set()

    def write(row: dict) -> None:
        row = {"model": args.name, "length": length, "samples": len(next(iter(groups.values()))), **row}
        with open(f, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        ga.log(f"{row['policy']:>16}: worst rise {row['worst_rise']:.4f} ({row['seconds']} s)")

    validation_rows(model, groups, {n: plans[n] for n in names}, done, write)


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else float("nan")


def report(validation: list[dict], matrix: list[dict], tasks: list[str] | None = None) -> str:
    """Markdown: per ratio, validation's order against held-out accuracy on the cells every plan there has."""
    val = {r["policy"]: r["worst_rise"] for r in validation}
    acc = {(r["policy"], r["task"], r["length"]): r["accuracy"] for r in matrix if not tasks or r["task"] in tasks}
    out = []
    for ratio in sorted({p.split("@")[1] for p in val if "@" in p}, key=float, reverse=True):
        names = [p for p in val if p.endswith(f"@{ratio}") and any(k[0] == p for k in acc)]
        cells = set.intersection(*({k[1:] for k in acc if k[0] == p} for p in names)) if names else set()
        if len(names) < 2 or not cells:
            continue
        mean = {p: sum(acc[(p, *c)] for c in cells) / len(cells) for p in names}
        names.sort(key=lambda p: val[p])
        rho = spearman([-val[p] for p in names], [mean[p] for p in names])
        best = max(names, key=lambda p: mean[p])
        out += [f"**{ratio}** ({len(cells)} cells: {', '.join(sorted({t for t, _ in cells}))}); rank correlation "
                f"of -worst rise with accuracy {rho:.2f}; validation picks {names[0]} ({mean[names[0]]:.3f}), "
                f"the matrix's best is {best} ({mean[best]:.3f})", "",
                "| policy | validation worst rise | held-out mean accuracy |", "|---|---|---|"]
        out += [f"| {p} | {val[p]:.4f} | {mean[p]:.3f} |" for p in names] + [""]
    return "\n".join(out) if out else "no ratio has two plans with both validation and matrix rows"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    for flag in ("--model", "--name", "--state", "--out"):
        r.add_argument(flag, required=True)
    r.add_argument("--policies", help="default: full and every candidate the state can make")
    r.add_argument("--lengths", help="the matrix's lengths (duo@r's KV is set at the longest); default 4k-32k")
    r.add_argument("--length", type=int, default=8192, help="validation prompt length")
    r.add_argument("--samples", type=int, default=4, help="prompts per task")
    r.add_argument("--cache", help="a plain bf16 copy of the model (gpu_accuracy.py --cache)")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--smoke", action="store_true", help="tiny sizes, to check the logic on CPU")
    p = sub.add_parser("report")
    p.add_argument("validation")
    p.add_argument("matrix", nargs="+")
    p.add_argument("--tasks", help="only these matrix tasks, comma-separated")
    args = ap.parse_args()
    if args.command == "run":
        return run(args)
    rows = [json.loads(x) for x in Path(args.validation).read_text().splitlines() if x.strip()]
    matrix = [json.loads(x) for f in args.matrix for x in Path(f).read_text().splitlines() if x.strip()]
    matrix = [m for m in matrix if not m["policy"].startswith("hybrid-")]
    print(report(rows, matrix, args.tasks.split(",") if args.tasks else None))


if __name__ == "__main__":
    main()
