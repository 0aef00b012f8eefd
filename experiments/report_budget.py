"""Markdown tables for FP8 retrieval KV and for KV budgets spent on layers, window, sink and KV dtype together, from
an accuracy matrix (experiments/gpu_accuracy.py's matrix.jsonl) and zz.choose's validation rows
(experiments/budget_choice.py's choice.jsonl).

    python experiments/report_budget.py MATRIX.jsonl [CHOICE.jsonl]

Every number is computed from the rows: per task, the mean accuracy over the lengths given (n = prompts per cell,
from the rows); a policy missing a cell shows "–" there and gets no mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ("multikey", "multivalue", "multiquery", "vartrack")  # long-range retrieval: the budget targets' tasks
FP8_TASKS = ("multikey", "multivalue", "niah", "passkey", "vartrack")
LENGTHS = (8192, 16384, 32768)


def load(path: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def cells(rows: list[dict]) -> dict[tuple[str, str, int], dict]:
    """(policy, task, length) -> its row (the last one wins)."""
    return {(r["policy"], r["task"], r["length"]): r for r in rows}


def task_means(cell: dict, policy: str, tasks, lengths) -> dict[str, float | None]:
    """Per task, the mean accuracy over `lengths`; None where a length is missing."""
    out = {}
    for t in tasks:
        got = [cell.get((policy, t, n)) for n in lengths]
        out[t] = None if any(g is None for g in got) else sum(g["accuracy"] for g in got) / len(got)
    return out


def mean(values) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def n_of(cell: dict, policy: str) -> int | None:
    ns = {r["prompts"] for (p, _, _), r in cell.items() if p == policy}
    return ns.pop() if len(ns) == 1 else None


def fp8_table(rows: list[dict], pairs=(("full", "full+fp8"), ("zigzag@0.5", "zigzag@0.5+fp8"),
                                       ("zigzag@0.25", "zigzag@0.25+fp8")), lengths=(4096, 8192, 16384, 32768),
              tasks=FP8_TASKS) -> str:
    """The same plans with 16-bit and with FP8 retrieval KV: per-task means over `lengths`, and FP8 / 16-bit."""
    cell = cells(rows)
    head = "| plan | KV dtype | KV at 32k | " + " | ".join(tasks) + " | mean | FP8 / 16-bit |"
    out = [head, "|---" * (len(tasks) + 5) + "|"]
    for bf, f8 in pairs:
        if not any(p == f8 for p, _, _ in cell):
            continue
        means = {p: task_means(cell, p, tasks, lengths) for p in (bf, f8)}
        kv = {p: next((r["kv_fraction"] for (q, _, n), r in cell.items() if q == p and n == 32768), None)
              for p in (bf, f8)}
        m = {p: mean(means[p].values()) for p in (bf, f8)}
        for p, dtype in ((bf, "16-bit"), (f8, "FP8")):
            ratio = fmt(m[f8] / m[bf]) if p == f8 and m[f8] is not None and m[bf] else ""
            out.append(f"| {bf} | {dtype} | {fmt(kv[p])} | " + " | ".join(fmt(means[p][t], 2) for t in tasks)
                       + f" | {fmt(m[p])} | {ratio} |")
    return "\n".join(out)


def budget_table(rows: list[dict], budget: float, tasks=TASKS, lengths=LENGTHS) -> str:
    """Every policy at about `budget` of full's 16-bit KV (at 32k), with full and streaming: per-task means over
    `lengths`, their mean and share of full; the best of the random layer sets in one row."""
    cell = cells(rows)
    names = list(dict.fromkeys(p for p, _, _ in cell))
    full = mean(task_means(cell, "full", tasks, lengths).values())

    def kv32(p):
        return next((r["kv_fraction"] for (q, _, n), r in cell.items() if q == p and n == 32768), None)

    near = [p for p in names if kv32(p) is not None and abs(kv32(p) - budget) <= 0.02 and not p.startswith("random")]
    randoms = [p for p in names if p.startswith("random") and f"~b{budget}" in p]
    rnd = {p: mean(task_means(cell, p, tasks, lengths).values()) for p in randoms}
    rnd = {p: m for p, m in rnd.items() if m is not None}
    out = ["| policy | KV at 32k | n | " + " | ".join(tasks) + " | mean | share of full |", "|---" * (len(tasks) + 5)
           + "|"]

    def line(label, p):
        t = task_means(cell, p, tasks, lengths)
        m = mean(t.values())
        share = fmt(m / full) if m is not None and full else "–"
        out.append(f"| {label} | {fmt(kv32(p))} | {n_of(cell, p) or '–'} | " + " | ".join(fmt(t[k], 2) for k in tasks)
                   + f" | {fmt(m)} | {share} |")

    for p in ["full", "full+fp8", *sorted(near, key=lambda q: (q.startswith("duo"), q)), "streaming"]:
        if any(q == p for q, _, _ in cell):
            line(p, p)
    if rnd:
        best = max(rnd, key=rnd.get)
        line(f"best of {len(rnd)} random layer sets ({best})", best)
    return "\n".join(out)


def choice_table(rows: list[dict], choice: list[dict], budget: float, tasks=TASKS, lengths=LENGTHS) -> str:
    """zz.choose's candidates for `budget`, ordered by validation worst rise, beside their held-out accuracy."""
    cell = cells(rows)
    cands = sorted((c for c in choice if c["budget"] == budget), key=lambda c: c["worst_rise"])
    if not cands:
        return ""
    out = ["| candidate | window | KV dtype | retrieval layers | validation worst rise | held-out mean | picked |",
           "|---" * 7 + "|"]
    held = {c["policy"]: mean(task_means(cell, c["policy"], tasks, lengths).values()) for c in cands}
    done = {p: m for p, m in held.items() if m is not None}
    best = max(done, key=done.get) if done else None
    for c in cands:
        mark = ("chosen" if c["chosen"] else "") + (" / best held-out" if c["policy"] == best else "")
        out.append(f"| {c['policy']} | {c['window']} | {c['kv_dtype']} | {c['retrieval_layers']} | "
                   f"{c['worst_rise']:.4f} | {fmt(held[c['policy']])} | {mark.strip(' /') or ''} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("matrix")
    ap.add_argument("choice", nargs="?")
    args = ap.parse_args()
    rows = load(args.matrix)
    choice = load(args.choice) if args.choice else []
    print("FP8 retrieval KV against 16-bit, same plans (mean accuracy over 4k-32k)\n\n" + fp8_table(rows))
    for b in (0.5, 0.25):
        print(f"\nKV budget {b} of full at 32k (mean accuracy over 8k-32k)\n\n" + budget_table(rows, b))
        table = choice_table(rows, choice, b)
        if table:
            print(f"\nzz.choose at budget {b}: validation order against held-out accuracy\n\n{table}")


if __name__ == "__main__":
    main()
