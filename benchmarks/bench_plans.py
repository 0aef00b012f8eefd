"""Compiled decode of any plan files on a real model, interleaved in one process (bench.py's `compiled` part).

    python benchmarks/bench_plans.py --model DIR_OR_GGUF --plans "zigzag@0.5=Z.json,hybrid@0.5=H.json;full=full" \
        --reference zigzag@0.5 --contexts 8192,32768 --batches 1 --out DIR [--budget-s S]

Every named plan (`full`: the unpatched model) gets its own patched copy of the model (weights shared) and its
own compiled call (transformers' `get_compiled_call`: inductor + CUDA graphs) on a static cache marked filled to
N tokens; every point times all of them in shuffled, interleaved rounds (`Bench.compiled`). Plans identical to an
earlier one (same sink, window and head mask) are timed once; their rows are copies marked "same_as".
Groups (separated by ';') run as stages: stage k times the plans of groups 1..k at every point, so each stage
compiles only its new group, and a call cut off while compiling a later group keeps the rows of the earlier stages
(rows carry "stage"; a later stage's row for the same point supersedes an earlier one's).
Rows (DIR/bench_plans.jsonl): "plan" (retrieval heads, mixed layers, KV fraction and KV bytes per context at B=1),
"compiled" (ms per step: median of every timed step; round_ms: each round's median), and "ratio" (each plan's
round medians over the reference's, median over rounds: the drift-free comparison).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import zigzag_attn as zz

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from bench import Bench  # noqa: E402
from hybrid_policies import retrieval_heads, twins  # noqa: E402
from timing import reset_peak  # noqa: E402


class PlanBench(Bench):
    """`Bench` that also keeps every row it emits (to compute ratios and copy rows for identical plans)."""

    def __init__(self, *a, **kw):
        self.rows: list[dict] = []
        self.stage: int | None = None
        super().__init__(*a, **kw)

    def emit(self, row: dict) -> None:
        if self.stage is not None and row["part"] in ("compiled", "ratio"):
            row = {**row, "stage": self.stage}
        self.rows.append(row)
        super().emit(row)


def parse_plans(spec: str) -> tuple[dict[str, zz.Plan | None], list[list[str]]]:
    """"name=FILE,name=full;name=FILE,..." -> ({name: plan (None for full attention)} in the order given, the
    names of each ';'-separated group)."""
    out, groups = {}, [[item.partition("=")[0] for item in g.split(",")] for g in spec.split(";")]
    for item in spec.replace(";", ",").split(","):
        name, sep, src = item.partition("=")
        if not sep or not name or not src:
            raise SystemExit(f"--plans items are NAME=FILE or NAME=full; got {item!r}")
        if name in out:
            raise SystemExit(f"--plans names {name!r} twice")
        out[name] = None if src == "full" else zz.Plan.load(src)
    return out, groups


def split_twins(plans: dict[str, zz.Plan | None]) -> tuple[list[str], dict[str, str]]:
    """(the names to time, {name: the earlier name with an identical plan, timed instead})."""
    names, same = list(plans), twins(plans)
    aliases = {n: same[n][0] for n in names if n in same and names.index(same[n][0]) < names.index(n)}
    return [n for n in names if n not in aliases], aliases


def plan_row(bench: Bench, name: str, plan: zz.Plan | None, contexts: list[int], same_as: str | None) -> dict:
    frac = {n: 1.0 if plan is None else plan.kv_fraction(n) for n in contexts}
    return {"part": "plan", "policy": name, "same_as": same_as, "describe": plan.describe() if plan else "full",
            "retrieval_heads": None if plan is None else retrieval_heads(plan),
            "mixed_layers": 0 if plan is None else len(plan.mixed_layers),
            "kv_fraction": frac, "kv_bytes_b1": {n: bench.kv_bytes_full(n, 1) * f for n, f in frac.items()}}


def point(bench: PlanBench, timed: list[str], aliases: dict[str, str], ref: str, n: int, b: int) -> None:
    """One (context, batch) point: time `timed` interleaved, then ratios to `ref` and copies for `aliases`."""
    base = aliases.get(ref, ref)  # the timed plan identical to the reference
    start = len(bench.rows)
    try:
        bench.compiled(timed, n, b)
    except torch.OutOfMemoryError:  # earlier points' graphs hold their caches: free them, try once more
        bench.reset_compiled()
        start = len(bench.rows)
        bench.compiled(timed, n, b)
    got = {r["policy"]: r for r in bench.rows[start:] if r["part"] == "compiled" and "ms" in r}
    ratios = {}
    if base in got:
        for p, r in got.items():
            per = [a / z for a, z in zip(r["round_ms"], got[base]["round_ms"], strict=True)]
            ratios[p] = {"part": "ratio", "n": n, "batch": b, "policy": p, "vs": ref,
                         "median": statistics.median(per), "min": min(per), "max": max(per), "rounds": per}
            bench.emit(ratios[p])
    for alias, twin in aliases.items():
        for src in (got.get(twin), ratios.get(twin)):
            if src is not None:
                bench.emit({**src, "policy": alias, "same_as": twin})


def table(rows: list[dict], ref: str) -> str:
    ms = {(r["policy"], r["n"], r["batch"]): r["ms"] for r in rows if r["part"] == "compiled" and "ms" in r}
    ratio = {(r["policy"], r["n"], r["batch"]): r["median"] for r in rows if r["part"] == "ratio"}
    plans = {r["policy"]: r for r in rows if r["part"] == "plan"}
    lines = [f"| policy | B | N | KV fraction | ms/step | vs {ref} |", "|---|---|---|---|---|---|"]
    for (p, n, b), v in sorted(ms.items(), key=lambda x: (x[0][2], x[0][1], list(plans).index(x[0][0]))):
        frac = plans[p]["kv_fraction"][n] if p in plans else float("nan")
        lines.append(f"| {p} | {b} | {n} | {frac:.3f} | {v:.3f} | {ratio.get((p, n, b), float('nan')):.3f}× |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an alias, a .gguf file or a local directory")
    ap.add_argument("--plans", required=True, help="NAME=FILE or NAME=full, comma-separated (timed in this order); "
                    "';' starts a new group (a later stage)")
    ap.add_argument("--reference", help="the plan every ratio is taken against (default: the first zigzag*, "
                    "else the first plan)")
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--steps", type=int, default=20, help="timed decode steps per point and plan")
    ap.add_argument("--rounds", type=int, default=5, help="rounds that each time every plan once, shuffled")
    ap.add_argument("--dynamic", choices=("auto", "true"), default="true",
                    help="true (default): one compile per plan serves every length; auto: transformers' default")
    ap.add_argument("--decode-backend", choices=("auto", "sdpa", "split"), default="auto")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new point after this many seconds")
    ap.add_argument("--out", default="bench-plans-out")
    ap.set_defaults(layers=32, smoke=False, zigzag_plan=None, profile=False)
    args = ap.parse_args()
    args.dynamic = None if args.dynamic == "auto" else True
    start = time.time()
    plans, groups = parse_plans(args.plans)
    ref = args.reference or next((p for p in plans if p.startswith("zigzag")), next(iter(plans)))
    if ref not in groups[0]:
        ap.error(f"--reference {ref!r} is not in the first group of --plans ({', '.join(groups[0])})")
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.cache_size_limit = 64
    timed, aliases = split_twins(plans)
    bench = PlanBench(args, timed, log_name="bench_plans.jsonl", extra_plans=plans)
    contexts = [int(x) for x in args.contexts.split(",")]
    for name, plan in plans.items():
        bench.emit(plan_row(bench, name, plan, contexts, aliases.get(name)))
    for k in range(1, len(groups) + 1):
        names = {n for g in groups[:k] for n in g}
        stage_aliases = {a: t for a, t in aliases.items() if a in names}
        stage_timed = [n for n in timed if n in names or n in stage_aliases.values()]
        bench.stage = k if len(groups) > 1 else None
        for b in (int(x) for x in args.batches.split(",")):
            for n in contexts:
                if time.time() - start > args.budget_s:
                    bench.emit({"part": "skipped", "stage": k, "n": n, "batch": b, "why": "budget"})
                    continue
                try:
                    point(bench, stage_timed, stage_aliases, ref, n, b)
                except torch.OutOfMemoryError:
                    bench.emit({"part": "compiled", "policy": "*", "n": n, "batch": b, "skipped": "OOM"})
                    bench.reset_compiled()
                    reset_peak()
    print(table(bench.rows, ref))


if __name__ == "__main__":
    main()
