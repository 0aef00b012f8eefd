"""`zigzag-attn show PLAN [--png plan.png]`: a plan as a table (mode, retrieval heads, score by layer), and drawn."""

from __future__ import annotations

import math

from .common import can_plot, load_plan, writable

SHOW_LENGTHS = (1024, 4096, 16384, 65536, 131072)


def add_parser(sub):
    show = sub.add_parser("show", help="print a plan (and draw it)", description="Print a plan as a table; "
                          "optionally draw a layers x heads heatmap.")
    show.add_argument("plan", metavar="PLAN", help="a plan file or a shipped plan name such as smollm2-135m@0.5")
    show.add_argument("--png", metavar="FILE.png", help="write a layers x KV heads heatmap")
    show.set_defaults(run=run, parser=show)
    return show


def run(args, argv: list[str]) -> int:
    plan = load_plan(args.plan)
    if args.png:
        writable(args.png, "--png")
        can_plot("--png")
    prov = plan.provenance
    heads = plan.model.num_kv_heads if plan.model else (len(plan.heads[0]) if plan.heads else 1)
    mask = plan.head_mask(heads)
    layer_scores = _list(prov.get("layer_scores"), plan.num_layers)
    head_scores = _grid(prov.get("head_scores"), plan.num_layers, heads)
    native = plan.model.native_sliding if plan.model else {}
    name = (plan.model.name or plan.model.model_type) if plan.model else None
    print(f"{args.plan}: {plan.describe()}" + (f"\nmodel: {name}" if name else ""))
    if prov.get("command"):
        how = ", ".join(str(x) for x in (prov.get("method"), prov.get("device")) if x)
        secs = f"{prov['seconds']} s" if isinstance(prov.get("seconds"), (int, float)) else ""
        print(f"made by: {prov['command']}" + (f"  [{', '.join(x for x in (how, secs) if x)}]" if how or secs else ""))
    score_col = layer_scores is not None or head_scores is not None
    print(f"{'layer':>5}  {'mode':<9}  {'retrieval heads':>15}" + (f"  {'score':>9}" if score_col else ""))
    for i, mode in enumerate(plan.modes):
        row = f"{i:>5}  {mode:<9}  {f'{sum(mask[i])}/{len(mask[i])}':>15}"
        if i in native:
            row += f"  {'-':>9}" * score_col + f"  (the model's own sliding window, {native[i]} tokens)"
        elif layer_scores is not None:
            row += f"  {layer_scores[i]:>9.4g}"
        elif head_scores is not None:
            row += "  " + " ".join(f"{v:.3g}" for v in head_scores[i])
        print(row)
    print("KV cache vs full attention: " + ", ".join(f"{plan.kv_fraction(n):.3f} at {n}" for n in SHOW_LENGTHS))
    if args.png:
        _heatmap(plan, mask, layer_scores, head_scores, args.png, title=f"{name or args.plan}")
        print(f"wrote {args.png}")
    return 0


def _list(v, n: int) -> list[float] | None:
    if isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v):
        return [float(x) for x in v]
    return None


def _grid(v, n: int, h: int) -> list[list[float]] | None:
    if isinstance(v, list) and len(v) == n and all(_list(r, h) is not None for r in v):
        return [[float(x) for x in r] for r in v]
    return None


def _heatmap(plan, mask, layer_scores, head_scores, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, SymLogNorm

    layers, heads = len(mask), len(mask[0])
    native = set(plan.model.native_sliding) if plan.model else set()
    grey = "#d9d9d9"
    fig, ax = plt.subplots(figsize=(min(12, 4 + 0.5 * heads), min(14, 2 + 0.3 * layers)))
    if head_scores is not None or layer_scores is not None:
        values = head_scores if head_scores is not None else [[s] * heads for s in layer_scores]
        values = [[math.nan] * heads if i in native else row for i, row in enumerate(values)]
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=grey)
        # ablation scores (loss rises) are heavy-tailed: linear near 0, logarithmic above 0.01
        norm = SymLogNorm(linthresh=0.01) if plan.provenance.get("method") == "attention" else None
        im = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest", norm=norm)
        fig.colorbar(im, ax=ax, label="retrieval score")
        cells = [(h, i) for i in range(layers) for h in range(heads) if mask[i][h] and i not in native]
        if cells:
            ax.scatter(*zip(*cells, strict=True), marker="s", s=40, facecolors="none", edgecolors="red",
                       linewidths=1.5)
        key = "red squares: retrieval, the rest stream" + ("; grey: the model's own sliding window" if native else "")
    else:
        colours, labels = ["#9ecae1", "#d62728", grey], ["streaming", "retrieval", "own sliding window"]
        kinds = 3 if native else 2
        im = ax.imshow([[2 if i in native else 1 if r else 0 for r in row] for i, row in enumerate(mask)],
                       aspect="auto", interpolation="nearest", cmap=ListedColormap(colours[:kinds]), vmin=-0.5,
                       vmax=kinds - 0.5)
        bar = fig.colorbar(im, ax=ax, ticks=list(range(kinds)))
        bar.ax.set_yticklabels(labels[:kinds])
        key = "no scores recorded in the plan"
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(0, layers, max(1, layers // 16)))
    kept = len([i for i in plan.retrieval_layers if i not in native])
    counts = (f"{kept} retrieval / {layers - len(native)} full-attention layers (+{len(native)} sliding)" if native
              else f"{kept} retrieval / {layers} layers")
    ax.set_title(f"{title}\n{counts}, sink={plan.sink} window={plan.window}\n{key}", fontsize=9, loc="left")
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png")  # at `path`, suffix or not
    plt.close(fig)
