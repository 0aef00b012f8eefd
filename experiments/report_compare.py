"""Tables and plots from `compare_methods.py` results.

    python experiments/report_compare.py docs/results/compare_methods_smollm2.json --png-dir docs/results

Produced the tables of docs/results.md and docs/results/{gates_heatmap,gates_loss,accuracy_vs_kv}.png.

Prints a markdown table (accuracy per policy and cell, share of full attention, best random set) and writes
gates_heatmap.png (layers x KV heads), gates_loss.png and accuracy_vs_kv.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def table(res: dict) -> str:
    rows = res["eval"]
    cells = [k for k in rows[0] if "@" in k]
    full = next(r for r in rows if r["policy"] == "full")
    head = "| policy | " + " | ".join(f"{c} (n={full[c]['n']})" for c in cells) + " | min share of full |"
    lines = [head, "|" + " --- |" * (len(cells) + 2)]
    by_k: dict[str, list[dict]] = {}
    for r in rows:
        k = r["policy"].split(" ")[-1] if "k=" in r["policy"] else ""
        by_k.setdefault(k, []).append(r)
    for k, group in by_k.items():
        randoms = [r for r in group if r["family"] == "random"]
        shown = [r for r in group if r["family"] != "random"]
        if randoms:
            best = max(randoms, key=lambda r: sum(r[c]["accuracy"] for c in cells))
            shown.append({**best, "policy": f"best of {len(randoms)} random {k}"})
        for r in shown:
            share = min(r[c]["accuracy"] / full[c]["accuracy"] for c in cells if full[c]["accuracy"] > 0)
            lines.append(f"| {r['policy']} | " + " | ".join(f"{r[c]['accuracy']:.2f}" for c in cells)
                         + f" | {share:.2f} |")
    return "\n".join(lines)


def plots(res: dict, out: Path) -> None:
    heads = res["steps"]["gates-head"]["heads"]
    fig, ax = plt.subplots(figsize=(3.2, 7))
    im = ax.imshow(heads, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set(xlabel="KV head", ylabel="layer", title="gate per KV head", xticks=range(len(heads[0])))
    fig.colorbar(im, ax=ax, label="alpha (1 = retrieval)")
    fig.tight_layout()
    fig.savefig(out / "gates_heatmap.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for name in ("gates-head", "gates-layer"):
        ax.plot(res["steps"][name]["loss_curve"], label=name)
    ax.set(xlabel="step", ylabel="loss (distillation + lam * mean gate)", title="gate training at 8k tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gates_loss.png", dpi=120)
    plt.close(fig)
    cells = [k for k in res["eval"][0] if k.startswith("niah@")]
    longest = cells[-1]
    fig, ax = plt.subplots(figsize=(6, 4))
    families = sorted({r["family"] for r in res["eval"]})
    for fam in families:
        pts = sorted((r[longest]["kv_fraction"], sum(r[c]["accuracy"] for c in cells) / len(cells))
                     for r in res["eval"] if r["family"] == fam)
        style = "o" if fam == "random" else "o-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=fam, alpha=0.5 if fam == "random" else 1)
    ax.set(xlabel=f"KV cache vs full attention at {longest.split('@')[1]} tokens",
           ylabel="NIAH accuracy (mean over lengths)", title="accuracy vs KV budget (SmolLM2-135M)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_kv.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--png-dir")
    args = ap.parse_args()
    res = json.loads(Path(args.results).read_text())
    print(table(res))
    if args.png_dir:
        plots(res, Path(args.png_dir))


if __name__ == "__main__":
    main()
