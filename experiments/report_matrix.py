"""Tables and a PNG from experiments/gpu_accuracy.py's matrix.jsonl (used by experiments/report.py for docs/results.md).

    python experiments/report_matrix.py docs/results/qwen/matrix.jsonl --png accuracy_vs_kv.png

Accuracy per (task, length) cell, each cell n prompts (half "technical", half "legal"); "best random" is the best
of the random layer sets in each cell (an optimistic baseline: chosen after seeing the answers). Share of full is
accuracy over full attention's in the same cell; the summary averages cells and gives the worst one.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

# the other layer rankings sit beside the zigzag plan they compete with; unknown names follow, sorted
ORDER = ["full", *(f"{p}@{r}" for r in ("0.5", "0.33", "0.25") for p in (
    "zigzag", "duo", "ablation", "default", "shipped", "cpu", "layergates", "gatemean", "gatemax", "best random")),
    "streaming"]
CORE = ("full", "zigzag", "duo", "best random", "streaming")


def length_label(n: int) -> str:
    """8192 -> "8k"; a length that is no whole multiple of 1024 (SmolLM2's 8000) as it is."""
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def main_row(r: dict) -> bool:
    """A row of the matrix's own policies and tasks; the budget experiments' rows (policies at a KV budget with a
    window, sink or KV dtype of their own: `~` or `+` in the name, and the multi-query task) have their own tables
    (report_fp8.py)."""
    return not re.search(r"[~+]", r["policy"]) and r["task"] != "multiquery"


def load(path: str) -> list[dict]:
    rows = [r for r in (json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()) if main_row(r)]
    best: dict[tuple, dict] = {}
    for r in rows:  # best random set per cell, at each ratio
        m = re.fullmatch(r"random-\d+@(.*)", r["policy"])
        if m:
            key = (m.group(1), r["task"], r["length"])
            if key not in best or r["accuracy"] > best[key]["accuracy"]:
                best[key] = {**r, "policy": f"best random@{m.group(1)}"}
    counts = defaultdict(int)
    for r in rows:
        m = re.fullmatch(r"random-\d+@(.*)", r["policy"])
        if m:
            counts[m.group(1), r["task"], r["length"]] += 1
    for key, r in best.items():
        r["sets"] = counts[key]
    # the hybrids share this file and belong to experiments/report_frontier.py
    return [r for r in rows if not r["policy"].startswith(("random-", "hybrid-"))] + list(best.values())


def tables(rows: list[dict]) -> str:
    """Every task's table, then the summaries and the notes on identical policies."""
    return "\n".join(task_tables(rows) + summaries(rows))


def policy_order(rows: list[dict]) -> list[str]:
    names = {r["policy"] for r in rows}
    return [p for p in ORDER if p in names] + sorted(names - set(ORDER))


def task_tables(rows: list[dict]) -> list[str]:
    """A line on prompts and random sets per cell, then one accuracy table per task (policy x length)."""
    cells = sorted({(r["task"], r["length"]) for r in rows}, key=lambda c: (c[0], c[1]))
    by = {(r["policy"], r["task"], r["length"]): r for r in rows}
    policies = policy_order(rows)
    n = sorted({r["prompts"] for r in rows})
    out = [f"Prompts per cell: {', '.join(map(str, n))}. Random sets per cell: "
           f"{', '.join(sorted({str(r['sets']) for r in rows if 'sets' in r})) or 'none'}.", ""]
    tasks = sorted({t for t, _ in cells})
    for task in tasks:
        lens = [n for t, n in cells if t == task]
        out += [f"**{task}** (accuracy; n = prompts per cell)", "",
                "| policy | " + " | ".join(f"{length_label(n)} (n={by.get(('full', task, n), {}).get('prompts', '?')})"
                                          for n in lens) + " |",
                "|---" * (len(lens) + 1) + "|"]
        for p in policies:
            vals = [by.get((p, task, n)) for n in lens]
            if any(vals):
                out.append(f"| {p} | " + " | ".join("—" if v is None else f"{v['accuracy']:.2f}" for v in vals) + " |")
        out.append("")
    return out


def summaries(rows: list[dict]) -> list[str]:
    """The summary over the cells every policy ran; a second one over the wider set of cells the matrix's own
    policies (full, zigzag, duo, random, streaming) ran, when that is wider; notes on identical policies."""
    by = {(r["policy"], r["task"], r["length"]): r for r in rows}
    policies = policy_order(rows)
    common = common_cells(rows)
    out = summary(by, policies, common, "every policy ran")
    core = [p for p in policies if p.split("@")[0] in CORE]  # the matrix: more cells than every candidate ran
    wide = common_cells([r for r in rows if r["policy"] in core])
    if len(wide) > len(common):
        out += [""] + summary(by, core, wide, "the matrix's policies (full, zigzag, duo, random, streaming) ran")
    return out + [""] + identical(by, common, policies)


def summary(by: dict[tuple, dict], policies: list[str], cells: list[tuple[str, int]], which: str) -> list[str]:
    """Mean accuracy, mean and worst share of full over `cells` for each policy. by: (policy, task, length) -> row."""
    out = [f"**Summary** over the {len(cells)} cells {which} ({cell_names(cells)}); share of full = "
           "accuracy / full's, per cell", "",
           "| policy | cells | mean accuracy | mean share of full | worst share of full (cell) | KV at 32k |",
           "|---|---|---|---|---|---|"]
    for p in policies:
        got = [(c, by[(p, *c)]) for c in cells if ("full", *c) in by and (p, *c) in by]
        if not got:
            continue
        shares = [(r["accuracy"] / by[("full", *c)]["accuracy"] if by[("full", *c)]["accuracy"] else float("nan"), c)
                  for c, r in got]
        valid = [s for s in shares if s[0] == s[0]]
        worst = min(valid) if valid else (float("nan"), ("", 0))
        kv = next((r["kv_fraction"] for c, r in got if c[1] == 32768), got[-1][1]["kv_fraction"])
        out.append(f"| {p} | {len(got)} | {sum(r['accuracy'] for _, r in got) / len(got):.3f} | "
                   f"{sum(s for s, _ in valid) / max(1, len(valid)):.3f} | {worst[0]:.2f} ({worst[1][0]} "
                   f"{length_label(worst[1][1])}) | {kv:.3f} |")
    return out


def identical(by: dict[tuple, dict], common: list[tuple[str, int]], policies: list[str]) -> list[str]:
    """A line for each pair of policies with the same number of right answers in every common cell: a baseline
    that quietly equals what it is compared with (say, a head plan at the all-streaming floor) must be said.
    by: (policy, task, length) -> row."""
    out = []
    for i, a in enumerate(policies):
        for b in policies[i + 1:]:
            if common and all((a, *c) in by and (b, *c) in by and by[(a, *c)]["correct"] == by[(b, *c)]["correct"]
                              for c in common):
                out.append(f"Note: {a} and {b} have the same number of right answers in all {len(common)} "
                           "common cells.")
    return out


def common_cells(rows: list[dict]) -> list[tuple[str, int]]:
    """The (task, length) cells that every policy in `rows` ran: summaries compare policies on the same prompts."""
    per: dict[str, set] = defaultdict(set)
    for r in rows:
        per[r["policy"]].add((r["task"], r["length"]))
    return sorted(set.intersection(*per.values())) if per else []


def cell_names(cells: list[tuple[str, int]]) -> str:
    tasks = sorted({t for t, _ in cells})
    lens = sorted({n for _, n in cells})
    return f"{', '.join(tasks)} x {'/'.join(length_label(n) for n in lens)}"


def png(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    common = set(common_cells(rows))
    full = {(r["task"], r["length"]): r["accuracy"] for r in rows if r["policy"] == "full"
            and (r["task"], r["length"]) in common}
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    styles = {"zigzag": ("o", "C0"), "duo": ("s", "C1"), "ablation": ("^", "C2"), "default": ("D", "C4"),
              "layergates": ("P", "C5"), "gatemean": ("h", "C8"), "gatemax": ("p", "C6"),
              "best random": ("x", "C3"),
              "streaming": ("v", "C7"), "full": ("*", "k")}
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)  # family -> (KV at the longest length, acc)
    for p in sorted({r["policy"] for r in rows}):
        mine = [r for r in rows if r["policy"] == p and (r["task"], r["length"]) in full]
        if mine:
            longest = [r["kv_fraction"] for r in mine if r["length"] == max(x["length"] for x in mine)]
            points[p.split("@")[0]].append((sum(longest) / len(longest), sum(r["accuracy"] for r in mine) / len(mine)))
    # one line per family across its KV budgets, in a legend: labels at shared x never overlap
    for k, family in enumerate(sorted(points, key=lambda f: list(styles).index(f) if f in styles else 99)):
        marker, color = styles.get(family, ("d", f"C{(k + 2) % 10}"))  # an unknown family still gets a line
        xy = sorted(points[family])
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker=marker, color=color, ms=7, lw=1.2, label=family)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("KV cache vs full attention at the longest length")
    ax.set_ylabel(f"mean accuracy, {cell_names(sorted(common))}", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("matrix")
    ap.add_argument("--png")
    args = ap.parse_args()
    rows = load(args.matrix)
    print(tables(rows))
    if args.png:
        png(rows, args.png, f"{rows[0]['model']}: accuracy vs KV (held-out genres)")


if __name__ == "__main__":
    main()
