"""docs/results.md's sections on the Qwen2.5-Coder models: the accuracy matrix on held-out genres (every task and
length), the frontier of hybrid plans with their decode time, and how the plans were calibrated."""

from __future__ import annotations

import json
from collections import defaultdict

import report_frontier as rf
import report_matrix as rm
from report_util import DATA, ROOT, Ctx, f, jsonl, length_label, load_json, table

RETRIEVAL_TASKS = ("multikey", "multivalue", "niah", "passkey")
HARD = ("multikey", "multivalue")  # the tasks that separate plans; NIAH and pass key are near 1.0 for most
GENRES = {"technical": "GNU manuals", "legal": "licence texts"}


def shipped(name: str) -> dict:
    """A shipped plan file (zigzag_attn/plans/NAME.json) as JSON."""
    return json.loads((ROOT / "zigzag_attn" / "plans" / f"{name}.json").read_text())


def retrieval_layers(plan: dict) -> list[int]:
    return [i for i, m in enumerate(plan["modes"]) if m == "retrieval"]


def matrix(model_dir: str) -> list[dict]:
    """The matrix rows of docs/results/MODEL_DIR/matrix.jsonl, random sets folded into "best random@r"."""
    return rm.load(str(DATA / model_dir / "matrix.jsonl"))


def mean(rows: list[dict], policy: str, tasks=HARD, lengths=None) -> float | None:
    """Mean accuracy of `policy` over the cells of `tasks` (x `lengths`, default all); None if any is missing."""
    by = {(r["task"], r["length"]): r["accuracy"] for r in rows if r["policy"] == policy}
    lens = lengths or sorted({r["length"] for r in rows})
    cells = [(t, n) for t in tasks for n in lens]
    if not cells or any(c not in by for c in cells):
        return None
    return sum(by[c] for c in cells) / len(cells)


def cells_label(rows: list[dict], tasks=HARD) -> str:
    """'multi-key and multi-value, 8 cells' for the tasks and the lengths the rows have."""
    names = {"multikey": "multi-key", "multivalue": "multi-value", "niah": "NIAH", "passkey": "pass key"}
    lens = {r["length"] for r in rows}
    words = [names.get(t, t) for t in tasks]
    return f"{', '.join(words[:-1])} and {words[-1]}, {len(tasks) * len(lens)} cells"


def se(rows: list[dict], policy: str, tasks=HARD) -> float | None:
    """Standard error of `mean`, counting each prompt of a cell as one binomial trial."""
    cells = [r for r in rows if r["policy"] == policy and r["task"] in tasks]
    if not cells:
        return None
    return sum(r["accuracy"] * (1 - r["accuracy"]) / r["prompts"] for r in cells) ** 0.5 / len(cells)


def setup(rows: list[dict], alias: str) -> str:
    prov = shipped(f"{alias}@0.5")["provenance"]
    genres = [f"{g}: {GENRES.get(g, g)}" for g in sorted({g for r in rows for g in r.get("per_genre", {})},
                                                         reverse=True)]
    lens = sorted({r["length"] for r in rows})
    prompts = sorted({r["prompts"] for r in rows})
    raw = [r for r in jsonl(f"{MODELS[alias]['dir']}/matrix.jsonl") if rm.main_row(r)]
    sets = sorted({r["policy"].split("@")[0] for r in raw if r["policy"].startswith("random-")})
    return (f"{prov['device']}, {prov['dtype']}. Every policy is scored on the same prompts: "
            f"{'/'.join(map(str, prompts))} per cell, half from each of two genres calibration never read "
            f"({'; '.join(genres)}), at {', '.join(length_label(n) for n in lens)} tokens. An answer counts when "
            f"greedy decoding writes it. {len(sets)} random layer sets were drawn per KV budget; \"best random\" is "
            "the best of them in each cell, chosen after seeing the answers (an optimistic baseline). Raw rows: "
            f"[results/{MODELS[alias]['dir']}/matrix.jsonl](results/{MODELS[alias]['dir']}/matrix.jsonl).")


def calibration(alias: str) -> str:
    d = MODELS[alias]["dir"]
    robust = load_json(f"{d}/robust_scores.json")["meta"]
    heads = load_json(f"{d}/head_scores.json")["meta"]
    val = robust["validation"]
    sizes = "/".join(f"{s:.0%}" for s in val["sizes"])
    rise = {k: "/".join(f"{x:.3f}" for x in v) for k, v in val["worst_loss_rise"].items()}
    rows = [("robust (zigzag@r)", f"ablation, then greedy elimination ({robust['candidates']} candidates a round) on "
             f"{robust['samples']} prompts of up to {robust['tokens']} tokens, {len(robust['groups'])} tasks",
             f"{robust['seconds']:.0f}"),
            ("head gates (duo@r, hybrids)", f"{heads['steps']} steps on {heads['samples']} prompts of "
             f"{heads['tokens']} tokens", f"{heads['seconds']:.0f}")]
    if (DATA / d / "layer_gates.json").exists():
        lg = load_json(f"{d}/layer_gates.json")["meta"]
        rows.append(("layer gates (layergates@r)", f"{lg['steps']} steps on {lg['samples']} prompts of "
                     f"{lg['tokens']} tokens", f"{lg['seconds']:.0f}"))
    plans = [(f"`{alias}@{r}`", ", ".join(map(str, retrieval_layers(shipped(f"{alias}@{r}")))))
             for r in ("0.5", "0.33", "0.25")]
    return "\n".join([
        table(["scores", "how", "seconds"], rows), "",
        f"The robust profile's validation (worst task's loss rise on fresh prompts at {sizes} of the layers): "
        + "; ".join(f"{k} ranking {v}" for k, v in rise.items()) + f". It kept the {robust['ranking']} ranking.", "",
        table(["shipped plan", "retrieval layers"], plans)])


def gate_steps(alias: str) -> str:
    """duo@r with head gates trained 100 steps beside the 1,000-step ones (the rows of the matrix)."""
    d = MODELS[alias]["dir"]
    short = jsonl(f"{d}/matrix_duo_100steps.jsonl")
    rows = matrix(d)
    out = []
    for ratio in sorted({r["policy"].split("@")[1] for r in short}, key=float, reverse=True):
        a = mean(short, f"duo@{ratio}")
        b = mean(rows, f"duo@{ratio}")
        if a is not None and b is not None:
            out.append((f"{float(ratio):.0%}", f(a, 3), f(b, 3), f(mean(rows, f"zigzag@{ratio}"), 3)))
    steps = load_json(f"{d}/head_scores.json")["meta"]["steps"]
    few = load_json(f"{d}/head_scores_100steps.json")["meta"]["steps"]
    return table(["KV kept", f"head plan, gates {few:,} steps", f"head plan, {steps:,} steps", "zigzag"], out)


def findings(rows: list[dict], hybrids: dict[str, float | None]) -> list[str]:
    """One bullet per KV budget: full, zigzag, the head plan, the best other layer-exclusive plan, the 4-layer hybrid
    and the best random set on the hard tasks."""
    full = mean(rows, "full")
    out = []
    for ratio in ("0.5", "0.33", "0.25"):
        got = {p: mean(rows, p) for p in {r["policy"] for r in rows} if p.endswith(f"@{ratio}")}
        got = {p: v for p, v in got.items() if v is not None}
        if f"zigzag@{ratio}" not in got:
            continue
        layer = {p: v for p, v in got.items() if not p.startswith(("duo", "best random"))}
        best = max(layer, key=layer.get)
        line = (f"- **{float(ratio):.0%} of KV** ({cells_label(rows)}; full {full:.3f}): zigzag "
                f"{got[f'zigzag@{ratio}']:.3f} ({got[f'zigzag@{ratio}'] / full:.2f} of full)")
        if f"duo@{ratio}" in got:
            gap = (se(rows, f"zigzag@{ratio}") ** 2 + se(rows, f"duo@{ratio}") ** 2) ** 0.5
            line += (f", head plan {got[f'duo@{ratio}']:.3f} ({got[f'duo@{ratio}'] / full:.2f}; difference "
                     f"{got[f'duo@{ratio}'] - got[f'zigzag@{ratio}']:+.3f} ± {gap:.3f})")
        if best != f"zigzag@{ratio}":
            line += f"; best layer plan {best} {layer[best]:.3f}"
        if hybrids.get(f"hybrid-m4@{ratio}") is not None:
            line += f"; 4-layer hybrid {hybrids[f'hybrid-m4@{ratio}']:.3f}"
        if f"best random@{ratio}" in got:
            line += f"; best random set {got[f'best random@{ratio}']:.3f}"
        out.append(line + ".")
    return out


def frontier(ctx: Ctx, alias: str) -> list[str]:
    d, short = MODELS[alias]["dir"], MODELS[alias]["short"]
    rows = [r for r in jsonl(f"{d}/matrix.jsonl") if rm.main_row(r)]
    acc = list({(r["policy"], r["task"], r["length"]): r for r in rows}.values())
    out = []
    for title, timing, policies, png in MODELS[alias]["frontier"]:
        t = rf.timing(jsonl(timing) if timing else [])
        items, common = rf.summary(acc, t, policies)
        out += [f"**{title}**", "", rf.table(items, common, with_targets=False), ""]
        context = max((n for _, n in t["ms"]), default=None)
        out += [ctx.figure(f"{d}/{png}", f"frontier, {short}: {title}", lambda p, i=items, c=context, tt=title:
                           rf.png(i, p, f"{short}: {tt}", c)), ""]
    return out


def section(ctx: Ctx, alias: str) -> str:
    cfg = MODELS[alias]
    rows = matrix(cfg["dir"])
    title = rows[0]["model"]
    name = cfg["short"]
    out = [f"## {name}", "", setup(rows, alias), "", "### Summary", "", *findings(rows, hybrid_means(alias)), "",
           *rm.summaries(rows), "",
           ctx.figure(f"{cfg['dir']}/{cfg['png']}", f"accuracy vs KV, {name}",
                      lambda p: rm.png(rows, p, f"{title}: accuracy vs KV (held-out genres)")), "",
           "### Hybrid plans at zigzag's KV (and compiled decode time where measured)", "",
           "\"÷ duo\": accuracy on a task, answers pooled over the common lengths, over the head plan's at the same "
           "KV. \"÷ zigzag\": the compiled decode step (B=1) over zigzag's, timed in the same process in shuffled "
           "rounds (where several stages timed a point: the last, with the range in brackets).", "",
           *frontier(ctx, alias),
           "### Every task and length", "", *rm.task_tables(rows),
           "### Calibration", "", calibration(alias), "",
           "Head gates need training: the head plan from gates trained fewer steps, beside the matrix's (same "
           f"prompts; mean over {cells_label(rows)}):", "", gate_steps(alias), ""]
    return "\n".join(out)


MODELS = {
    "qwen2.5-coder-1.5b": {
        "dir": "qwen15", "short": "Qwen2.5-Coder-1.5B", "png": "accuracy_vs_kv_q15.png",
        "frontier": [
            ("25% of KV, every retrieval task", "qwen15/frontier_timing/bench_plans.jsonl",
             ["full", "zigzag@0.25", "hybrid-m2@0.25", "hybrid-m4@0.25", "duo@0.25"], "frontier_q15_25.png"),
            ("50% of KV", "qwen15/frontier_timing_0.5/bench_plans.jsonl",
             ["full", "zigzag@0.5", "hybrid-m2@0.5", "hybrid-m4@0.5", "duo@0.5"], "frontier_q15_50.png"),
            ("Every hybrid measured", None, rf.DEFAULT, "frontier_q15.png")]},
    "qwen2.5-coder-0.5b": {
        "dir": "qwen", "short": "Qwen2.5-Coder-0.5B", "png": "accuracy_vs_kv_q05.png",
        "frontier": [("Every hybrid measured", None, rf.DEFAULT, "frontier_q05.png")]},
}


def summary_means(alias: str) -> dict[str, float | None]:
    """policy -> mean over multi-key and multi-value at every length, for the README's table."""
    rows = matrix(MODELS[alias]["dir"])
    return {p: mean(rows, p) for p in rm.policy_order(rows)}


def hybrid_means(alias: str) -> dict[str, float | None]:
    """hybrid policy -> mean over multi-key and multi-value at every length, from the raw rows."""
    raw = [r for r in jsonl(f"{MODELS[alias]['dir']}/matrix.jsonl") if rm.main_row(r)]
    out = defaultdict(list)
    for r in raw:
        if r["policy"].startswith("hybrid-") and r["task"] in HARD:
            out[r["policy"]].append(r)
    return {p: mean(rs, p) for p, rs in out.items()}
