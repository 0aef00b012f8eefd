"""The generated blocks of hand-written pages (README.md, docs/calibration.md, docs/hybrid.md): each block sits between
`<!-- NAME:begin -->` and `<!-- NAME:end -->` and is written (or checked) by experiments/report.py from the data.

Also the acceptance rule a plan is judged by (README, "Validate a plan"), applied to the recorded matrices."""

from __future__ import annotations

import report_frontier as rf
import report_matrix as rm
import throughput_report
from report_qwen import HARD, MODELS, RETRIEVAL_TASKS, cells_label, gate_steps, matrix, mean
from report_small import cost_rows, cost_table
from report_util import Ctx, f, jsonl, length_label, minutes, table

from zigzag_attn.eval.verdict import MEAN as ACCEPT_MEAN  # noqa: E402 - the rule `eval compare` prints
from zigzag_attn.eval.verdict import WORST as ACCEPT_TASK  # noqa: E402

RATIOS = ("0.5", "0.33", "0.25")


def _acc(rows: list[dict], policy: str, task: str, length: int) -> float | None:
    return next((r["accuracy"] for r in rows if (r["policy"], r["task"], r["length"]) == (policy, task, length)),
                None)


def verdict(rows: list[dict], policy: str, length: int, tasks=RETRIEVAL_TASKS) -> tuple[bool, float, float] | None:
    """(accepted, mean share of full, worst task's share) of `policy` at `length`; None where a task is missing.

    Accept a plan when its mean accuracy over the tasks is at least ACCEPT_MEAN of full attention's and no task
    falls below ACCEPT_TASK of full attention's on that task (tasks full attention scores 0 on judge nothing)."""
    full = {t: _acc(rows, "full", t, length) for t in tasks}
    mine = {t: _acc(rows, policy, t, length) for t in tasks}
    if None in full.values() or None in mine.values():
        return None
    judged = [t for t in tasks if full[t] > 0]
    mean_share = sum(mine[t] for t in judged) / sum(full[t] for t in judged)
    worst = min(mine[t] / full[t] for t in judged)
    return mean_share >= ACCEPT_MEAN and worst >= ACCEPT_TASK, mean_share, worst


def raw(alias: str) -> list[dict]:
    return list({(r["policy"], r["task"], r["length"]): r
                 for r in jsonl(f"{MODELS[alias]['dir']}/matrix.jsonl") if rm.main_row(r)}.values())


# -- README --------------------------------------------------------------------------------------------------------
def results_block(ctx: Ctx) -> str:
    head = ["model", "KV kept", "full attention", "zigzag (layers)", "zigzag, FP8 retrieval KV",
            "hybrid, 4 mixed layers", "head plan (DuoAttention)", "best random layer set"]
    out = []
    for alias, cfg in MODELS.items():
        rows = raw(alias)
        every = jsonl(f"{cfg['dir']}/matrix.jsonl")  # with the budget rows: zigzag~bF~fp8 (report_fp8.py)
        best = matrix(cfg["dir"])
        for ratio in RATIOS:
            vals = [mean(rows, "full") if ratio == "0.5" else None, mean(rows, f"zigzag@{ratio}"),
                    mean(every, f"zigzag~b{ratio}~fp8", lengths=sorted({r["length"] for r in rows})),
                    mean(rows, f"hybrid-m4@{ratio}"), mean(rows, f"duo@{ratio}"), mean(best, f"best random@{ratio}")]
            top = max(v for v in vals[1:] if v is not None)
            out.append([cfg["short"] if ratio == "0.5" else "", f"{float(ratio):.0%}"]
                       + ["" if v is None and i == 0 else f"**{v:.3f}**" if i and v == top else f(v, 3)
                          for i, v in enumerate(vals)])
    first = raw(next(iter(MODELS)))
    lens = sorted({r["length"] for r in first})
    return "\n".join([
        f"Mean accuracy over multi-key and multi-value retrieval at {', '.join(length_label(n) for n in lens)} tokens "
        f"({cells_label(first).split(', ')[-1]} of {first[0]['prompts']} prompts each, genres calibration never read); "
        "at equal KV bytes in each row; – not measured. FP8 holds twice the retrieval layers in the same bytes. "
        "Every cell, and NIAH and pass key: [docs/results.md](docs/results.md).", "", table(head, out), "",
        speed_line(), fp8_line()])


def fp8_line() -> str:
    """FP8 retrieval KV in one sentence: its accuracy against 16-bit on the same plans, and its batch at the limit."""
    import report_fp8

    acc = report_fp8.fp8_shares()
    thr = report_fp8.fp8_batch()
    if not acc and not thr:
        return ""
    parts = []
    if acc:
        parts.append(f"with FP8 retrieval KV, {acc['model']} keeps {acc['full']:.3f}× of full attention's 16-bit "
                     f"accuracy and {acc['plan']:.3f}× of its 50% plan's ({acc['n']} prompts per task at "
                     f"{acc['length']} tokens, {acc['tasks']})")
    if thr:
        parts.append(f"on {thr['model']} at 32k, FP8 fits {thr['batch']:.2f}× the sequences of 16-bit zigzag "
                     f"at the memory limit ([docs/performance.md](docs/performance.md))")
    half = [r for r in report_fp8.choice_rows("qwen15") if r["budget"] == 0.5]
    for r in half:
        if r.get("kv_dtype") == "fp8" and r["window"] == 256:
            won = next(x for x in half if x.get("chosen"))
            parts.append(f"but FP8 on nearly every layer of the 1.5B ({r['retrieval_layers']} layers at 50% of "
                         f"KV) loses far more on validation (worst rise {r['worst_rise']:.2f}) than "
                         f"{won['retrieval_layers']} 16-bit layers ({won['worst_rise']:.2f}): a few early layers' "
                         "keys do not survive FP8, so `calibrate` keeps FP8 only where validation shows it pays")
    return "\n" + "; ".join(parts)[0].upper() + "; ".join(parts)[1:] + "."


def speed_line() -> str:
    """Compiled decode at the longest timed length relative to zigzag, and throughput at the memory limit."""
    parts = []
    for budget, rel in (("25%", "qwen15/frontier_timing/bench_plans.jsonl"),
                        ("50%", "qwen15/frontier_timing_0.5/bench_plans.jsonl")):
        t = rf.timing(jsonl(rel))
        n = max(n for _, n in t["ms"])
        r = float(budget.rstrip("%")) / 100
        ratio = {p: t["vs"][p, n][0][-1] for p in (f"hybrid-m4@{r:g}", f"duo@{r:g}", "full") if (p, n) in t["vs"]}
        parts.append(f"at {budget} of KV, {length_label(n)} tokens: hybrid {ratio[f'hybrid-m4@{r:g}']:.2f}×, head plan "
                     f"{ratio[f'duo@{r:g}']:.2f}×, full attention {ratio['full']:.2f}×")
    thr = jsonl("qwen15/throughput/throughput_32k.jsonl") + jsonl("qwen15/throughput/throughput_fullk_8k_128k.jsonl")
    fullk = {(r["n"], r["vs"]): r for r in throughput_report.ratios(thr)}
    r32 = fullk[32768, "fullk"]
    return (f"Decode step of Qwen2.5-Coder-1.5B (compiled, B=1, H200) relative to zigzag's: {'; '.join(parts)}. "
            f"At the memory limit (32k tokens, 50% of KV) zigzag fits {r32['batch']:.2f}× the sequences of full "
            f"attention without KV-head copies and decodes {r32['tok_s']:.2f}× its tokens/s "
            "([docs/performance.md](docs/performance.md)).")


def accept_block(ctx: Ctx) -> str:
    policies = ("zigzag@0.5", "duo@0.5", "zigzag@0.25", "hybrid-m4@0.25", "duo@0.25")
    cols = [(alias, n) for alias in MODELS for n in (8192, 32768)]
    rows = {alias: raw(alias) for alias in MODELS}
    out = []
    for p in policies:
        cells = []
        for alias, n in cols:
            v = verdict(rows[alias], p, n)
            cells.append("–" if v is None else f"{'**accept**' if v[0] else 'reject'} ({v[1]:.2f} / {v[2]:.2f})")
        out.append([p] + cells)
    head = ["plan"] + [f"{MODELS[a]['short'].split('-')[-1]} at {length_label(n)}" for a, n in cols]
    return "\n".join([
        f"The rule applied to the recorded matrices (mean share of full / worst task's share, over "
        f"{', '.join(RETRIEVAL_TASKS)}; {rows[next(iter(MODELS))][0]['prompts']} prompts per task):", "",
        table(head, out)])


def cost_block(ctx: Ctx) -> str:
    return cost_table()


def cost_line(ctx: Ctx) -> str:
    """The README's account of what the recommended command costs (the whole table: docs/calibration.md)."""
    rows = cost_rows()
    cpu = rows[0]
    robust = {m: (sec, "shared" in w) for m, d, w, sec, _ in rows if w.startswith("robust") and d != cpu[1]
              and m.startswith("Qwen")}
    choose = {m: sec for m, _, w, sec, _ in rows if w.startswith("zz.choose")}
    gpu = next(d for _, d, w, _, _ in rows if w.startswith("zz.choose"))
    parts = [f"{m} {minutes(robust[m][0] + 7 * choose[m])}" for m in choose]
    small, layers_small, params_small = robust["Qwen2.5-Coder-0.5B"][0], 24, 0.49
    projected = small * (32 / layers_small) * (8.0 / params_small)  # trials ~ layers x one forward ~ parameters
    return (f"On CUDA the command runs the `robust` profile, then measures six candidates and full attention on the "
            f"validation prompts. On one {gpu}, from the recorded parts "
            f"([docs/calibration.md](docs/calibration.md#what-calibration-costs)): " + ", ".join(parts)
            + " (upper bounds: other jobs shared the GPU). "
            f"An 8B model of 32 layers would take about {5 * round(projected / 300)} minutes (a projection: the "
            f"profile's trials "
            f"scale with layers × parameters, from the 0.5B's {minutes(small)}); its bf16 weights alone take 16 GB. "
            f"On CPU, `--method robust` took {minutes(cpu[3])} and {cpu[4]} peak for {cpu[0]} on {cpu[1]}.")


# -- docs/calibration.md -------------------------------------------------------------------------------------------
def methods_block(ctx: Ctx) -> str:
    fams = [("zigzag", "robust"), ("ablation", "ablation"), ("layergates", "layer gates"),
            ("gatemean", "mean head gate"), ("gatemax", "max head gate"), ("best random", "best random set"),
            ("duo", "head plan (not layer-exclusive)")]
    out = []
    for cfg in MODELS.values():
        rows = matrix(cfg["dir"])
        full = mean(rows, "full")
        for ratio in RATIOS:
            vals = [mean(rows, f"{fam}@{ratio}") for fam, _ in fams]
            if any(v is not None for v in vals):
                out.append([cfg["short"] if ratio == "0.5" else "", f"{float(ratio):.0%}",
                            f(full, 3) if ratio == "0.5" else ""] + [f(v, 3) for v in vals])
    first = raw(next(iter(MODELS)))
    lens = sorted({r["length"] for r in first})
    return "\n".join([
        f"Mean accuracy over {cells_label(first)} ({length_label(lens[0])}–{length_label(lens[-1])}, "
        f"{first[0]['prompts']} prompts each, genres calibration never read); – not run:", "",
        table(["model", "KV kept", "full"] + [name for _, name in fams], out)])


def gates_block(ctx: Ctx) -> str:
    return "\n\n".join(f"{cfg['short']}:\n\n{gate_steps(alias)}" for alias, cfg in MODELS.items())


# -- docs/hybrid.md ------------------------------------------------------------------------------------------------
def frontier_block(ctx: Ctx) -> str:
    out = []
    for alias, cfg in MODELS.items():
        rows = raw(alias)
        timing = {}
        for _, rel, _, _ in cfg["frontier"]:
            if rel:
                t = rf.timing(jsonl(rel))
                timing.update({k: v[0][-1] for k, v in t["vs"].items()})
        for ratio in ("0.5", "0.25"):
            for p in (f"zigzag@{ratio}", f"hybrid-m2@{ratio}", f"hybrid-m4@{ratio}", f"duo@{ratio}"):
                hard, every = mean(rows, p, HARD), mean(rows, p, RETRIEVAL_TASKS)
                if hard is None:
                    continue
                step = [timing.get((p, n)) for n in (8192, 32768)]
                out.append([cfg["short"], f"{float(ratio):.0%}", p, f(hard, 3), f(every, 3)]
                           + [f(s, 3) for s in step])
    first = raw(next(iter(MODELS)))
    return table(["model", "KV kept", "plan", f"mean: {cells_label(first)}",
                  f"mean: {cells_label(first, RETRIEVAL_TASKS)}", "step ÷ zigzag, 8k", "step ÷ zigzag, 32k"], out)


BLOCKS = {
    "README.md": {"results": results_block, "accept": accept_block, "cost": cost_line},
    "docs/calibration.md": {"methods": methods_block, "gates": gates_block, "cost": cost_block},
    "docs/hybrid.md": {"frontier": frontier_block},
}
