"""The acceptance rule: is a plan good enough for your model at your lengths?

Per task, a policy's accuracy (pooled over lengths, depths and prompts) is divided by full attention's on the same
prompts. A plan is accepted when the mean of these shares is at least `MEAN` (0.95) and no task's share is below
`WORST` (0.90). Tasks where full attention itself gets nothing right say nothing about a plan and are left out.

    results = evaluate(model, tok, pols, task=["niah", "multikey", "multivalue"], lengths=[32768])
    print(verdict_text(results))
"""

from __future__ import annotations

from typing import Any

from .policies import FULL

MEAN, WORST = 0.95, 0.90


def verdicts(results, *, mean: float = MEAN, worst: float = WORST) -> list[dict[str, Any]]:
    """One dict per policy other than full attention: its share of full's accuracy per task, their mean, the worst
    task, and `accept`. ValueError when the results hold no full-attention rows (nothing to compare with)."""
    full = next((p for p, family in results.policies if family == FULL), None)
    if full is None:
        raise ValueError("the acceptance rule compares with full attention, and these results have none")
    base = {a["task"]: a["accuracy"] for a in results.aggregate(("task",), policy=full)}
    tasks = [t for t in results.tasks if base.get(t, 0) > 0]
    out = []
    for policy, family in results.policies:
        if family == FULL:
            continue
        acc = {a["task"]: a["accuracy"] for a in results.aggregate(("task",), policy=policy)}
        share = {t: acc[t] / base[t] for t in tasks if t in acc}
        if not share:
            continue
        low = min(share, key=share.get)
        avg = sum(share.values()) / len(share)
        out.append({"policy": policy, "family": family, "share": share, "mean_share": avg, "worst_task": low,
                    "worst_share": share[low], "accept": avg >= mean and share[low] >= worst,
                    "kv_fraction": next(a["kv_fraction"] for a in results.aggregate(("policy",), policy=policy))})
    return out


def verdict_text(results, *, mean: float = MEAN, worst: float = WORST) -> str:
    """The verdicts as lines of text, with the rule they apply."""
    rows = verdicts(results, mean=mean, worst=worst)
    skipped = [t for t in results.tasks if t not in (rows[0]["share"] if rows else {})]
    width = max([len(r["policy"]) for r in rows] + [6])
    lines = [f"acceptance: accuracy as a share of full attention's, per task; accept when the mean share is >= "
             f"{mean:.2f} and every task's >= {worst:.2f}"]
    if skipped:
        lines.append(f"  (left out: {', '.join(skipped)}, where full attention gets nothing right)")
    for r in rows:
        lines.append(f"  {r['policy'].ljust(width)}  KV {r['kv_fraction']:.3f}  mean {r['mean_share']:.3f}  worst "
                     f"{r['worst_share']:.3f} ({r['worst_task']})  {'ACCEPT' if r['accept'] else 'reject'}")
    return "\n".join(lines)
