"""The frontier: accuracy against decode time and KV bytes for zigzag, hybrids and DuoAttention's head plan.

    python experiments/report_frontier.py MATRIX.jsonl [MORE.jsonl ...] --timing bench_plans.jsonl [...] \
        --png frontier.png

MATRIX rows come from experiments/gpu_accuracy.py (held-out genres), timing rows from benchmarks/bench_plans.py
(compiled decode, interleaved in one process per file). Accuracy is compared on the (task, length) cells every
listed policy ran. "share of duo" is a policy's accuracy on a task (all answers at the common lengths pooled) over
duo@r's at the same r (equal KV); "÷ zigzag" is the drift-free ratio of decode steps (the median over rounds of
round medians) to zigzag@r measured in the same process; where several stages of bench_plans.py timed a point,
the last stage's ratio is shown with the range over all of them in brackets. With `targets`, a line per hybrid of
at most 2 mixed layers says whether it keeps >= 0.97 of duo's accuracy on every task and decodes within 1.03x of
zigzag at every length timed, in every stage. experiments/report.py uses these tables for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from report_matrix import cell_names, common_cells, length_label

RATIOS = ("0.5", "0.25")
HYBRIDS = ["hybrid-m1", "hybrid-m2", "hybrid-m4", "hybrid-m2-s8", "hybrid-m4-s8"]  # experiments/hybrid_policies.py
DEFAULT = ["full", *(f"{p}@{r}" for r in RATIOS for p in ("zigzag", *HYBRIDS, "duo"))]
BATCH = 1


def read(paths: list[str]) -> list[dict]:
    """JSON lines of every file; a later row for the same key replaces an earlier one (see `keyed`)."""
    return [json.loads(x) for p in paths for x in Path(p).read_text().splitlines() if x.strip()]


def ratio_of(policy: str) -> str | None:
    m = re.fullmatch(r".+@(.+)", policy)
    return m.group(1) if m else None


def timing(rows: list[dict], batch: int = BATCH) -> dict:
    """{"ms": {(policy, n): ms}, "vs": {(policy, n): ([every stage's ratio, in order], reference)},
    "bytes": {(policy, n): KV bytes at B=1}} at `batch`; context keys are ints. A later row (stage) for a point
    replaces an earlier one in "ms"; "vs" keeps every stage's ratio, the last one current, so a table can show how
    they spread."""
    out: dict[str, dict] = {"ms": {}, "vs": {}, "bytes": {}}
    for r in rows:
        if r["part"] == "compiled" and "ms" in r and r["batch"] == batch:
            out["ms"][r["policy"], r["n"]] = r["ms"]
        elif r["part"] == "ratio" and r["batch"] == batch:
            ratios, _ = out["vs"].get((r["policy"], r["n"]), ([], None))
            out["vs"][r["policy"], r["n"]] = ([*ratios, r["median"]], r["vs"])
        elif r["part"] == "plan":
            out["bytes"].update({(r["policy"], int(n)): b for n, b in r["kv_bytes_b1"].items()})
    return out


def summary(acc_rows: list[dict], t: dict, policies: list[str]) -> tuple[list[dict], list[tuple[str, int]]]:
    """One dict per policy present in `acc_rows`: accuracy on the common cells, per-task shares of duo, timing."""
    rows = [r for r in acc_rows if r["policy"] in policies]
    common = common_cells(rows)
    by = {(r["policy"], r["task"], r["length"]): r for r in rows}
    tasks = sorted({c[0] for c in common})
    contexts = sorted({n for _, n in t["ms"]})
    out = []
    for p in (p for p in policies if any(k[0] == p for k in by)):
        pooled = {task: [sum(by[p, task, n][k] for tt, n in common if tt == task) for k in ("correct", "answers")]
                  for task in tasks}
        acc = {task: c / a if a else float("nan") for task, (c, a) in pooled.items()}
        duo = f"duo@{ratio_of(p)}"
        share = {}
        if ratio_of(p) and all((duo, *c) in by for c in common):
            for task in tasks:
                c, a = (sum(by[duo, task, n][k] for tt, n in common if tt == task) for k in ("correct", "answers"))
                share[task] = acc[task] / (c / a) if c else float("nan")
        longest = max(n for _, n in common)
        twin = by[(p, *common[0])].get("same_as")  # an identical plan: its timing stands for this one
        kv = by[p, common[-1][0], longest]["kv_fraction"] if (p, common[-1][0], longest) in by else float("nan")
        out.append({"policy": p, "kv_fraction": kv, "longest": longest, "same_as": by[(p, *common[0])].get("same_as"),
                    "mean_accuracy": sum(by[(p, *c)]["accuracy"] for c in common) / len(common), "task_acc": acc,
                    "share_of_duo": share, "ms": {n: t["ms"].get((p, n), t["ms"].get((twin, n))) for n in contexts},
                    "vs": {n: t["vs"].get((p, n), t["vs"].get((twin, n))) for n in contexts},
                    "kv_bytes": t["bytes"].get((p, longest))})
    return out, common


def table(items: list[dict], common: list[tuple[str, int]], batch: int = BATCH, with_targets: bool = True) -> str:
    tasks = sorted({c[0] for c in common})
    contexts = sorted({n for it in items for n in it["ms"]})
    head = (["policy", f"KV at {length_label(items[0]['longest'])}", "mean acc"] + [f"{t} ÷ duo" for t in tasks]
            + [f"ms/step {length_label(n)}" for n in contexts] + [f"÷ zigzag {length_label(n)}" for n in contexts])
    timed = f"decode at B={batch}, compiled." if contexts else "decode not timed."
    lines = [f"Accuracy over {len(common)} common cells ({cell_names(common)}); {timed}", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for it in items:
        cells = ([it["policy"] + (f" (= {it['same_as']})" if it["same_as"] else ""), f"{it['kv_fraction']:.3f}",
                  f"{it['mean_accuracy']:.3f}"] + [_f(it["share_of_duo"].get(t), 3) for t in tasks]
                 + [_f(it["ms"][n], 3) for n in contexts]
                 + ["–" if v is None or not v[1].startswith("zigzag") else f"{v[0][-1]:.3f}" + _spread(v[0])
                    for v in (it["vs"][n] for n in contexts)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + (["", *targets(items)] if with_targets else []))


def targets(items: list[dict]) -> list[str]:
    """The two bounds (>= 0.97 of duo on every task, <= 1.03x zigzag's step), per ratio, for the hybrids with at
    most 2 mixed layers."""
    out = []
    for it in items:
        m = re.fullmatch(r"hybrid-m(\d+)(-s\d+)?@.+", it["policy"])
        if not m or int(m.group(1)) > 2:
            continue
        shares = list(it["share_of_duo"].values())
        speed = [max(v[0]) for v in it["vs"].values() if v is not None]  # the slowest stage
        acc_ok = bool(shares) and min(shares) >= 0.97
        time_ok = bool(speed) and max(speed) <= 1.03
        step = (f"slowest step ÷ zigzag {max(speed):.3f} ({'meets' if time_ok else 'misses'} ≤ 1.03)" if speed
                else "step not timed (≤ 1.03 unknown)")
        out.append(f"- {it['policy']}: worst share of duo {min(shares, default=float('nan')):.3f} "
                   f"({'meets' if acc_ok else 'misses'} ≥ 0.97); {step}")
    return out


def _spread(ratios: list[float]) -> str:
    """" (lo–hi)" over the stages that timed a point, when more than one did and they differ."""
    return f" ({min(ratios):.3f}–{max(ratios):.3f})" if len(ratios) > 1 and max(ratios) - min(ratios) >= 5e-4 else ""


def _f(x, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def png(items: list[dict], path: str, title: str, context: int | None, batch: int = BATCH) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    styles = {"zigzag": ("o", "C0"), "duo": ("s", "C1"), "full": ("*", "k")}
    full_bytes = next((it["kv_bytes"] for it in items if it["policy"] == "full"), None)
    also = defaultdict(list)  # identical plans share a point and its label
    for it in items:
        if it["same_as"]:
            also[it["same_as"]].append(it["policy"])
    shown = [it for it in items if not it["same_as"]]
    for it in shown:
        label = " = ".join([it["policy"], *also[it["policy"]]])
        fam = it["policy"].split("@")[0]
        marker, color = styles.get(fam, ("D" if "-s" in fam else "P", {"hybrid-m1": "C2", "hybrid-m2": "C3",
                                                                         "hybrid-m4": "C4"}.get(fam[:9], "C5")))
        size = 40 if it["policy"].endswith("@0.25") else 70  # the two budgets share colours, not sizes
        y = it["mean_accuracy"]
        ms = it["ms"].get(context) if context else None
        kv = it["kv_bytes"] or (it["kv_fraction"] * full_bytes if full_bytes else it["kv_fraction"])
        axes[1].scatter(kv / 1e6 if full_bytes else kv, y, marker=marker, color=color, s=size, label=label)
        if ms is not None:
            axes[0].scatter(ms, y, marker=marker, color=color, s=size)
    # a legend, not labels by the points: policies at one KV budget share x and their labels would overlap
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    if context:
        axes[0].set_xlabel(f"compiled decode ms/step at {context} tokens, B={batch}")
        axes[0].set_ylabel("mean accuracy (common cells)")
    else:  # not timed: the accuracy per task instead, where plans that tie on the mean can part
        tasks = sorted({t for it in shown for t in it["task_acc"]})
        width = 0.8 / max(1, len(tasks))
        for k, task in enumerate(tasks):
            axes[0].bar([i + k * width for i in range(len(shown))], [it["task_acc"].get(task, 0) for it in shown],
                        width, label=task, color=f"C{k}")
        axes[0].set_xticks([i + width * (len(tasks) - 1) / 2 for i in range(len(shown))],
                           [it["policy"] for it in shown], rotation=60, ha="right", fontsize=7)
        axes[0].set_ylabel("accuracy per task (common lengths pooled)")
        axes[0].legend(fontsize=7)
        axes[0].set_title("not timed: accuracy per task", fontsize=9)
    axes[1].set_xlabel(f"KV cache MB at {items[0]['longest']} tokens, B=1" if full_bytes
                       else f"KV cache vs full at {items[0]['longest']} tokens")
    axes[1].set_ylabel("mean accuracy (common cells)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("matrix", nargs="+", help="gpu_accuracy.py matrix.jsonl files (rows of one model)")
    ap.add_argument("--timing", nargs="*", default=[], help="bench_plans.py bench_plans.jsonl files")
    ap.add_argument("--policies", default=",".join(DEFAULT))
    ap.add_argument("--png")
    ap.add_argument("--batch", type=int, default=BATCH, help="the timed batch to report (bench_plans.py --batches)")
    args = ap.parse_args()
    acc = list({(r["policy"], r["task"], r["length"]): r for r in read(args.matrix)}.values())
    models = sorted({r["model"] for r in acc})
    if len(models) != 1:
        raise SystemExit(f"the matrix rows are of {len(models)} models ({models}); give one model's rows")
    t = timing(read(args.timing), args.batch)
    items, common = summary(acc, t, args.policies.split(","))
    if not common:
        raise SystemExit("no (task, length) cell was run by every listed policy; narrow --policies")
    print(table(items, common, args.batch))
    if args.png:
        context = max((n for _, n in t["ms"]), default=None)
        png(items, args.png, f"{models[0]}: accuracy vs decode time and KV (held-out genres)", context, args.batch)


if __name__ == "__main__":
    main()
