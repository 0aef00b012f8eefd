"""Figures from `Results`, written to PNG files (matplotlib `Figure`s on the Agg canvas; pyplot is not touched).

* `heatmap`: NIAH-style grid per policy, needle depth (rows) x context length (columns), coloured by accuracy
  with the red-yellow-green map of the NIAH and DuoAttention figures.
* `budget_plot`: mean accuracy against KV-cache fraction, one colour per policy family with its Pareto front
  (the best accuracy reachable at each budget); random layer sets appear as a cloud of points.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from .policies import RANDOM
from .run import Results

NIAH_COLORS = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
FAMILY_COLORS = {"full": "#222222", "streaming": "#F0496E", "random": "#8E9AAF", "plan": "#0C8CE9", "duo": "#9B59B6"}


def heatmap(results: Results, path: str | Path, *, task: str | None = None, policies: Sequence[str] | None = None,
            columns: int = 4) -> Path:
    """One depth x length accuracy grid per policy (default: every policy but random sets) for `task`."""
    task = task or _depth_task(results)
    rows = [r for r in results.rows if r.task == task and r.depth is not None]
    if not rows:
        raise ValueError(f"no rows with needle depths for task {task!r}: a heatmap needs niah or passkey results")
    names = list(policies) if policies is not None else [p for p, f in results.policies if f != RANDOM]
    names = [p for p in names if any(r.policy == p for r in rows)]
    if not names:
        raise ValueError("no policy to draw")
    lengths = sorted({r.length for r in rows})
    depths = sorted({r.depth for r in rows})
    cols = min(columns, len(names))
    lines = -(-len(names) // cols)
    fig = Figure(figsize=(max(2.8, 0.9 * len(lengths)) * cols + 1.5, (0.35 * len(depths) + 1.4) * lines + 0.6),
                 layout="constrained")
    axes = fig.subplots(lines, cols, squeeze=False)
    image = None
    for k, (ax, name) in enumerate(zip(axes.flat, names, strict=False)):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for a in results.aggregate(("length", "depth"), task=task, policy=name):
            if a["depth"] is not None:
                grid[depths.index(a["depth"])][lengths.index(a["length"])] = a["accuracy"]
        image = ax.imshow(grid, cmap=NIAH_COLORS, vmin=0, vmax=1, aspect="auto")
        if len(lengths) * len(depths) <= 200:
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if v == v:
                        ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7)
        kv = results.aggregate((), task=task, policy=name, length=lengths[-1])[0]["kv_fraction"]
        ax.set_title(f"{name}\nmean {100 * results.accuracy(name, task=task):.1f}%, KV {kv:.2f}", fontsize=9)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=8)
        ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths], fontsize=8)
        ax.set_xlabel("context length (tokens)", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("needle depth", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, label="accuracy", shrink=0.8)
    fig.suptitle(f"{task}: accuracy by needle depth and context length", fontsize=10)
    return _save(fig, path)


def budget_plot(results: Results, path: str | Path, *, task: str | None = None, length: int | None = None) -> Path:
    """Mean accuracy (over `task`, default all tasks, and all lengths) against the KV fraction at `length`
    (default: the longest), one point per policy, a Pareto front per family."""
    where = {} if task is None else {"task": task}
    length = length or max(r.length for r in results.rows)
    kv = {a["policy"]: a["kv_fraction"] for a in results.aggregate(("policy",), length=length, **where)}
    points = {}  # family -> [(kv, accuracy, name)]
    for a in results.aggregate(("policy", "family"), **where):
        if a["policy"] in kv:
            points.setdefault(a["family"], []).append((kv[a["policy"]], a["accuracy"], a["policy"]))
    if not points:
        raise ValueError(f"no rows at length {length}" + (f" for task {task!r}" if task else ""))
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for family, pts in points.items():
        color = FAMILY_COLORS.get(family, "#555555")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        cloud = family == RANDOM
        ax.scatter(xs, ys, s=18 if cloud else 40, alpha=0.45 if cloud else 0.95, color=color,
                   label=f"{family} ({len(pts)})" if cloud else family, zorder=3)
        front = pareto(pts)
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=color, alpha=0.8, zorder=2)
        if not cloud:
            for x, y, name in pts:
                if name != family:
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"KV cache vs full attention at {length} tokens")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"accuracy vs KV budget ({task or ', '.join(results.tasks)})", fontsize=10)
    return _save(fig, path)


def pareto(points: Sequence[tuple]) -> list[tuple]:
    """Points `(kv, accuracy, ...)` not beaten by one with no more KV and more accuracy, by increasing KV."""
    front: list[tuple] = []
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return front


def _depth_task(results: Results) -> str:
    for t in results.tasks:
        if any(r.task == t and r.depth is not None for r in results.rows):
            return t
    raise ValueError("no rows with needle depths: a heatmap needs niah or passkey results")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=130, bbox_inches="tight", format=None if path.suffix else "png")  # no suffix: PNG at path
    return path
